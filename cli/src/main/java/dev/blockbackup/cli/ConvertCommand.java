package dev.blockbackup.cli;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.ImageFormat;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.io.PrintWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.ParameterException;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/** {@code blockbackup convert}: qemu-img convert between raw and qcow2, sparse and in parallel. */
@Command(
    name = "convert",
    description = {
      "Copy SRC into a new image DST, as qemu-img convert does: only data is copied; ranges the source"
          + " knows to be zero, and 4 KiB blocks (whole clusters for qcow2) that read as zeros, are left"
          + " unallocated in DST. A backing chain of SRC is flattened into DST.",
      "Examples:",
      "  blockbackup convert -f raw -O qcow2 disk.raw disk.qcow2",
      "  blockbackup convert -O qcow2 -c -o cluster_size=128k disk.qcow2 small.qcow2",
      "  blockbackup convert -O raw disk.qcow2 disk.raw"
    },
    mixinStandardHelpOptions = true)
final class ConvertCommand implements Callable<Integer> {

  @Spec CommandSpec spec;

  @Option(names = "-f", paramLabel = "FMT", description = "Format of SRC (raw or qcow2); probed when left out.")
  String sourceFormat;

  @Option(names = "-O", paramLabel = "FMT", description = "Format of DST: raw (default) or qcow2.")
  String targetFormat = "raw";

  @Option(names = {"-U", "--force-share"}, description = "Open SRC (and its backing chain) even while another"
      + " process such as QEMU writes it, as qemu-img -U: without the locks that would conflict.")
  boolean forceShare;

  @Option(names = "-c", description = "Compress every cluster of DST (qcow2 only; deflate).")
  boolean compress;

  @Option(names = "-o", paramLabel = "OPTIONS", description = "Options of DST: cluster_size=SIZE (qcow2).")
  List<String> options;

  @Option(names = "-m", paramLabel = "N", description = "Parallel copy workers (default ${DEFAULT-VALUE}, as qemu-img's coroutines).")
  int workers = Converter.DEFAULT_WORKERS;

  @Option(names = "-t", paramLabel = "CACHE", description = "Cache mode of DST: unsafe (the default, as qemu-img"
      + " convert: no syncs, so the copy is durable only once the host flushes it) or writeback (crash-safe"
      + " ordering and a flush at the end).")
  String cache = CacheMode.UNSAFE.qemuName();

  @Option(names = "-p", description = "Show progress, as qemu-img does: (NN.NN/100%%).")
  boolean progress;

  @Option(names = "--timing", description = "Print how long the copy took, excluding JVM start-up, on stderr.")
  boolean timing;

  // Optional for picocli only so that "-o help" needs no files, as in qemu-img; checked in call().
  @Parameters(index = "0", arity = "0..1", paramLabel = "SRC")
  Path source;

  @Parameters(index = "1", arity = "0..1", paramLabel = "DST")
  Path target;

  @Override
  public Integer call() throws BlockIOException, InterruptedException {
    long start = System.nanoTime();
    ImageFormat dstFmt = Images.format(targetFormat);
    List<String> known = dstFmt == ImageFormat.QCOW2 ? FormatOptions.QCOW2_CONVERT : List.of();
    if (FormatOptions.isHelp(options)) {
      spec.commandLine().getOut().println(FormatOptions.help(dstFmt, known));
      return 0;
    }
    if (source == null || target == null) {
      throw new ParameterException(spec.commandLine(),
          "Missing required parameter" + (source == null ? "s: 'SRC', 'DST'" : ": 'DST'"));
    }
    ImageFormat srcFmt = Images.formatOf(source, sourceFormat);
    FormatOptions opts = FormatOptions.parse(dstFmt, options, known);
    if (compress && dstFmt != ImageFormat.QCOW2) {
      throw new UserError("compression (-c) is not supported by format " + dstFmt.qemuName() + " (use -O qcow2)");
    }
    if (workers < 1 || workers > 16) {
      throw new UserError("invalid -m " + workers + ": workers must be from 1 to 16, as qemu-img's coroutines");
    }
    Images.checkTargetOutsideChain(source, srcFmt, target);
    int clusterSize = opts.clusterSize(Qcow2CreateOptions.DEFAULT_CLUSTER_SIZE);
    CacheMode cacheMode;
    try {
      cacheMode = CacheMode.parse(cache);
    } catch (BlockIOException e) {
      throw new UserError("invalid -t: " + e.getMessage(), e);
    }
    Images.checkCreatable(target);

    Converter.Result r;
    try (BlockDevice src = Images.open(source, srcFmt, true, CacheMode.WRITEBACK, forceShare)) {
      long size = Sizes.roundUpToSector(src.size());
      if (dstFmt == ImageFormat.QCOW2) {
        Images.checkQcow2Size(target, size, clusterSize);
      }
      try (BlockDevice dst = Images.creating(target, () -> createTarget(dstFmt, size, clusterSize, cacheMode))) {
        // One L2 table of 8-byte entries maps clusterSize / 8 clusters.
        long l2Span = dstFmt == ImageFormat.QCOW2 ? (long) clusterSize * (clusterSize / 8) : 0;
        Converter converter = new Converter(src, dst, workers, compress, l2Span);
        r = progress ? runShowingProgress(converter) : converter.run();
      }
    }
    if (timing) {
      double s = (System.nanoTime() - start) / 1e9;
      spec.commandLine().getErr().printf(Locale.ROOT,
          "convert: %.3f s (copy %.3f s) for %s: %s read, %s written, %s zero, %.0f MiB/s%n",
          s, r.nanos() / 1e9, Sizes.human(r.length()), Sizes.human(r.read()), Sizes.human(r.written()),
          Sizes.human(r.zero()), r.length() / 1048576.0 / s);
    }
    return 0;
  }

  /** Runs the copy while a daemon thread rewrites qemu-img's progress line on stdout. */
  private Converter.Result runShowingProgress(Converter converter) throws BlockIOException, InterruptedException {
    PrintWriter out = spec.commandLine().getOut();
    Thread reporter = new Thread(() -> {
      try {
        while (!Thread.currentThread().isInterrupted()) {
          printProgress(out, converter.progress(), "\r");
          Thread.sleep(200);
        }
      } catch (InterruptedException e) {
        // the copy is over
      }
    }, "convert-progress");
    reporter.setDaemon(true);
    reporter.start();
    try {
      return converter.run();
    } finally {
      reporter.interrupt();
      reporter.join();
      printProgress(out, converter.progress(), "\n");
    }
  }

  private static void printProgress(PrintWriter out, double share, String end) {
    synchronized (out) {
      out.printf(Locale.ROOT, "    (%.2f/100%%)%s", share * 100, end);
      out.flush();
    }
  }

  private BlockDevice createTarget(ImageFormat fmt, long size, int clusterSize, CacheMode cacheMode)
      throws BlockIOException {
    if (fmt == ImageFormat.RAW) {
      return RawImage.create(target, size, cacheMode);
    }
    try {
      return Qcow2Image.create(target, new Qcow2CreateOptions(size, clusterSize, null, null), cacheMode);
    } catch (IllegalArgumentException e) {
      throw new UserError("cannot create '" + target + "': " + e.getMessage(), e);
    }
  }
}
