package dev.blockbackup.engine;

import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * A backup-like job for tests: run() sets its length, then loops over pausePoint() until
 * {@link #finish} opens, then counts all its bytes as done (or throws {@link #failWith}). It can
 * declare itself ready (like a mirror job) so that job-complete can be tested.
 */
final class TestJob extends Job {

  static final long LEN = 1 << 20;
  /** Bound on how long a forgotten test job keeps running. */
  private static final long GIVE_UP_NANOS = TimeUnit.SECONDS.toNanos(60);

  final CountDownLatch finish = new CountDownLatch(1);
  /** Reached once run() has started looping. */
  final CountDownLatch running = new CountDownLatch(1);
  private volatile CountDownLatch abortHold;
  volatile RuntimeException failWith;
  private final boolean declareReady;

  final AtomicInteger commits = new AtomicInteger();
  final AtomicInteger aborts = new AtomicInteger();
  final AtomicInteger cleans = new AtomicInteger();
  final AtomicInteger changes = new AtomicInteger();
  final AtomicInteger completes = new AtomicInteger();
  volatile long speedSeen = -1;

  TestJob(String id, boolean autoFinalize, boolean autoDismiss, boolean declareReady) {
    super(id, declareReady ? "mirror" : "backup", autoFinalize, autoDismiss);
    this.declareReady = declareReady;
  }

  TestJob(String id) {
    this(id, true, true, false);
  }

  /** Makes abort() block until {@code gate} opens. */
  TestJob holdInAbort(CountDownLatch gate) {
    abortHold = gate;
    return this;
  }

  /**
   * job_transition_to_ready, as a mirror job calls it: RUNNING -> READY and BLOCK_JOB_READY. No
   * job type of ours gets ready, so only this test job reaches into the status machine for it.
   */
  private void transitionToReady() {
    JobState s = state();
    s.lock.lock();
    try {
      s.transition(JobStatus.ready);
      events().queue(new JobEvent.BlockJobReady(type(), id(), totalProgress(), currentProgress(), speed()));
    } finally {
      s.unlockAndFlush();
    }
  }

  @Override
  protected void run() throws Exception {
    progressSetRemaining(LEN);
    if (declareReady) {
      transitionToReady();
    }
    running.countDown();
    long deadline = System.nanoTime() + GIVE_UP_NANOS;
    while (!finish.await(2, TimeUnit.MILLISECONDS)) {
      pausePoint();
      if (System.nanoTime() - deadline > 0) {
        throw new IllegalStateException("test job '" + id() + "' was never finished");
      }
    }
    pausePoint();
    RuntimeException f = failWith;
    if (f != null) {
      throw f;
    }
    progressUpdate(LEN);
  }

  @Override
  protected void commit() {
    commits.incrementAndGet();
  }

  @Override
  protected void abort() {
    aborts.incrementAndGet();
    CountDownLatch gate = abortHold;
    if (gate != null) {
      try {
        gate.await(60, TimeUnit.SECONDS);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
    }
  }

  @Override
  protected void clean() {
    cleans.incrementAndGet();
  }

  @Override
  protected void onSpeedChanged(long bytesPerSecond) {
    speedSeen = bytesPerSecond;
  }

  @Override
  boolean canComplete() {
    return declareReady;
  }

  @Override
  void onComplete() {
    completes.incrementAndGet();
    finish.countDown();
  }

  @Override
  protected void onChange() {
    changes.incrementAndGet();
  }
}
