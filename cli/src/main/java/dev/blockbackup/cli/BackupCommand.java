package dev.blockbackup.cli;

import dev.blockbackup.engine.BackupJob;
import dev.blockbackup.engine.BackupOptions;
import dev.blockbackup.engine.BitmapSyncMode;
import dev.blockbackup.engine.BlockDirtyBitmap;
import dev.blockbackup.engine.BlockNode;
import dev.blockbackup.engine.JobException;
import dev.blockbackup.engine.JobManager;
import dev.blockbackup.engine.MirrorSyncMode;
import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.ImageFormat;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.io.Console;
import java.io.PrintWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;
import java.util.concurrent.atomic.AtomicBoolean;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/**
 * {@code blockbackup backup}: the backup job run offline, as drive-backup with mode=absolute-paths
 * would run it on an image no guest is using: the command creates TARGET, puts SRC in a node named
 * {@value #NODE_NAME}, runs the job to the end and prints one summary line.
 */
@Command(
    name = "backup",
    description = {
      "Back up SRC into a new image TARGET with the backup job (QEMU's drive-backup, run offline).",
      "--sync full copies the whole disk, backing chain flattened. --sync top copies only what SRC's top"
          + " layer allocates, and TARGET (qcow2) gets SRC's backing file, as drive-backup does; for an image"
          + " without a backing file top is the same as full. --sync incremental (or bitmap) copies only what"
          + " SRC's persistent bitmap --bitmap NAME marks (blockbackup bitmap --add made it, at the previous"
          + " backup); with -b PREV the new TARGET reads through to the previous backup.",
      "Progress is a redrawn bar on a terminal and a plain line per 10%% otherwise (stdout); the last line"
          + " is a summary. TARGET must not exist unless --existing is given.",
      "Examples:",
      "  blockbackup backup --sync full disk.qcow2 backup.qcow2",
      "  blockbackup backup --sync full --compress --speed 100M disk.raw backup.qcow2",
      "  blockbackup backup --sync top overlay.qcow2 incr.qcow2",
      "  blockbackup backup --sync incremental --bitmap b0 -b full.qcow2 disk.qcow2 inc1.qcow2"
    },
    mixinStandardHelpOptions = true)
final class BackupCommand implements Callable<Integer> {

  /** The source's node name, which is also the default job id (QEMU defaults job-id to the device name). */
  static final String NODE_NAME = "drive0";

  @Spec CommandSpec spec;

  @Option(names = "-f", paramLabel = "FMT", description = "Format of SRC (raw or qcow2); probed when left out.")
  String sourceFormat;

  @Option(names = {"-U", "--force-share"}, description = "Open SRC (and its backing chain) even while another"
      + " process such as QEMU writes it, as qemu-img -U: without the locks that would conflict.")
  boolean forceShare;

  @Option(names = "--sync", required = true, paramLabel = "MODE", description = "full, top, incremental or bitmap (QAPI MirrorSyncMode).")
  String sync;

  @Option(names = "--bitmap", paramLabel = "NAME", description = "SRC's persistent dirty bitmap: with --sync"
      + " incremental or bitmap the job copies only the clusters it marks, and (bitmap-mode on-success, the"
      + " default of incremental) clears it on success to record from this backup on; SRC is then opened"
      + " read-write so the bitmap is stored back.")
  String bitmap;

  @Option(names = "--bitmap-mode", paramLabel = "MODE", description = "on-success, never or always (QAPI"
      + " BitmapSyncMode): what the bitmap holds after the job.")
  String bitmapMode;

  @Option(names = "-b", paramLabel = "PREV", description = "A new qcow2 TARGET's backing file: the previous backup,"
      + " so that an incremental TARGET reads as the whole disk.")
  String previous;

  @Option(names = "--target-format", paramLabel = "FMT", description = "Format of TARGET: qcow2 (default) or raw;"
      + " with --existing, probed when left out.")
  String targetFormat;

  @Option(names = "-o", paramLabel = "OPTIONS", description = "Options of a new TARGET: cluster_size=SIZE (qcow2)."
      + " The job copies in clusters of max(64 KiB, TARGET's cluster size).")
  List<String> options;

  @Option(names = "--compress", description = "Write TARGET's clusters compressed (a new qcow2 TARGET only).")
  boolean compress;

  @Option(names = "--speed", paramLabel = "BYTES", description = "Rate limit in bytes per second with K, M, G"
      + " suffixes (e.g. 100M); 0, the default, for none.")
  String speed;

  @Option(names = "--job-id", paramLabel = "ID", description = "The job's id, shown in progress and summary"
      + " (default: the node name, " + NODE_NAME + ").")
  String jobId;

  @Option(names = "--existing", description = "Back up into TARGET, which exists and has SRC's size, instead of"
      + " creating it (QEMU's mode=existing).")
  boolean existing;

  @Option(names = "-t", paramLabel = "CACHE", description = "Cache mode of TARGET: writeback (the default: the job"
      + " flushes TARGET at the end, so a finished backup is on disk) or unsafe (no syncs at all).")
  String cache = CacheMode.WRITEBACK.qemuName();

  @Option(names = "--progress", paramLabel = "HOW", description = "auto (the default: a redrawn bar on a terminal,"
      + " plain lines otherwise), bar, plain (a line per 10%%) or none.")
  String progressHow = "auto";

  @Option(names = {"-q", "--quiet"}, description = "Print no progress, only the summary (--progress none).")
  boolean quiet;

  @Parameters(index = "0", paramLabel = "SRC", description = "The image to back up; only read.")
  Path source;

  @Parameters(index = "1", paramLabel = "TARGET", description = "The backup image to create.")
  Path target;

  @Override
  public Integer call() throws BlockIOException, InterruptedException {
    // Every argument is checked before TARGET is created, so that a mistake leaves nothing behind
    // and the corrected command can simply be run again.
    MirrorSyncMode mode = syncMode(sync);
    BackupProgress.Mode shown = quiet ? BackupProgress.Mode.QUIET : progressMode(progressHow);
    checkJobId(jobId);
    ImageFormat srcFmt = Images.formatOf(source, sourceFormat);
    long bytesPerSecond = speed == null ? 0 : Sizes.parse("speed", speed);
    CacheMode cacheMode;
    try {
      cacheMode = CacheMode.parse(cache);
    } catch (BlockIOException e) {
      throw new UserError("invalid -t: " + e.getMessage(), e);
    }
    ImageFormat dstFmt = targetFormat(srcFmt);
    if (compress && dstFmt != ImageFormat.QCOW2) {
      throw new UserError("--compress is not supported by target format " + dstFmt.qemuName()
          + " (use --target-format qcow2)");
    }
    if (compress && existing) {
      // qcow2 writes a compressed cluster only where the image holds none yet (as QEMU does).
      throw new UserError("--compress needs a new target: it cannot rewrite the clusters of an --existing one");
    }
    FormatOptions opts = FormatOptions.parse(dstFmt, options,
        dstFmt == ImageFormat.QCOW2 ? FormatOptions.QCOW2_CONVERT : List.of());
    if (existing && options != null) {
      throw new UserError("-o applies to a new target only, not with --existing");
    }
    int clusterSize = opts.clusterSize(Qcow2CreateOptions.DEFAULT_CLUSTER_SIZE);
    BitmapSyncMode bitmapSync = bitmapMode(mode);
    Backing previousBackup = previousBackup(dstFmt);
    if (!existing) {
      Images.checkCreatable(target);
    }
    // A bitmap's state after the job is stored back into SRC: it is opened read-write then.
    boolean readOnly = bitmap == null;
    if (!readOnly && srcFmt != ImageFormat.QCOW2) {
      throw new UserError("--bitmap needs a qcow2 SRC, which stores persistent bitmaps; '" + source + "' is "
          + srcFmt.qemuName());
    }
    if (!readOnly && forceShare) {
      throw new UserError("--bitmap changes SRC's bitmap, which -U (opening SRC without its locks) cannot allow");
    }

    try (BlockDevice src = Images.open(source, srcFmt, readOnly, CacheMode.WRITEBACK, forceShare)) {
      BlockNode node = BlockNode.of(NODE_NAME, src);
      if (bitmap != null) {
        checkBitmap(node);
      }
      Backing backing = src instanceof Qcow2Image q ? Backing.of(q) : null;
      if (mode == MirrorSyncMode.top && backing == null) {
        mode = MirrorSyncMode.full; // drive-backup: sync=top of an image without backing is a full copy
      }
      if (mode == MirrorSyncMode.top && !existing && dstFmt != ImageFormat.QCOW2) {
        throw new UserError("--sync top needs a qcow2 target to carry the backing file '" + backing.path()
            + "' (use --target-format qcow2, or --sync full)");
      }
      if (!existing) {
        checkSize(src.size(), dstFmt, opts); // an --existing target is judged by the job, before any work too
      }
      BackupOptions jobOptions;
      try {
        jobOptions = BackupOptions.of(mode).withSpeed(bytesPerSecond).withCompress(compress).withJobId(jobId);
        if (bitmap != null) {
          jobOptions = jobOptions.withBitmap(bitmap);
        }
        if (bitmapSync != null) {
          jobOptions = jobOptions.withBitmapMode(bitmapSync);
        }
      } catch (JobException e) {
        throw new UserError(e.getMessage(), e);
      }
      Qcow2CreateOptions create = existing || dstFmt != ImageFormat.QCOW2 ? null
          : qcow2Options(src.size(), clusterSize, previousBackup != null ? previousBackup
              : mode == MirrorSyncMode.top ? backing : null);
      long size = src.size();
      try (BlockDevice dst = existing ? Images.open(target, dstFmt, false, cacheMode)
          : Images.creating(target, () -> create != null
              ? Qcow2Image.create(target, create, cacheMode) : RawImage.create(target, size, cacheMode))) {
        run(node, dst, dstFmt, jobOptions, shown);
      }
    }
    return 0;
  }

  /**
   * Refuses a job id QEMU would refuse (id_wellformed): a letter first, then letters, digits, '-',
   * '.' and '_'. Checked here, before TARGET exists, rather than by the job once TARGET is made.
   */
  static void checkJobId(String id) {
    if (id == null) {
      return;
    }
    boolean ok = !id.isEmpty() && isAsciiLetter(id.charAt(0));
    for (int i = 1; ok && i < id.length(); i++) {
      char c = id.charAt(i);
      ok = isAsciiLetter(c) || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
    }
    if (!ok) {
      throw new UserError("Invalid job ID '" + id + "' (a letter first, then letters, digits, '-', '.' or '_')");
    }
  }

  private static boolean isAsciiLetter(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  }

  private static MirrorSyncMode syncMode(String name) {
    return switch (name) {
      case "full" -> MirrorSyncMode.full;
      case "top" -> MirrorSyncMode.top;
      case "none" -> throw new UserError("--sync none copies only what a guest overwrites and runs until"
          + " cancelled; offline there is no guest (use --sync full or top)");
      case "incremental" -> MirrorSyncMode.incremental;
      case "bitmap" -> MirrorSyncMode.bitmap;
      default -> throw new UserError("invalid --sync '" + name + "' (use full, top, incremental or bitmap)");
    };
  }

  /**
   * --bitmap-mode, checked with --bitmap and --sync before anything is opened, in the order and
   * with the messages of QEMU's checks.
   */
  private BitmapSyncMode bitmapMode(MirrorSyncMode mode) {
    boolean needsBitmap = mode == MirrorSyncMode.incremental || mode == MirrorSyncMode.bitmap;
    if (needsBitmap && bitmap == null) {
      throw new UserError("must provide a valid bitmap name for '" + mode + "' sync mode (--bitmap NAME)");
    }
    if (bitmapMode == null) {
      return null;
    }
    if (bitmap == null) {
      throw new UserError("Cannot specify bitmap sync mode without a bitmap");
    }
    try {
      return BitmapSyncMode.parse(bitmapMode);
    } catch (IllegalArgumentException e) {
      throw new UserError("invalid --bitmap-mode: " + e.getMessage(), e);
    }
  }

  /** -b PREV: for a new qcow2 TARGET only; the path as given (relative to TARGET, as qemu-img reads it). */
  private Backing previousBackup(ImageFormat dstFmt) {
    if (previous == null) {
      return null;
    }
    if (existing || dstFmt != ImageFormat.QCOW2) {
      throw new UserError("-b names the backing file of a new qcow2 TARGET (not with --existing or a raw target)");
    }
    Path prev = target.toAbsolutePath().resolveSibling(previous);
    if (!Files.exists(prev)) {
      throw new UserError("-b '" + previous + "': no such file (the previous backup)");
    }
    return new Backing(previous, Images.formatOf(prev, null).qemuName());
  }

  /** The bitmap --bitmap names: present on SRC and usable, or a message before TARGET is made. */
  private void checkBitmap(BlockNode node) {
    BlockDirtyBitmap b = node.findBitmap(bitmap)
        .orElseThrow(() -> new UserError("Bitmap '" + bitmap + "' could not be found in '" + source + "'"));
    if (b.isInconsistent()) {
      throw new UserError("Bitmap '" + bitmap + "' is inconsistent and cannot be used: it was not stored"
          + " cleanly (a crash while it was open); remove it (blockbackup bitmap --remove) and take a full backup");
    }
  }

  /** TARGET's format; checks that TARGET exists exactly when --existing says so. */
  private ImageFormat targetFormat(ImageFormat srcFmt) {
    boolean exists = Files.exists(target);
    Images.checkTargetOutsideChain(source, srcFmt, target);
    if (existing) {
      if (!exists) {
        throw new UserError("target '" + target + "' does not exist (leave out --existing to create it)");
      }
      return Images.formatOf(target, targetFormat);
    }
    if (exists) {
      throw new UserError("target '" + target + "' exists (remove it, or give --existing to back up into it)");
    }
    return Images.format(targetFormat == null ? "qcow2" : targetFormat);
  }

  /**
   * Refuses, before TARGET is created, a source larger than the job can copy with the clusters a
   * new TARGET gives it (max(64 KiB, TARGET's cluster size)).
   */
  private static void checkSize(long size, ImageFormat dstFmt, FormatOptions opts) {
    int targetCluster = dstFmt == ImageFormat.QCOW2 ? opts.clusterSize(Qcow2CreateOptions.DEFAULT_CLUSTER_SIZE) : 0;
    int jobCluster = Math.max(BackupJob.MIN_CLUSTER_SIZE, targetCluster);
    long max = BackupJob.maxSize(jobCluster);
    if (size > max) {
      throw new UserError("source size " + size + " bytes (" + Sizes.human(size) + ") is more than a backup supports"
          + " with " + Sizes.human(jobCluster) + " clusters: at most " + max + " bytes (" + Sizes.human(max)
          + "; a larger -o cluster_size raises it)");
    }
  }

  /** SRC's backing file: its path made absolute (mode=absolute-paths) and its format. */
  record Backing(String path, String format) {
    static Backing of(Qcow2Image image) {
      BlockDevice b = image.backing();
      if (b instanceof Qcow2Image q) {
        return new Backing(q.path().toAbsolutePath().normalize().toString(), "qcow2");
      }
      if (b instanceof RawImage r) {
        return new Backing(r.path().toAbsolutePath().normalize().toString(), "raw");
      }
      return null;
    }
  }

  /** A new qcow2 TARGET's creation options, checked before the file is made. */
  private Qcow2CreateOptions qcow2Options(long size, int clusterSize, Backing backing) {
    if (size % 512 != 0) {
      throw new UserError("source size " + size + " is not a multiple of 512 bytes, which a qcow2 target needs"
          + " (use --target-format raw)");
    }
    Images.checkQcow2Size(target, size, clusterSize);
    try {
      Qcow2CreateOptions o = new Qcow2CreateOptions(size, clusterSize, null, null);
      return backing == null ? o : o.withBacking(backing.path(), backing.format());
    } catch (IllegalArgumentException e) {
      throw new UserError("cannot create '" + target + "': " + e.getMessage(), e);
    }
  }

  /** Runs the job to its end, showing progress; a failed job becomes one error line. */
  private void run(BlockNode node, BlockDevice dst, ImageFormat dstFmt, BackupOptions jobOptions,
      BackupProgress.Mode shown) throws InterruptedException {
    BackupJob job;
    try {
      job = BackupJob.create(new JobManager(), node, dst, jobOptions);
    } catch (JobException e) {
      if (!existing) {
        // refused before any copy: the new TARGET goes again, so the command can be rerun as it is
        try {
          dst.close();
          Files.deleteIfExists(target);
        } catch (java.io.IOException cleanup) {
          e.addSuppressed(cleanup);
        }
      }
      throw new UserError("cannot start the backup: " + e.getMessage(), e);
    }
    PrintWriter out = spec.commandLine().getOut();
    BackupProgress progress = new BackupProgress(shown, job.id());
    if (shown == BackupProgress.Mode.PLAIN) {
      out.println(startLine(job, dstFmt));
    }
    long start = System.nanoTime();
    // Ctrl-C (SIGINT/SIGTERM) cancels the job as job-cancel would, and closes the target so its
    // metadata is consistent (qemu-img check clean), before the JVM exits.
    AtomicBoolean interrupted = new AtomicBoolean();
    Thread onInterrupt = new Thread(() -> {
      interrupted.set(true);
      try {
        job.cancel();
      } catch (JobException alreadyEnding) {
        // concluded or concluding on its own
      }
      try {
        job.awaitConcluded(Duration.ofSeconds(30));
        dst.close();
      } catch (InterruptedException | BlockIOException e) {
        // exiting anyway; the target may then need qemu-img check -r
      }
      System.err.println("blockbackup: backup '" + job.id() + "' cancelled");
    }, "backup-interrupt");
    Runtime.getRuntime().addShutdownHook(onInterrupt);
    try {
      job.start();
      // The job thread does the work; this one only looks at its progress, 5 times a second.
      while (!job.awaitConcluded(Duration.ofMillis(200))) {
        out.print(progress.update(job.currentProgress(), job.totalProgress(), System.nanoTime() - start));
        out.flush();
      }
      while (interrupted.get()) {
        Thread.sleep(1000); // the hook closes the target; the JVM halts when it is done
      }
    } finally {
      try {
        Runtime.getRuntime().removeShutdownHook(onInterrupt);
      } catch (IllegalStateException shuttingDown) {
        // the hook is running
      }
    }
    long elapsed = System.nanoTime() - start;
    out.print(progress.finish(job.currentProgress(), job.totalProgress(), elapsed));
    out.flush();
    if (job.error() != null) {
      throw new UserError("backup '" + job.id() + "' failed: " + job.error());
    }
    out.println(BackupProgress.summary(job.id(), job.totalProgress(), elapsed, target.toString(), dstFmt.qemuName()));
  }

  private String startLine(BackupJob job, ImageFormat dstFmt) {
    BackupOptions o = job.options();
    return String.format(Locale.ROOT, "backup '%s': %s -> %s (%s), sync=%s, %s, cluster %s%s, speed %s",
        job.id(), source, target, dstFmt.qemuName(), o.sync(), Sizes.human(job.node().size()),
        Sizes.human(job.clusterSize()), o.compress() ? ", compressed" : "",
        o.speed() == 0 ? "unlimited" : Sizes.human(o.speed()) + "/s");
  }

  /** A redrawn bar when a person watches a terminal, plain lines for logs and pipes. */
  private static BackupProgress.Mode progressMode(String how) {
    switch (how) {
      case "bar" -> {
        return BackupProgress.Mode.TERMINAL;
      }
      case "plain" -> {
        return BackupProgress.Mode.PLAIN;
      }
      case "none" -> {
        return BackupProgress.Mode.QUIET;
      }
      case "auto" -> { }
      default -> throw new UserError("invalid --progress '" + how + "' (use auto, bar, plain or none)");
    }
    Console c = System.console();
    if (c == null) {
      return BackupProgress.Mode.PLAIN;
    }
    try {
      // JDK 22+ returns a console even without a terminal; isTerminal() tells them apart.
      Object terminal = Console.class.getMethod("isTerminal").invoke(c);
      return Boolean.TRUE.equals(terminal) ? BackupProgress.Mode.TERMINAL : BackupProgress.Mode.PLAIN;
    } catch (ReflectiveOperationException e) {
      return BackupProgress.Mode.TERMINAL; // JDK 17 to 21: a console is a terminal
    }
  }
}
