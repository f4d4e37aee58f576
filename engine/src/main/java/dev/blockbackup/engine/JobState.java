package dev.blockbackup.engine;

import dev.blockbackup.engine.JobEvent.JobStatusChange;
import java.time.Duration;
import java.util.concurrent.locks.Condition;
import java.util.concurrent.locks.ReentrantLock;

/**
 * A job's status machine (job.c's job_state_transition and job_apply_verb over {@link
 * JobTables}) and the flags that decide where it goes next, all under the job's one lock. Every
 * transition queues its JOB_STATUS_CHANGE; {@link #unlockAndFlush()} lets the lock go and then
 * delivers what was queued.
 */
final class JobState {

  private final String id;
  private final JobEvents events;

  /** The job's one lock: guards this state, the pause counter and the event queue's order. */
  final ReentrantLock lock = new ReentrantLock();
  /** Signalled on every change of the job's state (status, flags, pause count, wake-ups). */
  final Condition changed = lock.newCondition();

  // Written only under the lock. Those a getter returns are volatile, so a getter reads them
  // without taking the lock (one field, one consistent value).

  /** Current status. */
  volatile JobStatus status = JobStatus.undefined;
  /** Cancel was requested (backup always force-cancels). */
  volatile boolean cancelled;
  /** start() was called: the body ran or is running. */
  boolean started;
  /** job-finalize arrived while PENDING with auto-finalize=false. */
  boolean finalizeRequested;
  /** Why the job failed (QEMU's job->err), or null. */
  volatile String error;

  JobState(String id, JobEvents events) {
    this.id = id;
    this.events = events;
  }

  /** job_state_transition: an illegal transition is a bug. Caller holds the lock. */
  void transition(JobStatus to) {
    if (!JobTables.transitionAllowed(status, to)) {
      throw new IllegalStateException("job '" + id + "': illegal transition "
          + status.qapiName() + " -> " + to.qapiName());
    }
    status = to;
    events.queue(new JobStatusChange(id, to));
    changed.signalAll();
  }

  /** job_apply_verb: refuses a verb the status does not accept. Caller holds the lock. */
  void checkVerb(JobVerb verb) {
    if (!JobTables.verbAllowed(verb, status)) {
      throw JobException.verbRefused(id, status, verb);
    }
  }

  /** Waits until the status is one of {@code wanted}; false if the timeout passed first. */
  boolean awaitStatus(Duration timeout, JobStatus... wanted) throws InterruptedException {
    long nanos = timeout.toNanos();
    lock.lock();
    try {
      while (!isOneOf(status, wanted)) {
        if (nanos <= 0) {
          return false;
        }
        nanos = changed.awaitNanos(nanos);
      }
      return true;
    } finally {
      lock.unlock();
    }
  }

  private static boolean isOneOf(JobStatus s, JobStatus... set) {
    for (JobStatus w : set) {
      if (s == w) {
        return true;
      }
    }
    return false;
  }

  /** Lets the lock go once; when this thread no longer holds it, delivers the queued events. */
  void unlockAndFlush() {
    lock.unlock();
    if (!lock.isHeldByCurrentThread()) {
      events.flush();
    }
  }

  /** Delivers the queued events while this thread holds the lock: lets it go, re-takes it after. */
  void flushOutsideLock() {
    int holds = lock.getHoldCount();
    for (int i = 0; i < holds; i++) {
      lock.unlock();
    }
    try {
      events.flush();
    } finally {
      for (int i = 0; i < holds; i++) {
        lock.lock();
      }
    }
  }
}
