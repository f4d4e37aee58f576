package dev.blockbackup.engine;

/**
 * QEMU's RateLimit: a quota of bytes per 100 ms slice. A request may overshoot the slice's quota;
 * the slice is then stretched in proportion, and whoever asks waits for its end. Only the
 * background copier is limited, never copy-before-write. Not thread-safe: the job body alone uses
 * it.
 */
final class RateLimit {

  static final long SLICE_NANOS = 100_000_000L;

  private long sliceQuota;
  private long sliceStart;
  private long sliceEnd;
  private boolean started;
  private long dispatched;

  /** Sets the speed in bytes per second; 0 means no limit. */
  void setSpeed(long bytesPerSecond) {
    sliceQuota = bytesPerSecond == 0 ? 0 : Math.max(1, bytesPerSecond / (1_000_000_000L / SLICE_NANOS));
  }

  /** Whether a speed is set. */
  boolean isLimited() {
    return sliceQuota != 0;
  }

  /** How long to wait before dispatching more, in nanoseconds; 0 when a request may go now. */
  long delayNanos(long now) {
    if (sliceQuota == 0) {
      return 0;
    }
    if (!started || sliceEnd - now < 0) {
      // the previous (maybe stretched) slice is over: start afresh
      started = true;
      sliceStart = now;
      sliceEnd = now + SLICE_NANOS;
      dispatched = 0;
    }
    if (dispatched < sliceQuota) {
      return 0;
    }
    // stretch the slice so that what went out fits the quota, and wait for its end
    sliceEnd = sliceStart + (long) ((double) dispatched / sliceQuota * SLICE_NANOS);
    return Math.max(1, sliceEnd - now);
  }

  /** Counts {@code bytes} dispatched in the current slice. */
  void account(long bytes) {
    if (sliceQuota != 0) {
      dispatched += bytes;
    }
  }
}
