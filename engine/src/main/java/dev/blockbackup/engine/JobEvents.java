package dev.blockbackup.engine;

import java.util.Objects;
import java.util.Queue;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.locks.ReentrantLock;

/**
 * A job's event dispatch (QEMU's QMP event emission for jobs): events are queued while the job's
 * lock is held and delivered after it is let go, one at a time and in order, to the job's own
 * listeners and then to its manager's. A listener may call a verb; the events that causes go out
 * after the current one, never nested inside it.
 */
final class JobEvents {

  private static final System.Logger LOG = System.getLogger(Job.class.getName());

  /** The job id, for log messages. */
  private final String jobId;
  private final CopyOnWriteArrayList<JobListener> listeners = new CopyOnWriteArrayList<>();
  /** Events queued under the job's lock, delivered by {@link #flush()} outside it. */
  private final Queue<JobEvent> pending = new ConcurrentLinkedQueue<>();
  /** Held by the thread delivering events, so they go out one at a time and in order. */
  private final ReentrantLock dispatchLock = new ReentrantLock();
  /** The manager that lists the job, set once at registration; its listeners hear every event. */
  private volatile JobManager manager;

  JobEvents(String jobId) {
    this.jobId = jobId;
  }

  void addListener(JobListener listener) {
    listeners.add(Objects.requireNonNull(listener, "listener"));
  }

  void removeListener(JobListener listener) {
    listeners.remove(listener);
  }

  JobManager manager() {
    return manager;
  }

  void setManager(JobManager owner) {
    manager = owner;
  }

  /** Queues {@code event}; it goes out at the next {@link #flush()}. */
  void queue(JobEvent event) {
    pending.add(event);
  }

  /**
   * Delivers queued events in order. Whoever holds dispatchLock delivers everyone's events; a
   * thread that finds it taken leaves its events to the holder, which re-checks the queue after
   * letting go.
   */
  void flush() {
    if (dispatchLock.isHeldByCurrentThread()) {
      // A listener called a verb: its events wait until every listener has seen this one.
      return;
    }
    while (!pending.isEmpty()) {
      if (!dispatchLock.tryLock()) {
        return;
      }
      try {
        JobEvent e;
        while ((e = pending.poll()) != null) {
          deliver(e);
        }
      } finally {
        dispatchLock.unlock();
      }
    }
  }

  private void deliver(JobEvent e) {
    for (JobListener l : listeners) {
      safeDeliver(l, e);
    }
    JobManager m = manager;
    if (m != null) {
      for (JobListener l : m.listeners()) {
        safeDeliver(l, e);
      }
    }
  }

  private void safeDeliver(JobListener l, JobEvent e) {
    try {
      l.onEvent(e);
    } catch (RuntimeException ex) {
      LOG.log(System.Logger.Level.WARNING, "job '" + jobId + "': listener threw on " + e.name(), ex);
    }
  }
}
