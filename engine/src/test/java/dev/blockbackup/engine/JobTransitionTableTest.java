package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;
import static org.assertj.core.api.Assertions.fail;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The two tables of reference §3, written out here independently of {@link JobTables}: every
 * (verb, status) pair is tried on a job really driven into that status.
 */
class JobTransitionTableTest {

  private static final Duration TIMEOUT = Duration.ofSeconds(10);

  /** §3 transition table, one row per status: the statuses it may move to. */
  private static final String[] TRANSITIONS = {
    "undefined: created",
    "created: running aborting null",
    "running: paused ready waiting aborting",
    "paused: running",
    "ready: standby waiting aborting",
    "standby: ready",
    "waiting: pending aborting",
    "pending: aborting concluded",
    "aborting: aborting concluded",
    "concluded: null",
    "null:",
  };

  /** §3 verb table: verb, then the statuses C R P Y S W D X E that accept it. */
  private static final String[] VERBS = {
    "cancel:    created running paused ready standby waiting pending",
    "pause:     created running paused ready standby",
    "resume:    created running paused ready standby",
    "set-speed: created running paused ready standby",
    "change:    created running paused ready standby",
    "complete:  ready standby",
    "finalize:  pending",
    "dismiss:   concluded",
  };

  /** The statuses a test job can be parked in (waiting is only passed through: no transactions). */
  private static final JobStatus[] PARKABLE = {
    JobStatus.created, JobStatus.running, JobStatus.paused, JobStatus.ready, JobStatus.standby,
    JobStatus.pending, JobStatus.aborting, JobStatus.concluded,
  };

  private final List<Runnable> cleanups = new ArrayList<>();

  @AfterEach
  void releaseJobs() {
    cleanups.forEach(Runnable::run);
  }

  /** Whether QEMU's §3 verb table (this test's own copy) lets {@code status} take {@code verb}. */
  static boolean verbAllowed(JobVerb verb, JobStatus status) {
    return listed(VERBS, verb.qapiName(), status);
  }

  private static boolean listed(String[] table, String key, JobStatus status) {
    for (String row : table) {
      String[] kv = row.split(":", 2);
      if (kv[0].trim().equals(key)) {
        return List.of(kv[1].trim().split("\\s+")).contains(status.qapiName());
      }
    }
    throw new AssertionError("no row " + key);
  }

  @Test
  void transitionTableIsQemus() {
    for (JobStatus from : JobStatus.values()) {
      for (JobStatus to : JobStatus.values()) {
        assertThat(JobTables.transitionAllowed(from, to))
            .as("%s -> %s", from, to)
            .isEqualTo(listed(TRANSITIONS, from.qapiName(), to));
      }
    }
  }

  @Test
  void verbTableIsQemus() {
    for (JobVerb verb : JobVerb.values()) {
      for (JobStatus status : JobStatus.values()) {
        assertThat(JobTables.verbAllowed(verb, status))
            .as("%s in %s", verb, status)
            .isEqualTo(listed(VERBS, verb.qapiName(), status));
      }
    }
  }

  static Stream<Arguments> verbAndStatus() {
    List<Arguments> out = new ArrayList<>();
    for (JobVerb verb : JobVerb.values()) {
      for (JobStatus status : PARKABLE) {
        out.add(Arguments.of(verb, status));
      }
    }
    return out.stream();
  }

  @ParameterizedTest(name = "{0} in {1}")
  @MethodSource("verbAndStatus")
  void verbIsAcceptedOrRefusedAsTheTableSays(JobVerb verb, JobStatus status) throws Exception {
    TestJob job = parkIn(status);
    assertThat(job.status()).isEqualTo(status);

    if (listed(VERBS, verb.qapiName(), status)) {
      applyAndCheckAccepted(job, verb);
    } else {
      assertRefused(job, verb, status);
    }
  }

  /** {@code verb} fails with QEMU's message for job0 in {@code status}, and the status stays. */
  static void assertRefused(Job job, JobVerb verb, JobStatus status) {
    String expected = "Job 'job0' in state '" + status.qapiName()
        + "' cannot accept command verb '" + verb.qapiName() + "'";
    if (verb == JobVerb.resume) {
      // job_user_resume asks "was it user-paused?" before the verb table, and no job
      // outside created..standby can be user-paused.
      expected = "Can't resume a job that was not paused";
    }
    assertThatThrownBy(() -> apply(job, verb))
        .isInstanceOf(JobException.class)
        .hasMessage(expected);
    assertThat(job.status()).as("status after a refused %s", verb).isEqualTo(status);
  }

  static void apply(Job job, JobVerb verb) {
    switch (verb) {
      case cancel -> job.cancel();
      case pause -> job.pause();
      case resume -> job.resume();
      case set_speed -> job.setSpeed(4096);
      case change -> job.change();
      case complete -> job.complete();
      case finalize -> job.finalizeJob();
      case dismiss -> job.dismiss();
    }
  }

  private void applyAndCheckAccepted(TestJob job, JobVerb verb) throws InterruptedException {
    switch (verb) {
      case cancel -> {
        job.cancel();
        assertThat(job.isCancelled()).isTrue();
        awaitStatus(job, JobStatus.null_);
      }
      case pause -> {
        job.pause();
        assertThat(job.isUserPaused()).isTrue();
      }
      case resume -> {
        job.pause(); // only a user-paused job can be resumed
        job.resume();
        assertThat(job.isUserPaused()).isFalse();
      }
      case set_speed -> {
        job.setSpeed(4096);
        assertThat(job.speed()).isEqualTo(4096);
        assertThat(job.speedSeen).isEqualTo(4096);
      }
      case change -> {
        job.change();
        assertThat(job.changes.get()).isEqualTo(1);
      }
      case complete -> {
        job.complete();
        assertThat(job.completes.get()).isEqualTo(1);
      }
      case finalize -> {
        job.finalizeJob();
        awaitStatus(job, JobStatus.null_);
        assertThat(job.commits.get()).isEqualTo(1);
      }
      case dismiss -> {
        job.dismiss();
        assertThat(job.status()).isEqualTo(JobStatus.null_);
      }
    }
  }

  private static void awaitStatus(Job job, JobStatus status) throws InterruptedException {
    if (!job.awaitStatus(TIMEOUT, status)) {
      fail("job did not reach " + status.qapiName() + " within " + TIMEOUT + "; it is "
          + job.status().qapiName());
    }
  }

  /** A fresh job named job0, driven into {@code status} and held there. */
  private TestJob parkIn(JobStatus status) throws InterruptedException {
    JobManager manager = new JobManager();
    boolean ready = status == JobStatus.ready || status == JobStatus.standby;
    boolean autoFinalize = status != JobStatus.pending;
    boolean autoDismiss = status != JobStatus.concluded;
    TestJob job = manager.register(new TestJob("job0", autoFinalize, autoDismiss, ready));
    CountDownLatch abortGate = new CountDownLatch(1);
    cleanups.add(() -> release(job, abortGate));
    switch (status) {
      case created -> {}
      case running, ready -> {
        job.start();
        awaitStatus(job, status);
      }
      case paused, standby -> {
        job.start();
        job.pauses().pause(); // a drain, so that the user-pause verb stays open
        awaitStatus(job, status);
      }
      case pending, concluded -> {
        job.start();
        job.finish.countDown();
        awaitStatus(job, status);
      }
      case aborting -> {
        job.holdInAbort(abortGate);
        job.start();
        job.cancel();
        awaitStatus(job, status);
      }
      default -> throw new IllegalArgumentException("cannot park a job in " + status);
    }
    return job;
  }

  /** Lets a parked job end: open every gate, undo drains, cancel what still runs. */
  private static void release(TestJob job, CountDownLatch abortGate) {
    abortGate.countDown();
    job.finish.countDown();
    while (job.isPaused() && !job.isUserPaused() && job.status() != JobStatus.created) {
      job.pauses().resume();
    }
    try {
      job.cancel();
    } catch (JobException ignored) {
      // already past the point where cancel applies
    }
    try {
      job.awaitStatus(TIMEOUT, JobStatus.concluded, JobStatus.null_);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }
}
