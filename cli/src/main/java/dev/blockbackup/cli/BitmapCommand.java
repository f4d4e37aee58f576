package dev.blockbackup.cli;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.formats.ImageFormat;
import dev.blockbackup.formats.qcow2.Qcow2Bitmap;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/**
 * {@code blockbackup bitmap}: qemu-img bitmap on a qcow2 image's persistent dirty bitmaps, the
 * operations applied in the order given, plus {@code --list}.
 */
@Command(
    name = "bitmap",
    description = {
      "Change the persistent dirty bitmap BITMAP of the qcow2 image FILE, as qemu-img bitmap does: the operations"
          + " are applied in the order given. --add makes a new, empty bitmap that records writes (with --disable"
          + " after it, one that does not); --merge SOURCE sets every bit of the bitmap SOURCE (of FILE, or of"
          + " SOURCE_FILE with -b) in BITMAP. --list prints the bitmaps instead.",
      "Examples:",
      "  blockbackup bitmap --add disk.qcow2 b0",
      "  blockbackup bitmap --add -g 1M --disable disk.qcow2 frozen",
      "  blockbackup bitmap --merge b0 -b old.qcow2 disk.qcow2 b1",
      "  blockbackup bitmap --list disk.qcow2"
    },
    mixinStandardHelpOptions = true)
final class BitmapCommand implements Callable<Integer> {

  private enum Kind { ADD, REMOVE, CLEAR, ENABLE, DISABLE, MERGE }

  private record Op(Kind kind, String source) {}

  private final List<Op> ops = new ArrayList<>();

  @Spec CommandSpec spec;

  @Option(names = "--add", description = "Create BITMAP, enabled and empty.")
  void add(boolean on) {
    ops.add(new Op(Kind.ADD, null));
  }

  @Option(names = "--remove", description = "Remove BITMAP.")
  void remove(boolean on) {
    ops.add(new Op(Kind.REMOVE, null));
  }

  @Option(names = "--clear", description = "Clear every bit of BITMAP.")
  void clear(boolean on) {
    ops.add(new Op(Kind.CLEAR, null));
  }

  @Option(names = "--enable", description = "Make BITMAP record writes.")
  void enable(boolean on) {
    ops.add(new Op(Kind.ENABLE, null));
  }

  @Option(names = "--disable", description = "Make BITMAP stop recording writes.")
  void disable(boolean on) {
    ops.add(new Op(Kind.DISABLE, null));
  }

  @Option(names = "--merge", paramLabel = "SOURCE", description = "Set in BITMAP every bit set in SOURCE.")
  void merge(String source) {
    ops.add(new Op(Kind.MERGE, source));
  }

  @Option(names = "--list", description = "List FILE's bitmaps (name, granularity, flags, dirty bytes).")
  boolean list;

  @Option(names = "-g", paramLabel = "GRANULARITY", description = "Bytes per bit of a new bitmap (with --add;"
      + " default 64 KiB, or the cluster size between 4 KiB and 64 KiB).")
  String granularity;

  @Option(names = "-b", paramLabel = "SOURCE_FILE", description = "The image holding --merge's SOURCE.")
  Path sourceFile;

  @Option(names = "-F", paramLabel = "SOURCE_FMT", description = "Format of SOURCE_FILE (qcow2).")
  String sourceFormat;

  @Option(names = "-f", paramLabel = "FMT", description = "Format of FILE (qcow2); probed when left out.")
  String format;

  @Parameters(index = "0", paramLabel = "FILE")
  Path file;

  @Parameters(index = "1", paramLabel = "BITMAP", arity = "0..1")
  String bitmap;

  @Override
  public Integer call() throws BlockIOException {
    PrintWriter out = spec.commandLine().getOut();
    if (list) {
      if (!ops.isEmpty() || bitmap != null) {
        throw new UserError("--list takes FILE only, and no other operation");
      }
      list(out);
      return 0;
    }
    if (ops.isEmpty()) {
      throw new UserError("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge");
    }
    boolean adds = ops.stream().anyMatch(o -> o.kind() == Kind.ADD);
    boolean merges = ops.stream().anyMatch(o -> o.kind() == Kind.MERGE);
    if (granularity != null && !adds) {
      throw new UserError("granularity only supported with --add");
    }
    if (sourceFormat != null && sourceFile == null) {
      throw new UserError("-F only supported with -b");
    }
    if (sourceFile != null && !merges) {
      throw new UserError("Merge bitmap source file only supported with --merge");
    }
    if (bitmap == null) {
      throw new UserError("Expecting filename and bitmap name");
    }
    int bytesPerBit = granularity == null ? 0 : granularity(granularity);
    if (bytesPerBit < 0) {
      throw new UserError(failed(Kind.ADD, "Granularity must be power of 2 and at least 512"));
    }
    try (Qcow2Image img = openQcow2(file, format, false);
        Qcow2Image src = sourceFile == null ? null : openQcow2(sourceFile, sourceFormat, true)) {
      for (Op op : ops) {
        try {
          apply(img, src == null ? img : src, op, bytesPerBit);
        } catch (BlockIOException | IllegalArgumentException e) {
          throw new UserError(failed(op.kind(), e.getMessage()), e);
        }
      }
    }
    return 0;
  }

  private void apply(Qcow2Image img, Qcow2Image src, Op op, int bytesPerBit) throws BlockIOException {
    switch (op.kind()) {
      case ADD -> {
        if (img.findBitmap(bitmap) != null) {
          throw new BlockIOException(BlockError.EINVAL, "Bitmap already exists: " + bitmap);
        }
        img.addBitmap(bitmap, bytesPerBit != 0 ? bytesPerBit : defaultGranularity(img), true);
      }
      case REMOVE -> img.removeBitmap(existing(img, bitmap).name());
      case CLEAR -> consistent(img, bitmap).bitmap().clear();
      case ENABLE -> img.setBitmapEnabled(consistent(img, bitmap).name(), true);
      case DISABLE -> img.setBitmapEnabled(consistent(img, bitmap).name(), false);
      case MERGE -> {
        Qcow2Bitmap from = src.findBitmap(op.source());
        if (from == null) {
          throw new BlockIOException(BlockError.EINVAL,
              "Dirty bitmap '" + op.source() + "' not found");
        }
        if (from.inconsistent()) {
          throw inconsistent(from.name());
        }
        mergeInto(consistent(img, bitmap).bitmap(), from.bitmap());
      }
      default -> throw new AssertionError(op);
    }
  }

  /** Every dirty area of {@code from} set in {@code to}: granularities may differ, sizes may not. */
  private static void mergeInto(DirtyBitmap to, DirtyBitmap from) throws BlockIOException {
    if (to.size() != from.size()) {
      throw new BlockIOException(BlockError.EINVAL, "Bitmaps are of different sizes"
          + " (destination size is " + to.size() + ", source size is " + from.size() + ") and can't be merged");
    }
    to.mergeDirtyAreas(from);
  }

  private static Qcow2Bitmap existing(Qcow2Image img, String name) throws BlockIOException {
    Qcow2Bitmap b = img.findBitmap(name);
    if (b == null) {
      throw new BlockIOException(BlockError.EINVAL, "Dirty bitmap '" + name + "' not found");
    }
    return b;
  }

  private static Qcow2Bitmap consistent(Qcow2Image img, String name) throws BlockIOException {
    Qcow2Bitmap b = existing(img, name);
    if (b.inconsistent()) {
      throw inconsistent(name);
    }
    return b;
  }

  private static BlockIOException inconsistent(String name) {
    return new BlockIOException(BlockError.EINVAL, "Bitmap '" + name
        + "' is inconsistent and cannot be used; try block-dirty-bitmap-remove to delete this bitmap from disk");
  }

  /** QEMU's default: the cluster size within [4 KiB, 64 KiB]. */
  private static int defaultGranularity(Qcow2Image img) {
    return Math.max(4096, Math.min(65536, img.alignment()));
  }

  /** The -g value, or -1 when QEMU would refuse it. */
  private static int granularity(String text) {
    long g = Sizes.parse("granularity", text);
    return g < 512 || g > (1L << 31) || Long.bitCount(g) != 1 ? -1 : (int) g;
  }

  /** qemu-img bitmap's message for a failed operation. */
  private String failed(Kind kind, String why) {
    return "Operation " + kind.name().toLowerCase(java.util.Locale.ROOT) + " on bitmap " + bitmap + " failed: " + why;
  }

  private void list(PrintWriter out) throws BlockIOException {
    try (Qcow2Image img = openQcow2(file, format, true)) {
      for (Qcow2Bitmap b : img.bitmaps()) {
        String flags = b.inconsistent() ? "in-use" : b.enabled() ? "auto" : "-";
        String dirty = b.inconsistent() ? "-" : Long.toString(b.bitmap().count());
        out.printf("%s granularity=%d flags=%s dirty=%s%n", b.name(), b.granularity(), flags, dirty);
      }
    }
  }

  private static Qcow2Image openQcow2(Path path, String fmt, boolean readOnly) {
    ImageFormat f = Images.formatOf(path, fmt);
    if (f != ImageFormat.QCOW2) {
      throw new UserError("'" + path + "' is " + f.qemuName() + ": only qcow2 images hold persistent bitmaps");
    }
    BlockDevice d = Images.open(path, f, readOnly, CacheMode.WRITEBACK);
    return (Qcow2Image) d;
  }
}
