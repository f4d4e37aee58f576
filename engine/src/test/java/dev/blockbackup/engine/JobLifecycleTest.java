package dev.blockbackup.engine;

import static dev.blockbackup.engine.JobStatus.aborting;
import static dev.blockbackup.engine.JobStatus.concluded;
import static dev.blockbackup.engine.JobStatus.created;
import static dev.blockbackup.engine.JobStatus.null_;
import static dev.blockbackup.engine.JobStatus.paused;
import static dev.blockbackup.engine.JobStatus.pending;
import static dev.blockbackup.engine.JobStatus.running;
import static dev.blockbackup.engine.JobStatus.waiting;
import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;
import static org.assertj.core.api.Assertions.fail;

import dev.blockbackup.engine.JobEvent.BlockJobCancelled;
import dev.blockbackup.engine.JobEvent.BlockJobCompleted;
import dev.blockbackup.engine.JobEvent.BlockJobError;
import dev.blockbackup.engine.JobEvent.BlockJobPending;
import dev.blockbackup.engine.JobEvent.BlockJobReady;
import dev.blockbackup.engine.JobEvent.ErrorAction;
import dev.blockbackup.engine.JobEvent.IoOperation;
import dev.blockbackup.engine.JobEvent.JobStatusChange;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

class JobLifecycleTest {

  private static final Duration TIMEOUT = EventRecorder.TIMEOUT;

  private JobManager manager;
  private EventRecorder recorder;
  private final List<TestJob> jobs = new ArrayList<>();

  @BeforeEach
  void setUp() {
    manager = new JobManager();
    recorder = new EventRecorder();
    manager.addListener(recorder);
  }

  @AfterEach
  void stopJobs() throws InterruptedException {
    for (TestJob job : jobs) {
      job.finish.countDown();
      try {
        job.cancel();
      } catch (JobException ignored) {
        // it already ended
      }
      job.awaitStatus(TIMEOUT, concluded, null_);
    }
  }

  private TestJob register(TestJob job) {
    jobs.add(job);
    return manager.register(job);
  }

  private static void awaitStatus(Job job, JobStatus status) throws InterruptedException {
    if (!job.awaitStatus(TIMEOUT, status)) {
      fail("job did not reach " + status.qapiName() + " within " + TIMEOUT + "; it is "
          + job.status().qapiName());
    }
  }

  private List<JobEvent> blockJobEvents() {
    return recorder.events().stream().filter(e -> !(e instanceof JobStatusChange)).toList();
  }

  @Test
  void successGoesThroughWaitingAndPendingAndReportsCompletedWithOffsetEqualToLen() throws Exception {
    TestJob job = register(new TestJob("job0"));
    job.start();
    job.finish.countDown();
    recorder.awaitStatus(null_);

    assertThat(recorder.statuses()).containsExactly(created, running, waiting, pending, concluded, null_);
    assertThat(blockJobEvents()).containsExactly(
        new BlockJobCompleted("backup", "job0", TestJob.LEN, TestJob.LEN, 0, null));
    // QEMU emits BLOCK_JOB_COMPLETED before the job concludes.
    List<JobEvent> all = recorder.events();
    assertThat(all.indexOf(blockJobEvents().get(0)))
        .isLessThan(all.indexOf(new JobStatusChange("job0", concluded)));
    assertThat(job.commits.get()).isEqualTo(1);
    assertThat(job.aborts.get()).isZero();
    assertThat(job.cleans.get()).isEqualTo(1);
    assertThat(job.error()).isNull();
    assertThat(job.concludedFuture().get(TIMEOUT.toSeconds(), TimeUnit.SECONDS)).isEqualTo(null_);
    assertThat(manager.get("job0")).isEmpty();
  }

  @Test
  void manualFinalizeEmitsPendingAndWaitsForFinalize() throws Exception {
    TestJob job = register(new TestJob("job0", false, true, false));
    job.start();
    job.finish.countDown();
    recorder.await("BLOCK_JOB_PENDING", e -> e instanceof BlockJobPending);

    assertThat(job.status()).isEqualTo(pending);
    assertThat(recorder.events()).contains(new BlockJobPending("backup", "job0"));
    assertThat(job.commits.get()).isZero();

    job.finalizeJob();
    recorder.awaitStatus(null_);
    assertThat(job.commits.get()).isEqualTo(1);
    assertThat(job.aborts.get()).isZero();
    assertThat(recorder.statuses()).containsExactly(created, running, waiting, pending, concluded, null_);
  }

  @Test
  void autoFinalizeEmitsNoPendingEvent() throws Exception {
    TestJob job = register(new TestJob("job0"));
    job.start();
    job.finish.countDown();
    recorder.awaitStatus(null_);
    assertThat(recorder.events()).noneMatch(e -> e instanceof BlockJobPending);
  }

  @Test
  void manualDismissKeepsTheJobConcludedUntilDismiss() throws Exception {
    TestJob job = register(new TestJob("job0", true, false, false));
    job.start();
    job.finish.countDown();
    awaitStatus(job, concluded);

    assertThat(manager.get("job0")).contains(job);
    assertThat(job.status()).isEqualTo(concluded);
    job.dismiss();
    assertThat(job.status()).isEqualTo(null_);
    assertThat(manager.get("job0")).isEmpty();
    recorder.awaitStatus(null_);
    assertThat(recorder.statuses()).containsExactly(created, running, waiting, pending, concluded, null_);
  }

  @Test
  void failingRunAbortsAndReportsCompletedWithTheError() throws Exception {
    TestJob job = register(new TestJob("job0"));
    job.failWith = new IllegalStateException("target on fire");
    job.start();
    job.finish.countDown();
    recorder.awaitStatus(null_);

    assertThat(recorder.statuses()).containsExactly(created, running, aborting, concluded, null_);
    assertThat(blockJobEvents()).singleElement().isInstanceOfSatisfying(BlockJobCompleted.class, c -> {
      assertThat(c.error()).isEqualTo("target on fire");
      assertThat(c.len()).isEqualTo(TestJob.LEN);
      assertThat(c.offset()).isZero();
    });
    assertThat(job.error()).isEqualTo("target on fire");
    assertThat(job.aborts.get()).isEqualTo(1);
    assertThat(job.commits.get()).isZero();
    assertThat(job.cleans.get()).isEqualTo(1);
  }

  @Test
  void cancelWhileRunningAbortsAndReportsCancelled() throws Exception {
    TestJob job = register(new TestJob("job0"));
    job.start();
    assertThat(job.running.await(TIMEOUT.toSeconds(), TimeUnit.SECONDS)).as("body started").isTrue();
    job.cancel();
    recorder.awaitStatus(null_);

    assertThat(recorder.statuses()).containsExactly(created, running, aborting, concluded, null_);
    assertThat(blockJobEvents()).containsExactly(
        new BlockJobCancelled("backup", "job0", TestJob.LEN, 0, 0));
    assertThat(job.error()).isEqualTo("Operation canceled");
    assertThat(job.aborts.get()).isEqualTo(1);
    assertThat(job.commits.get()).isZero();
    assertThat(job.cleans.get()).isEqualTo(1);
  }

  @Test
  void cancelWhileUserPausedResumesTheJobSoItCanAbort() throws Exception {
    TestJob job = register(new TestJob("job0"));
    job.start();
    job.pause();
    awaitStatus(job, paused);
    job.cancel();
    recorder.awaitStatus(null_);

    assertThat(recorder.statuses())
        .containsExactly(created, running, paused, running, aborting, concluded, null_);
    assertThat(blockJobEvents()).singleElement().isInstanceOf(BlockJobCancelled.class);
    assertThat(job.aborts.get()).isEqualTo(1);
  }

  @Test
  void cancelWhileDrainedStillAborts() throws Exception {
    TestJob job = register(new TestJob("job0"));
    job.start();
    job.pauses().pause();
    awaitStatus(job, paused);
    job.cancel();
    recorder.awaitStatus(null_);
    assertThat(blockJobEvents()).singleElement().isInstanceOf(BlockJobCancelled.class);
  }

  @Test
  void cancelBeforeStartConcludesWithoutBlockJobEvents() throws Exception {
    TestJob job = register(new TestJob("job0", true, false, false));
    job.cancel();

    // A job that never started is dismissed even with auto-dismiss=false (job_conclude).
    assertThat(job.status()).isEqualTo(null_);
    recorder.awaitStatus(null_);
    assertThat(recorder.statuses()).containsExactly(created, aborting, concluded, null_);
    assertThat(blockJobEvents()).isEmpty();
    assertThat(job.aborts.get()).isEqualTo(1);
    assertThat(job.commits.get()).isZero();
    assertThat(job.cleans.get()).isEqualTo(1);
    assertThat(manager.get("job0")).isEmpty();
    assertThatThrownBy(job::start).isInstanceOf(IllegalStateException.class);
  }

  @Test
  void cancelWhilePendingAbortsInsteadOfCommitting() throws Exception {
    TestJob job = register(new TestJob("job0", false, true, false));
    job.start();
    job.finish.countDown();
    awaitStatus(job, pending);
    job.cancel();
    recorder.awaitStatus(null_);

    assertThat(recorder.statuses())
        .containsExactly(created, running, waiting, pending, aborting, concluded, null_);
    assertThat(blockJobEvents()).hasSize(2).element(1).isInstanceOf(BlockJobCancelled.class);
    assertThat(job.commits.get()).isZero();
    assertThat(job.aborts.get()).isEqualTo(1);
    assertThat(job.cleans.get()).isEqualTo(1);
  }

  @Test
  void pausingTwiceIsRefused() throws Exception {
    TestJob job = register(new TestJob("job0"));
    job.start();
    job.pause();
    awaitStatus(job, paused);
    assertThatThrownBy(job::pause).isInstanceOf(JobException.class).hasMessage("Job is already paused");
    assertThat(job.status()).isEqualTo(paused);
  }

  @Test
  void resumingAJobThatWasNotUserPausedIsRefused() throws Exception {
    TestJob job = register(new TestJob("job0"));
    job.start();
    assertThatThrownBy(job::resume)
        .isInstanceOf(JobException.class)
        .hasMessage("Can't resume a job that was not paused");

    job.pauses().pause(); // a drain is not a user pause
    awaitStatus(job, paused);
    assertThatThrownBy(job::resume)
        .isInstanceOf(JobException.class)
        .hasMessage("Can't resume a job that was not paused");
    assertThat(job.status()).isEqualTo(paused);
    job.pauses().resume();
    awaitStatus(job, running);
  }

  @Test
  void userPauseAndResumeLetTheJobFinish() throws Exception {
    TestJob job = register(new TestJob("job0"));
    job.start();
    job.pause();
    awaitStatus(job, paused);
    job.finish.countDown();
    job.resume();
    recorder.awaitStatus(null_);
    assertThat(recorder.statuses())
        .containsExactly(created, running, paused, running, waiting, pending, concluded, null_);
    assertThat(job.commits.get()).isEqualTo(1);
  }

  @Test
  void aUserPauseBeforeStartHoldsTheJobAtItsFirstPausePoint() throws Exception {
    TestJob job = register(new TestJob("job0"));
    job.pause();
    job.start();
    awaitStatus(job, paused);
    job.resume();
    awaitStatus(job, running);
  }

  @Test
  void drainPausesNestAsACounter() throws Exception {
    TestJob job = register(new TestJob("job0"));
    job.start();
    job.pauses().pause();
    job.pauses().pause();
    awaitStatus(job, paused);
    job.pauses().resume();
    assertThat(job.isPaused()).isTrue();
    job.pauses().resume();
    awaitStatus(job, running);
    assertThat(job.isPaused()).isFalse();
  }

  @Test
  void negativeSpeedIsRefusedAndLeavesTheSpeedAlone() throws Exception {
    TestJob job = register(new TestJob("job0"));
    job.setSpeed(1000);
    assertThatThrownBy(() -> job.setSpeed(-1))
        .isInstanceOf(JobException.class)
        .hasMessage("Parameter 'speed' expects a non-negative value");
    assertThat(job.speed()).isEqualTo(1000);
    assertThat(job.speedSeen).isEqualTo(1000);
  }

  @Test
  void speedSetWhileRunningReachesTheHookAndTheCompletedEvent() throws Exception {
    TestJob job = register(new TestJob("job0"));
    job.start();
    job.setSpeed(65536);
    assertThat(job.speedSeen).isEqualTo(65536);
    job.finish.countDown();
    BlockJobCompleted done = (BlockJobCompleted) recorder.await("BLOCK_JOB_COMPLETED",
        e -> e instanceof BlockJobCompleted);
    assertThat(done.speed()).isEqualTo(65536);
  }

  @Test
  void completeIsRefusedForABackupJob() throws Exception {
    TestJob job = register(new TestJob("job0"));
    job.start();
    assertThatThrownBy(job::complete)
        .isInstanceOf(JobException.class)
        .hasMessage("Job 'job0' in state 'running' cannot accept command verb 'complete'");
  }

  @Test
  void aReadyJobCompletesOnRequest() throws Exception {
    TestJob job = register(new TestJob("job0", true, true, true));
    job.start();
    recorder.await("BLOCK_JOB_READY", e -> e instanceof BlockJobReady);
    job.complete();
    recorder.awaitStatus(null_);
    assertThat(recorder.statuses())
        .containsExactly(created, running, JobStatus.ready, waiting, pending, concluded, null_);
    assertThat(job.commits.get()).isEqualTo(1);
  }

  @Test
  void errorWithActionStopEmitsBlockJobErrorAndUserPauses() throws Exception {
    TestJob job = register(new TestJob("job0"));
    job.blockJobError(IoOperation.write, ErrorAction.stop);
    assertThat(recorder.events()).contains(new BlockJobError("job0", IoOperation.write, ErrorAction.stop));
    assertThat(job.isUserPaused()).isTrue();
    job.resume();
    assertThat(job.isUserPaused()).isFalse();

    job.blockJobError(IoOperation.read, ErrorAction.report);
    assertThat(job.isUserPaused()).isFalse();
    assertThat(recorder.events()).contains(new BlockJobError("job0", IoOperation.read, ErrorAction.report));
  }

  @Test
  void progressFollowsQemusProgressApi() {
    TestJob job = register(new TestJob("job0"));
    job.progressSetRemaining(100);
    job.progressUpdate(30);
    assertThat(job.currentProgress()).isEqualTo(30);
    assertThat(job.totalProgress()).isEqualTo(100);
    job.progressSetRemaining(50); // total = current + remaining
    assertThat(job.totalProgress()).isEqualTo(80);
    assertThatThrownBy(() -> job.progressUpdate(-1)).isInstanceOf(IllegalArgumentException.class);
  }

  @Test
  void awaitConcludedReturnsOnceConcluded() throws Exception {
    TestJob job = register(new TestJob("job0", true, false, false));
    job.start();
    assertThat(job.awaitConcluded(Duration.ZERO)).isFalse();
    job.finish.countDown();
    assertThat(job.awaitConcluded(TIMEOUT)).as("concluded within %s", TIMEOUT).isTrue();
    assertThat(job.concludedFuture().get(TIMEOUT.toSeconds(), TimeUnit.SECONDS))
        .isEqualTo(concluded);
  }

  @Test
  void aListenerMayCallVerbsWhileAnEventIsDelivered() throws Exception {
    TestJob job = register(new TestJob("job0", true, false, false));
    job.addListener(e -> {
      if (e instanceof JobStatusChange c && c.status() == concluded) {
        job.dismiss();
      }
    });
    job.start();
    job.finish.countDown();
    recorder.awaitStatus(null_);
    assertThat(recorder.statuses()).containsExactly(created, running, waiting, pending, concluded, null_);
  }

  @Test
  void theBodyRunsOnTheGivenExecutor() throws Exception {
    java.util.concurrent.ExecutorService pool = java.util.concurrent.Executors.newSingleThreadExecutor(
        r -> new Thread(r, "test-pool"));
    try {
      String[] bodyThread = new String[1];
      Job job = manager.register(new Job("job0", "backup") {
        @Override
        protected void run() {
          bodyThread[0] = Thread.currentThread().getName();
        }
      });
      job.start(pool);
      recorder.awaitStatus(null_);
      assertThat(bodyThread[0]).isEqualTo("test-pool");
    } finally {
      pool.shutdownNow();
    }
  }

  @Test
  void changeIsRefusedByAJobTypeWithNothingToChange() {
    Job job = manager.register(new Job("job0", "backup") {
      @Override
      protected void run() {}
    });
    assertThatThrownBy(job::change)
        .isInstanceOf(JobException.class)
        .hasMessage("Job type does not support change");
    job.cancel();
  }
}
