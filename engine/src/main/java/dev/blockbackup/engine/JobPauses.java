package dev.blockbackup.engine;

import java.util.function.BooleanSupplier;

/**
 * A job's pause counter and its sleeps (QEMU's pause_count, job_pause_point, job_sleep_ns and
 * job_enter). Internal pauses (a drain) and one user pause (job-pause, or an error with
 * action=stop) add up; the body stops at its next pause point while the count is above zero.
 * A sleeping body wakes early on a cancel, a pause, a new speed or {@link #wake()}.
 */
final class JobPauses {

  private final String id;
  private final JobState state;

  // Written only under the job's lock; the volatile ones are read without it.

  /** QEMU's pause_count; 1 from creation until start(). */
  private volatile int count = 1;
  /** A user pause is counted in {@link #count}. */
  private volatile boolean userPaused;
  /** Counts wake-ups, so a sleeper notices one that came while it was not waiting. */
  private long wakeups;

  JobPauses(String id, JobState state) {
    this.id = id;
    this.state = state;
  }

  boolean isPaused() {
    return count > 0;
  }

  boolean isUserPaused() {
    return userPaused;
  }

  /** job_pause: one more pause; the body stops at its next pause point. */
  void pause() {
    state.lock.lock();
    try {
      count++;
      state.changed.signalAll();
    } finally {
      state.lock.unlock();
    }
  }

  /** job_resume: one pause fewer; the body goes on once none is left. */
  void resume() {
    state.lock.lock();
    try {
      if (count <= 0) {
        throw new IllegalStateException("job '" + id + "' is not paused");
      }
      count--;
      state.changed.signalAll();
    } finally {
      state.lock.unlock();
    }
  }

  /** Takes the user pause if there is none yet; false if the job already is user-paused. */
  boolean pauseByUser() {
    state.lock.lock();
    try {
      if (userPaused) {
        return false;
      }
      userPaused = true;
      pause();
      return true;
    } finally {
      state.lock.unlock();
    }
  }

  /** Lets the user pause go if there is one; false if there was none. */
  boolean resumeByUser() {
    state.lock.lock();
    try {
      if (!userPaused || count <= 0) {
        return false;
      }
      userPaused = false;
      resume();
      return true;
    } finally {
      state.lock.unlock();
    }
  }

  /**
   * job_pause_point: blocks while the job is paused, moving RUNNING -> PAUSED (READY -> STANDBY)
   * and back; throws {@link JobCancelledException} if the job was cancelled.
   */
  void pausePoint() {
    state.lock.lock();
    try {
      if (!state.cancelled && count > 0
          && (state.status == JobStatus.running || state.status == JobStatus.ready)) {
        JobStatus resumeTo = state.status;
        state.transition(resumeTo == JobStatus.ready ? JobStatus.standby : JobStatus.paused);
        state.flushOutsideLock();
        while (count > 0 && !state.cancelled) {
          state.changed.awaitUninterruptibly();
        }
        state.transition(resumeTo);
      }
      if (state.cancelled) {
        throw new JobCancelledException(id);
      }
    } finally {
      state.unlockAndFlush();
    }
  }

  /** job_sleep_ns: waits up to {@code nanos}, or less on a cancel, a pause or a wake-up. */
  void sleep(long nanos) {
    sleepUntil(() -> false, nanos);
  }

  /**
   * Like {@link #sleep}, and returns as soon as {@code ready} holds. {@code ready} is tested under
   * the job's lock; whoever makes it true and then calls {@link #wake()} cannot be missed, since
   * wake() needs that lock too.
   */
  void sleepUntil(BooleanSupplier ready, long nanos) {
    state.lock.lock();
    try {
      long left = nanos;
      long seen = wakeups;
      while (left > 0 && !state.cancelled && count == 0 && seen == wakeups && !ready.getAsBoolean()) {
        try {
          left = state.changed.awaitNanos(left);
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
          return;
        }
      }
    } finally {
      state.lock.unlock();
    }
  }

  /** job_enter: ends a {@link #sleep} early. */
  void wake() {
    state.lock.lock();
    try {
      wakeups++;
      state.changed.signalAll();
    } finally {
      state.lock.unlock();
    }
  }
}
