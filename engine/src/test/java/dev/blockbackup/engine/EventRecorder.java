package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.fail;

import dev.blockbackup.engine.JobEvent.JobStatusChange;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.function.Predicate;

/** Records every event it is given and lets a test wait, bounded, for one. */
final class EventRecorder implements JobListener {

  static final Duration TIMEOUT = Duration.ofSeconds(10);

  private final List<JobEvent> events = new ArrayList<>();

  @Override
  public synchronized void onEvent(JobEvent event) {
    events.add(event);
    notifyAll();
  }

  synchronized List<JobEvent> events() {
    return List.copyOf(events);
  }

  /** The statuses of the JOB_STATUS_CHANGE events seen so far, in order. */
  synchronized List<JobStatus> statuses() {
    List<JobStatus> out = new ArrayList<>();
    for (JobEvent e : events) {
      if (e instanceof JobStatusChange c) {
        out.add(c.status());
      }
    }
    return out;
  }

  /** Waits up to {@link #TIMEOUT} for an event matching {@code what}; fails the test otherwise. */
  synchronized JobEvent await(String description, Predicate<JobEvent> what) throws InterruptedException {
    long deadline = System.nanoTime() + TIMEOUT.toNanos();
    while (true) {
      for (JobEvent e : events) {
        if (what.test(e)) {
          return e;
        }
      }
      long left = deadline - System.nanoTime();
      if (left <= 0) {
        return fail("no " + description + " within " + TIMEOUT + "; events: " + events);
      }
      wait(Math.max(1, left / 1_000_000));
    }
  }

  JobEvent awaitStatus(JobStatus status) throws InterruptedException {
    return await("JOB_STATUS_CHANGE to " + status.qapiName(),
        e -> e instanceof JobStatusChange c && c.status() == status);
  }
}
