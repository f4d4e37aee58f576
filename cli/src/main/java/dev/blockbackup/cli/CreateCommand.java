package dev.blockbackup.cli;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.ImageFormat;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.ParameterException;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/** {@code blockbackup create}: qemu-img create for raw and qcow2 (v3, 16-bit refcounts). */
@Command(
    name = "create",
    description = {
      "Create a new disk image FILE of SIZE bytes, as qemu-img create does.",
      "SIZE is read as qemu-img reads it: bytes (65536, or 0x10000 in hex), or a number with a K, M, G, T, P or E"
          + " suffix (powers of 1024, either case; 1.5G); with -b it defaults to the backing file's size. A qcow2"
          + " image maps at most 2 PiB with the default 64 KiB clusters (larger clusters map more).",
      "Examples:",
      "  blockbackup create -f qcow2 disk.qcow2 10G",
      "  blockbackup create -f qcow2 -o cluster_size=1M big.qcow2 100G",
      "  blockbackup create -f qcow2 -b base.raw -F raw overlay.qcow2",
      "  blockbackup create -f qcow2 -o data_file=disk.raw,data_file_raw=on meta.qcow2 10G",
      "With data_file the image holds metadata only and its data lives in the named file (relative to FILE's"
          + " directory), which is created if missing and otherwise kept as it is (qemu-img would empty it):"
          + " with data_file_raw=on it stays a valid raw image of the disk."
    },
    mixinStandardHelpOptions = true)
final class CreateCommand implements Callable<Integer> {

  @Spec CommandSpec spec;

  @Option(names = "-f", paramLabel = "FMT", description = "Image format: raw (default) or qcow2.")
  String format = "raw";

  @Option(names = "-o", paramLabel = "OPTIONS",
      description = "Format options key=value[,...]; qcow2: cluster_size, backing_file, backing_fmt, size,"
          + " data_file, data_file_raw. '-o help' lists them.")
  List<String> options;

  @Option(names = "-b", paramLabel = "BACKING",
      description = "Backing file (qcow2 only); a relative name is relative to FILE's directory.")
  String backingFile;

  @Option(names = "-F", paramLabel = "BACKING_FMT", description = "Format of the backing file: raw or qcow2.")
  String backingFormat;

  // Optional for picocli only so that "-o help" needs no file, as in qemu-img; checked in call().
  @Parameters(index = "0", arity = "0..1", paramLabel = "FILE", description = "The image to create (overwritten if it exists).")
  Path file;

  @Parameters(index = "1", arity = "0..1", paramLabel = "SIZE", description = "Virtual size, e.g. 64M, 10G, 1048576.")
  String size;

  @Override
  public Integer call() throws BlockIOException {
    ImageFormat fmt = Images.format(format);
    List<String> known = fmt == ImageFormat.QCOW2 ? FormatOptions.QCOW2_CREATE : List.of();
    if (FormatOptions.isHelp(options)) {
      spec.commandLine().getOut().println(FormatOptions.help(fmt, known));
      return 0;
    }
    if (file == null) {
      throw new ParameterException(spec.commandLine(), "Missing required parameter: 'FILE'");
    }
    // Every argument is checked before the file is touched, so that a mistake leaves nothing behind.
    FormatOptions opts = FormatOptions.parse(fmt, options, known);
    String backing = backingFile != null ? backingFile : opts.get("backing_file");
    String backingFmt = backingFormat != null ? backingFormat : opts.get("backing_fmt");
    String sizeText = size != null ? size : opts.get("size");

    if (fmt == ImageFormat.RAW) {
      if (backing != null || backingFmt != null) {
        throw new UserError("backing files are not supported by format raw (use -f qcow2)");
      }
      long bytes = requireSize(sizeText);
      Images.checkCreatable(file);
      Images.creating(file, () -> RawImage.create(file, bytes)).close();
      spec.commandLine().getOut().println("Formatting '" + file + "', fmt=raw size=" + bytes);
      return 0;
    }

    if (backing == null && backingFmt != null) {
      throw new UserError("-F " + backingFmt + " given without a backing file (-b)");
    }
    if (backing != null && backingFmt == null) {
      // qemu-img 7.2 refuses this too: probing a backing file's format is unsafe.
      throw new UserError("backing file '" + backing + "' given without its format (add -F raw or -F qcow2)");
    }
    int clusterSize = opts.clusterSize(Qcow2CreateOptions.DEFAULT_CLUSTER_SIZE);
    String dataFile = opts.get("data_file");
    boolean dataFileRaw = opts.flag("data_file_raw");
    Long given = sizeText == null && backing != null ? null : requireSize(sizeText);
    long bytes;
    if (backing != null) {
      int nameBytes = backing.getBytes(StandardCharsets.UTF_8).length;
      if (nameBytes > Qcow2CreateOptions.MAX_BACKING_NAME) {
        throw new UserError("backing file name of " + nameBytes + " bytes is longer than qcow2's limit of "
            + Qcow2CreateOptions.MAX_BACKING_NAME + " bytes");
      }
      Path where = Path.of(Images.backingPath(file, backing));
      ImageFormat bfmt = Images.driver(where, backingFmt);
      if (where.toAbsolutePath().normalize().equals(file.toAbsolutePath().normalize())) {
        // Creating it would destroy the very data the new image is to sit on.
        throw new UserError("'" + file + "' cannot be its own backing file");
      }
      // As qemu-img create, open the backing file even when SIZE is given: a name that does not
      // open is refused now, with the host's reason, not when the overlay is first used.
      long backingSize = backingSize(where, bfmt);
      bytes = given != null ? given : backingSize;
    } else {
      bytes = given;
    }
    long max = Qcow2CreateOptions.maxSize(clusterSize);
    if (bytes > max) { // max is whole sectors, so the rounded-up size fits exactly when this one does
      String limit = " bytes is too large for qcow2 with cluster_size " + clusterSize + " (at most " + max
          + "; try a larger cluster_size)";
      throw new UserError(sizeText != null ? "invalid image size '" + sizeText + "': " + bytes + limit
          : "the backing file's size of " + bytes + limit);
    }
    Qcow2CreateOptions o;
    try {
      // QEMU counts the size in sectors: 1000 bytes make a 1024-byte disk, and it says size=1000.
      o = Qcow2CreateOptions.of(Sizes.roundUpToSector(bytes)).withClusterSize(clusterSize);
      if (backing != null) {
        o = o.withBacking(backing, backingFmt);
      }
      if (dataFile != null || dataFileRaw) {
        o = o.withDataFile(dataFile, dataFileRaw);
      }
    } catch (IllegalArgumentException e) {
      throw new UserError(e.getMessage(), e);
    }
    Images.checkCreatable(file);
    if (dataFile != null) {
      checkDataFile(file, dataFile);
    }
    Qcow2CreateOptions checked = o;
    Images.creating(file, () -> Qcow2Image.create(file, checked)).close();
    StringBuilder line = new StringBuilder("Formatting '").append(file).append("', fmt=qcow2 cluster_size=")
        .append(clusterSize).append(" extended_l2=off compression_type=zlib size=").append(bytes);
    if (backing != null) {
      line.append(" backing_file=").append(backing).append(" backing_fmt=").append(o.backingFormat());
    }
    if (dataFile != null) {
      line.append(" data_file=").append(dataFile);
      if (dataFileRaw) {
        line.append(" data_file_raw=on");
      }
    }
    line.append(" lazy_refcounts=off refcount_bits=16");
    spec.commandLine().getOut().println(line);
    return 0;
  }

  /**
   * The data file must not be the image (its data writes would land on the metadata) nor a
   * directory, and its directory must exist; checked before anything is created.
   */
  private static void checkDataFile(Path file, String dataFile) {
    Path where = Path.of(Images.backingPath(file, dataFile));
    if (where.toAbsolutePath().normalize().equals(file.toAbsolutePath().normalize())) {
      throw new UserError("'" + file + "' cannot be its own data file");
    }
    if (Files.isDirectory(where)) {
      throw new UserError("Could not create '" + dataFile + "': Is a directory");
    }
    Path dir = where.toAbsolutePath().getParent();
    if (dir != null && !Files.isDirectory(dir)) {
      throw new UserError("Could not create '" + dataFile + "': No such file or directory");
    }
  }

  private static long requireSize(String text) {
    if (text == null) {
      throw new UserError("image size missing (give SIZE, e.g. 64M, or -b BACKING to take its size)");
    }
    return Sizes.parse("image size", text);
  }

  /** The backing file's virtual size: what qemu-img create takes when SIZE is left out. */
  private static long backingSize(Path where, ImageFormat format) throws BlockIOException {
    try (BlockDevice b = Images.open(where, format, true)) {
      return Sizes.roundUpToSector(b.size());
    }
  }
}
