package dev.blockbackup.engine;

import java.util.Objects;

/**
 * The arguments of blockdev-backup (QAPI BackupCommon, with BackupPerf and on-cbw-error), with
 * QEMU's defaults. Immutable; each {@code with...} returns a copy. Ranges are checked here, the
 * rest (sizes, compression support, sync/bitmap combinations) when the job is created.
 */
public final class BackupOptions {

  private final MirrorSyncMode sync;
  private String jobId;
  private long speed;
  private BlockdevOnError onSourceError = BlockdevOnError.report;
  private BlockdevOnError onTargetError = BlockdevOnError.report;
  private boolean autoFinalize = true;
  private boolean autoDismiss = true;
  private String filterNodeName;
  private boolean compress;
  private boolean discardSource;
  private OnCbwError onCbwError = OnCbwError.break_guest_write;
  private long cbwTimeoutSeconds;
  private int maxWorkers = 64;
  private long maxChunk;
  private long minClusterSize;
  private String bitmap;
  private BitmapSyncMode bitmapMode;

  private BackupOptions(MirrorSyncMode sync) {
    this.sync = Objects.requireNonNull(sync, "sync");
  }

  /** Options for a backup with {@code sync}, everything else at QEMU's defaults. */
  public static BackupOptions of(MirrorSyncMode sync) {
    return new BackupOptions(sync);
  }

  /** A copy with {@code change} applied: how every {@code with...} makes its result. */
  private BackupOptions with(java.util.function.Consumer<BackupOptions> change) {
    BackupOptions o = new BackupOptions(sync);
    o.jobId = jobId;
    o.speed = speed;
    o.onSourceError = onSourceError;
    o.onTargetError = onTargetError;
    o.autoFinalize = autoFinalize;
    o.autoDismiss = autoDismiss;
    o.filterNodeName = filterNodeName;
    o.compress = compress;
    o.discardSource = discardSource;
    o.onCbwError = onCbwError;
    o.cbwTimeoutSeconds = cbwTimeoutSeconds;
    o.maxWorkers = maxWorkers;
    o.maxChunk = maxChunk;
    o.minClusterSize = minClusterSize;
    o.bitmap = bitmap;
    o.bitmapMode = bitmapMode;
    change.accept(o);
    return o;
  }

  /** job-id; by default the source node's name, as QEMU uses the device name. */
  public BackupOptions withJobId(String id) {
    return with(o -> o.jobId = id);
  }

  /** speed: the background copy's rate limit in bytes per second, 0 for none. */
  public BackupOptions withSpeed(long bytesPerSecond) {
    if (bytesPerSecond < 0) {
      throw new JobException("Parameter 'speed' expects a non-negative value");
    }
    return with(o -> o.speed = bytesPerSecond);
  }

  public BackupOptions withOnSourceError(BlockdevOnError policy) {
    return with(o -> o.onSourceError = Objects.requireNonNull(policy));
  }

  public BackupOptions withOnTargetError(BlockdevOnError policy) {
    return with(o -> o.onTargetError = Objects.requireNonNull(policy));
  }

  public BackupOptions withAutoFinalize(boolean value) {
    return with(o -> o.autoFinalize = value);
  }

  public BackupOptions withAutoDismiss(boolean value) {
    return with(o -> o.autoDismiss = value);
  }

  /** filter-node-name: the name of the copy-before-write filter the job inserts. */
  public BackupOptions withFilterNodeName(String name) {
    return with(o -> o.filterNodeName = name);
  }

  /** compress: write the target with compressed clusters (a qcow2 target). */
  public BackupOptions withCompress(boolean value) {
    return with(o -> o.compress = value);
  }

  /** discard-source: discard each range on the source once it is copied (QEMU 9.1). */
  public BackupOptions withDiscardSource(boolean value) {
    return with(o -> o.discardSource = value);
  }

  public BackupOptions withOnCbwError(OnCbwError value) {
    return with(o -> o.onCbwError = Objects.requireNonNull(value));
  }

  /** cbw-timeout in seconds, 0 for none. */
  public BackupOptions withCbwTimeout(long seconds) {
    if (seconds < 0 || seconds > 0xFFFF_FFFFL) {
      throw new JobException("Parameter 'cbw-timeout' expects uint32");
    }
    return with(o -> o.cbwTimeoutSeconds = seconds);
  }

  /** x-perf.max-workers: parallel background requests, at least 1. */
  public BackupOptions withMaxWorkers(int workers) {
    if (workers < 1) {
      throw new JobException("max-workers must be greater than zero");
    }
    return with(o -> o.maxWorkers = workers);
  }

  /** x-perf.max-chunk: the largest background request in bytes, 0 for no cap. */
  public BackupOptions withMaxChunk(long bytes) {
    if (bytes < 0) {
      throw new JobException("max-chunk must be zero (which disables the limit) or greater than zero");
    }
    return with(o -> o.maxChunk = bytes);
  }

  /** x-perf.min-cluster-size: a floor for the job cluster size, a power of two (QEMU 9.2). */
  public BackupOptions withMinClusterSize(long bytes) {
    if (bytes < 0 || bytes != 0 && Long.bitCount(bytes) != 1) {
      throw new JobException("min-cluster-size needs to be a power of 2");
    }
    return with(o -> o.minClusterSize = bytes);
  }

  /**
   * bitmap: the name of a dirty bitmap of the source node. With sync=bitmap or incremental it says
   * what to copy; with full or top it is only brought up to date at the end (bitmap-mode).
   */
  public BackupOptions withBitmap(String name) {
    return with(o -> o.bitmap = Objects.requireNonNull(name, "bitmap"));
  }

  /** bitmap-mode: what the job does with its bitmap at the end; incremental implies on-success. */
  public BackupOptions withBitmapMode(BitmapSyncMode mode) {
    return with(o -> o.bitmapMode = Objects.requireNonNull(mode, "bitmap-mode"));
  }

  public MirrorSyncMode sync() {
    return sync;
  }

  public String jobId() {
    return jobId;
  }

  public long speed() {
    return speed;
  }

  public BlockdevOnError onSourceError() {
    return onSourceError;
  }

  public BlockdevOnError onTargetError() {
    return onTargetError;
  }

  public boolean autoFinalize() {
    return autoFinalize;
  }

  public boolean autoDismiss() {
    return autoDismiss;
  }

  public String filterNodeName() {
    return filterNodeName;
  }

  public boolean compress() {
    return compress;
  }

  public boolean discardSource() {
    return discardSource;
  }

  public OnCbwError onCbwError() {
    return onCbwError;
  }

  public long cbwTimeoutSeconds() {
    return cbwTimeoutSeconds;
  }

  public int maxWorkers() {
    return maxWorkers;
  }

  public long maxChunk() {
    return maxChunk;
  }

  public long minClusterSize() {
    return minClusterSize;
  }

  /** The bitmap's name, or null. */
  public String bitmap() {
    return bitmap;
  }

  /** bitmap-mode as given, or null when not given. */
  public BitmapSyncMode bitmapMode() {
    return bitmapMode;
  }
}
