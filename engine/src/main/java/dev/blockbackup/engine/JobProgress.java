package dev.blockbackup.engine;

/**
 * A job's progress (QEMU's ProgressMeter): bytes done and bytes expected in total, as query-jobs
 * reports them as current-progress and total-progress. Both only grow, except that a new estimate
 * of what remains may lower the total.
 */
final class JobProgress {

  /** Bytes processed so far. */
  private volatile long current;
  /** Bytes expected in total: current plus what remains. */
  private volatile long total;

  long current() {
    return current;
  }

  long total() {
    return total;
  }

  /** progress_work_done: {@code done} more bytes were processed. */
  synchronized void workDone(long done) {
    checkNonNegative("done", done);
    current += done;
  }

  /** progress_set_remaining: {@code remaining} bytes are left, so total = current + remaining. */
  synchronized void setRemaining(long remaining) {
    checkNonNegative("remaining", remaining);
    total = current + remaining;
  }

  private static void checkNonNegative(String what, long value) {
    if (value < 0) {
      throw new IllegalArgumentException(what + " (" + value + ") must not be negative");
    }
  }
}
