package dev.blockbackup.engine;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.DirtyBitmap;
import java.util.Objects;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * QEMU's backup job (blockdev-backup): a point-in-time copy of a node that keeps being written.
 *
 * <p>{@link #create} inserts a {@link CopyBeforeWrite} filter above the node while the node is
 * drained: that instant is the point in time. From then on a guest write to a cluster not yet
 * copied first copies the old content to the target. {@link #start()} runs the background copier
 * for sync=full and sync=top (which first drops the clusters the source's top layer does not
 * allocate); sync=none copies only what guests overwrite and runs until cancelled. The filter stays
 * until the job is finalized or aborted.
 *
 * <p>With a bitmap (sync=bitmap or incremental, or full and top with bitmap-mode) the bitmap is
 * frozen at the same instant: it gets a successor that records the writes from then on, and for
 * sync=bitmap the copy is only its dirty clusters. At the end bitmap-mode decides whether the
 * successor replaces it or is merged back ({@link BitmapSyncMode}).
 *
 * <p>Background errors follow on-source-error (reads) and on-target-error (writes); errors of
 * copy-before-write follow on-cbw-error instead. Rate limits apply to the background copier only.
 */
public final class BackupJob extends Job {

  /** The smallest job cluster: QEMU's BACKUP_CLUSTER_SIZE_DEFAULT. */
  public static final int MIN_CLUSTER_SIZE = 64 * 1024;

  private static final AtomicInteger FILTER_NAMES = new AtomicInteger();

  private final BlockNode node;
  private final BlockDevice source;
  private final BlockDevice target;
  /** Whether {@link #clean} closes the target (a drive-backup's image). */
  private volatile boolean ownsTarget;
  private final BackupOptions options;
  private final String filterNodeName;
  private final BlockCopy bcs;
  private final CopyBeforeWrite cbw;

  /** The body: the background copier with its workers and rate limit. */
  private final BackupLoop loop;
  private volatile boolean filterRemoved;
  /** The sync bitmap and its bitmap-mode (frozen while the job runs). */
  private final BackupBitmap bitmap;

  private BackupJob(String id, BlockNode node, BlockDevice target, BackupOptions options, int clusterSize,
      BackupBitmap bitmap) {
    super(id, "backup", options.autoFinalize(), options.autoDismiss());
    this.node = node;
    this.source = node.device();
    this.target = target;
    this.options = options;
    this.filterNodeName = options.filterNodeName() != null
        ? options.filterNodeName() : "#block" + FILTER_NAMES.incrementAndGet();
    this.bcs = new BlockCopy(source, target, clusterSize, options.maxChunk(), options.compress(),
        options.discardSource(), new BlockCopy.Progress() {
          @Override
          public void copied(long bytes) {
            progressUpdate(bytes);
          }

          @Override
          public void remaining(long bytes) {
            progressSetRemaining(bytes);
          }
        });
    this.cbw = new CopyBeforeWrite(filterNodeName, source, bcs, options.onCbwError(),
        TimeUnit.SECONDS.toNanos(options.cbwTimeoutSeconds()), this::wake);
    this.loop = new BackupLoop(this, id, source, target, options, bcs, cbw);
    this.bitmap = bitmap;
  }

  /**
   * blockdev-backup: checks the arguments, registers the job with {@code manager} and inserts the
   * copy-before-write filter above {@code node}, which fixes the point in time. The job is CREATED;
   * {@link #start()} starts the background copy.
   *
   * @throws JobException for arguments QEMU refuses, with QEMU's message
   */
  public static BackupJob create(JobManager manager, BlockNode node, BlockDevice target, BackupOptions options) {
    Objects.requireNonNull(manager, "manager");
    Objects.requireNonNull(node, "node");
    Objects.requireNonNull(target, "target");
    Objects.requireNonNull(options, "options");
    BackupBitmap bitmap = BackupBitmap.check(node, options);
    if (target == node || target == node.base() || target == node.device()) {
      throw new JobException("Source and target cannot be the same");
    }
    if (target.isReadOnly()) {
      throw new JobException("Target is read-only: a backup writes to it");
    }
    if (node.size() != target.size()) {
      throw new JobException("Source and target must have the same size (source " + node.size()
          + " bytes, target " + target.size() + " bytes)");
    }
    if (options.compress() && !target.supportsCompressedWrites()) {
      throw new JobException("Compression is not supported for this drive");
    }
    int clusterSize = (int) Math.max(Math.max(MIN_CLUSTER_SIZE, options.minClusterSize()), target.alignment());
    if (node.size() > maxSize(clusterSize)) {
      throw new JobException("Source size " + node.size() + " is more than a backup job supports at cluster size "
          + clusterSize + ": at most " + maxSize(clusterSize) + " bytes");
    }
    if (options.maxChunk() != 0 && options.maxChunk() < clusterSize) {
      throw new JobException("Required max-chunk (" + options.maxChunk()
          + ") is less than backup cluster size (" + clusterSize + ")");
    }
    String id = options.jobId() != null ? options.jobId() : node.name();
    node.block("block device is in use by block job: backup");
    BackupJob job;
    boolean frozen = false;
    try (BlockNode.Drained d = node.drain()) {
      job = new BackupJob(id, node, target, options, clusterSize, bitmap);
      frozen = bitmap.freeze(node, job.bcs);
      manager.register(job);
      // block_job_create applies the speed argument as block-job-set-speed does, so query-jobs
      // and the BLOCK_JOB_* events report it from the start
      job.setSpeed(options.speed());
      node.insertFilter(job.source, job.cbw);
    } catch (RuntimeException e) {
      if (frozen) {
        bitmap.unfreeze(node);
      }
      node.unblock("block device is in use by block job: backup");
      throw e;
    }
    return job;
  }

  /**
   * The largest source a job with clusters of {@code clusterSize} bytes can copy: its copy bitmap
   * has one bit per cluster, and at most {@link DirtyBitmap#MAX_GRANULES} of them (16 PiB at the
   * default 64 KiB).
   */
  public static long maxSize(int clusterSize) {
    if (clusterSize >= Long.MAX_VALUE / DirtyBitmap.MAX_GRANULES) {
      return Long.MAX_VALUE;
    }
    return DirtyBitmap.MAX_GRANULES * clusterSize;
  }

  // ---------------------------------------------------------------- queries

  public BackupOptions options() {
    return options;
  }

  /** The job cluster size: max(64 KiB, min-cluster-size, target cluster size). */
  public int clusterSize() {
    return bcs.clusterSize();
  }

  /**
   * The copy-before-write filter this job inserted (until it is finalized). Engine only: guests
   * write through {@link #node()}, whose drain the filter's insertion and removal rely on.
   */
  CopyBeforeWrite filter() {
    return cbw;
  }

  /**
   * Bytes copy-before-write has copied to the target for guest writes so far; the rest of
   * {@link #currentProgress()} is the background copier's (sync=none has only these).
   */
  public long copyBeforeWriteBytes() {
    return cbw.copiedBytes();
  }

  /** filter-node-name, or the name generated for the filter. */
  public String filterNodeName() {
    return filterNodeName;
  }

  /**
   * A read-only view of the source at the job's point in time (snapshot-access over the filter).
   * It lives as long as the filter: once the job has removed it, the view fails with ESHUTDOWN.
   */
  public SnapshotView snapshotView() {
    return new SnapshotView(cbw);
  }

  public BlockNode node() {
    return node;
  }

  public BlockDevice target() {
    return target;
  }

  // ---------------------------------------------------------------- the body

  @Override
  protected void onSpeedChanged(long bytesPerSecond) {
    loop.setSpeed(bytesPerSecond);
  }

  @Override
  protected void run() throws Exception {
    try {
      loop.run();
    } catch (BlockIOException e) {
      // QEMU's job_update_rc: a job that fails with -errno reports strerror, whatever failed.
      throw new BlockIOException(e.error(), e.error().strerror(), e);
    }
  }

  // ---------------------------------------------------------------- the end

  /** backup_commit: the job succeeded. */
  @Override
  protected void commit() {
    bitmap.cleanup(node, bcs, true);
  }

  /** backup_abort: the job failed or was cancelled. */
  @Override
  protected void abort() {
    bitmap.cleanup(node, bcs, false);
  }

  /** The sync bitmap, or null: frozen (busy, with a successor) until the job ends. */
  public BlockDirtyBitmap syncBitmap() {
    return bitmap.bitmap();
  }

  /** bitmap-mode in effect (on-success for sync=incremental), or null without a bitmap. */
  public BitmapSyncMode bitmapMode() {
    return bitmap.mode();
  }

  /** backup_clean: the filter leaves the graph, the node is free for other jobs. */
  @Override
  protected void clean() {
    if (!filterRemoved) {
      filterRemoved = true;
      try (BlockNode.Drained d = node.drain()) {
        node.removeFilter(cbw, source);
        // while still drained: no guest write reaches the source uncopied before the snapshot
        // reads in flight have ended
        cbw.shutDown();
      }
      node.unblock("block device is in use by block job: backup");
    }
    loop.shutDown();
    if (ownsTarget) {
      try {
        target.close();
      } catch (BlockIOException e) {
        System.getLogger(BackupJob.class.getName()).log(System.Logger.Level.WARNING,
            "job '" + id() + "': its target did not close cleanly: " + e.getMessage());
      }
    }
  }

  /**
   * The job closes its target when it ends (drive-backup's: the job made it). Set before start;
   * the target then belongs to the job.
   */
  void ownTarget() {
    ownsTarget = true;
  }
}
