package dev.blockbackup.engine;

import dev.blockbackup.engine.JobEvent.BlockJobError;
import dev.blockbackup.engine.JobEvent.ErrorAction;
import dev.blockbackup.engine.JobEvent.IoOperation;
import java.time.Duration;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.function.BooleanSupplier;

/**
 * QEMU's generic job (job.c and the job half of blockjob.c), the façade of its parts: the status
 * machine ({@link JobState} over {@link JobTables}), the pause counter and sleeps ({@link
 * JobPauses}), progress ({@link JobProgress}), event dispatch ({@link JobEvents}) and how a job
 * ends ({@link JobExit}). A subclass supplies {@link #run()} (the job body, QEMU's JobDriver.run)
 * and the finalization hooks.
 *
 * <p>Threads: {@link #run()} runs on its own thread (the given Executor's or a new one), and the
 * finalization (prepare, commit or abort, clean) follows on that same thread, so no verb ever
 * blocks on a hook. Verbs may be called from any thread. All state is guarded by one lock with one
 * condition; events are queued under the lock and delivered outside it, in order.
 *
 * <p>There are no job transactions yet: a job is its own transaction, so WAITING is only passed
 * through on the way to PENDING.
 */
public abstract class Job {

  private final String id;
  private final String type;
  private final boolean autoFinalize;
  private final boolean autoDismiss;

  private final JobEvents events;
  private final JobState state;
  private final JobPauses pauses;
  private final JobProgress progress = new JobProgress();
  private final JobExit exit;
  /** Set before the start, if the job is in a group (a grouped transaction). */
  private volatile JobTxn txn;
  /** Rate limit in bytes per second; 0 = unlimited. Written under the lock. */
  private volatile long speed;

  /**
   * @param id the job id (QAPI job-id): letters, digits, '-', '.', '_', starting with a letter
   * @param type the QAPI JobType, e.g. "backup"
   * @param autoFinalize QAPI auto-finalize: finalize without waiting for job-finalize
   * @param autoDismiss QAPI auto-dismiss: go from CONCLUDED to NULL without job-dismiss
   */
  protected Job(String id, String type, boolean autoFinalize, boolean autoDismiss) {
    Objects.requireNonNull(id, "id");
    if (!isWellFormedId(id)) {
      // job_create: id_wellformed()
      throw new JobException("Invalid job ID '" + id + "'");
    }
    this.id = id;
    this.type = Objects.requireNonNull(type, "type");
    this.autoFinalize = autoFinalize;
    this.autoDismiss = autoDismiss;
    this.events = new JobEvents(id);
    this.state = new JobState(id, events);
    this.pauses = new JobPauses(id, state);
    this.exit = new JobExit(this, state, events);
  }

  /** A job with auto-finalize and auto-dismiss on, QAPI's defaults. */
  protected Job(String id, String type) {
    this(id, type, true, true);
  }

  private static boolean isWellFormedId(String id) {
    if (id.isEmpty() || !Character.isLetter(id.charAt(0)) || id.charAt(0) > 0x7f) {
      return false;
    }
    for (int i = 1; i < id.length(); i++) {
      char c = id.charAt(i);
      boolean ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
          || c == '-' || c == '.' || c == '_';
      if (!ok) {
        return false;
      }
    }
    return true;
  }

  // ---------------------------------------------------------------- subclass contract

  /**
   * The job body (JobDriver.run). Call {@link #pausePoint()} often; it throws
   * {@link JobCancelledException} after a cancel. Returning normally means success unless the job
   * was cancelled meanwhile; throwing means failure, with the exception's message as the error.
   */
  protected abstract void run() throws Exception;

  /** JobDriver.prepare: last chance to fail before commit; throwing takes the abort path. */
  protected void prepare() throws Exception {}

  /** JobDriver.commit: the job succeeded. Called exactly once, or not at all. */
  protected void commit() {}

  /** JobDriver.abort: the job failed or was cancelled. Called exactly once, or not at all. */
  protected void abort() {}

  /** JobDriver.clean: called once after commit or abort. */
  protected void clean() {}

  /** The rate limit changed (block-job-set-speed); called outside the lock. */
  protected void onSpeedChanged(long bytesPerSecond) {}

  /**
   * Whether job-complete means something for this job type (JobDriver.complete exists). No job
   * type here completes (backup never does); package-private so that only this package's job
   * types, and the tests' mirror-like job, can say otherwise.
   */
  boolean canComplete() {
    return false;
  }

  /** JobDriver.complete: the user asked a READY job to finish; called outside the lock. */
  void onComplete() {}

  /**
   * JobDriver.change (block-job-change since QEMU 8.2, job-change in newer QEMU); called outside
   * the lock. A job type without options to change refuses, as QEMU does for a driver without
   * a change callback; backup has none.
   */
  protected void onChange() {
    throw new JobException("Job type does not support change");
  }

  // ---------------------------------------------------------------- queries

  public final String id() {
    return id;
  }

  /** The QAPI JobType, e.g. "backup". */
  public final String type() {
    return type;
  }

  public final JobStatus status() {
    return state.status;
  }

  public final boolean autoFinalize() {
    return autoFinalize;
  }

  public final boolean autoDismiss() {
    return autoDismiss;
  }

  /** query-jobs current-progress. */
  public final long currentProgress() {
    return progress.current();
  }

  /** query-jobs total-progress. */
  public final long totalProgress() {
    return progress.total();
  }

  /** The rate limit in bytes per second, 0 for none. */
  public final long speed() {
    return speed;
  }

  /** query-jobs error: why the job failed ("Operation canceled" after a cancel), or null. */
  public final String error() {
    return state.error;
  }

  /** query-block-jobs paused: the pause counter is above zero. */
  public final boolean isPaused() {
    return pauses.isPaused();
  }

  /** Whether a user pause (or an error with action=stop) holds the job. */
  public final boolean isUserPaused() {
    return pauses.isUserPaused();
  }

  public final boolean isCancelled() {
    return state.cancelled;
  }

  public final void addListener(JobListener listener) {
    events.addListener(listener);
  }

  public final void removeListener(JobListener listener) {
    events.removeListener(listener);
  }

  /** Completes with CONCLUDED or NULL once the job has concluded (after its final events). */
  public final CompletableFuture<JobStatus> concludedFuture() {
    return exit.concluded;
  }

  /** Waits until the job is CONCLUDED or NULL; false if the timeout passed first. */
  public final boolean awaitConcluded(Duration timeout) throws InterruptedException {
    // The future completes after the final events went out, so a caller that returns from here
    // has seen (through its listeners) how the job ended.
    try {
      exit.concluded.get(timeout.toNanos(), TimeUnit.NANOSECONDS);
      return true;
    } catch (TimeoutException e) {
      return false;
    } catch (ExecutionException e) {
      return true; // never completed exceptionally; concluded all the same
    }
  }

  /** Waits until the status is one of {@code wanted}; false if the timeout passed first. */
  final boolean awaitStatus(Duration timeout, JobStatus... wanted) throws InterruptedException {
    return state.awaitStatus(timeout, wanted);
  }

  /** The status machine, for this package's job types and tests. */
  final JobState state() {
    return state;
  }

  /** The pause counter: a drain pauses the job through it (job_pause / job_resume). */
  final JobPauses pauses() {
    return pauses;
  }

  /** The event queue, for this package's job types and tests. */
  final JobEvents events() {
    return events;
  }

  // ---------------------------------------------------------------- for the body

  /** progress_work_done: {@code done} more bytes were processed. */
  protected final void progressUpdate(long done) {
    progress.workDone(done);
  }

  /** progress_set_remaining: {@code remaining} bytes are left, so total = current + remaining. */
  protected final void progressSetRemaining(long remaining) {
    progress.setRemaining(remaining);
  }

  /**
   * A pause point (job_pause_point): blocks while the job is paused, moving RUNNING -> PAUSED
   * (READY -> STANDBY) and back; throws {@link JobCancelledException} if the job was cancelled.
   * Call only from the job body.
   */
  protected final void pausePoint() {
    pauses.pausePoint();
  }

  /**
   * job_sleep_ns: waits up to {@code nanos}, or less when the job is cancelled, asked to pause,
   * given a new speed or {@linkplain #wake() woken}. Call {@link #pausePoint()} afterwards.
   */
  protected final void sleep(long nanos) {
    pauses.sleep(nanos);
  }

  /**
   * Waits, as {@link #sleep} does, until {@code ready} holds: whoever makes it true must then call
   * {@link #wake()}. Returns early, like sleep, on a cancel, a pause or a new speed.
   */
  protected final void sleepUntil(BooleanSupplier ready, long nanos) {
    pauses.sleepUntil(ready, nanos);
  }

  /** job_enter: ends a {@link #sleep} early, e.g. because something the body waits for happened. */
  protected final void wake() {
    pauses.wake();
  }

  /**
   * block_job_error_action: reports a background I/O error with BLOCK_JOB_ERROR; with
   * action=stop the job is also user-paused (it stops at its next pause point and needs
   * job-resume).
   */
  protected final void blockJobError(IoOperation operation, ErrorAction action) {
    state.lock.lock();
    try {
      if (action == ErrorAction.stop) {
        pauses.pauseByUser();
      }
      events.queue(new BlockJobError(id, operation, action));
    } finally {
      state.unlockAndFlush();
    }
  }

  // ---------------------------------------------------------------- lifecycle

  /** Called by {@link JobManager#register}: UNDEFINED -> CREATED (job_create). */
  final void attach(JobManager owner) {
    state.lock.lock();
    try {
      if (events.manager() != null || state.status != JobStatus.undefined) {
        throw new IllegalStateException("job '" + id + "' is already registered");
      }
      events.setManager(owner);
      state.transition(JobStatus.created);
    } finally {
      state.unlockAndFlush();
    }
  }

  /** Starts the body on a new thread named after the job (job_start): CREATED -> RUNNING. */
  public final void start() {
    start(r -> {
      Thread t = new Thread(r, "job-" + id);
      t.start();
    });
  }

  /** Starts the body on {@code executor} (job_start): CREATED -> RUNNING. */
  public final void start(Executor executor) {
    Objects.requireNonNull(executor, "executor");
    state.lock.lock();
    try {
      if (state.status != JobStatus.created || state.started || state.cancelled) {
        throw new IllegalStateException("job '" + id + "' cannot start in state '"
            + state.status.qapiName() + "'" + (state.cancelled ? " (cancelled)" : ""));
      }
      state.started = true;
      pauses.resume(); // job_create's initial pause is dropped by job_start
      state.transition(JobStatus.running);
    } finally {
      state.unlockAndFlush();
    }
    executor.execute(exit::runJob);
  }

  // ---------------------------------------------------------------- user verbs

  /** job-pause: the job pauses at its next pause point. Pausing twice is an error. */
  public final void pause() {
    state.lock.lock();
    try {
      state.checkVerb(JobVerb.pause);
      if (!pauses.pauseByUser()) {
        throw new JobException("Job is already paused");
      }
    } finally {
      state.unlockAndFlush();
    }
  }

  /** job-resume: only for a user-paused job (job_user_resume checks that before the verb). */
  public final void resume() {
    state.lock.lock();
    try {
      if (!pauses.isUserPaused() || !pauses.isPaused()) {
        throw new JobException("Can't resume a job that was not paused");
      }
      state.checkVerb(JobVerb.resume);
      pauses.resumeByUser();
    } finally {
      state.unlockAndFlush();
    }
  }

  /**
   * job-cancel: backup always behaves as force-cancel; a user-paused job is resumed so it can
   * abort. A job that never started is aborted right here, on the caller's thread
   * (CREATED -> ABORTING -> CONCLUDED -> NULL, without BLOCK_JOB_* events).
   */
  public final void cancel() {
    boolean abortHere;
    state.lock.lock();
    try {
      state.checkVerb(JobVerb.cancel);
      pauses.resumeByUser();
      state.cancelled = true;
      abortHere = !state.started;
      if (abortHere) {
        exit.beginAbort();
      }
      state.changed.signalAll();
    } finally {
      state.unlockAndFlush();
    }
    if (abortHere) {
      exit.finishAbort();
    }
  }

  /** The group this job succeeds or fails with, or null (see {@link JobTxn}). */
  final JobTxn txn() {
    return txn;
  }

  /** Puts this job, not started yet, in {@code group}. */
  final void joinTxn(JobTxn group) {
    state.lock.lock();
    try {
      if (state.started || txn != null) {
        throw new IllegalStateException("job '" + id + "' has started or is in a group already");
      }
      txn = group;
      group.add(this);
    } finally {
      state.lock.unlock();
    }
  }

  /** Cancels this job because its group aborted; a job already ending needs nothing. */
  final void cancelForTxn() {
    try {
      cancel();
    } catch (JobException ended) {
      // aborting or concluded already: it is ending as the group needs
    }
  }

  /** block-job-set-speed: the rate limit in bytes per second, 0 for none. */
  public final void setSpeed(long bytesPerSecond) {
    state.lock.lock();
    try {
      state.checkVerb(JobVerb.set_speed);
      if (bytesPerSecond < 0) {
        // QERR_INVALID_PARAMETER_VALUE, as block_job_set_speed says it
        throw new JobException("Parameter 'speed' expects a non-negative value");
      }
      speed = bytesPerSecond;
      pauses.wake(); // a sleeping rate-limited body recomputes its delay (block_job_set_speed)
    } finally {
      state.unlockAndFlush();
    }
    onSpeedChanged(bytesPerSecond);
  }

  /** job-change (QEMU 8.2+): passes the change to the job type. */
  public final void change() {
    state.lock.lock();
    try {
      state.checkVerb(JobVerb.change);
    } finally {
      state.unlockAndFlush();
    }
    onChange();
  }

  /** job-complete: only READY/STANDBY jobs of a type that can complete; backup never can. */
  public final void complete() {
    state.lock.lock();
    try {
      state.checkVerb(JobVerb.complete);
      if (state.cancelled || !canComplete()) {
        throw new JobException("The active block job '" + id + "' cannot be completed");
      }
    } finally {
      state.unlockAndFlush();
    }
    onComplete();
  }

  /**
   * job-finalize: only in PENDING; the job thread then commits (or aborts if prepare fails).
   * Not named {@code finalize()}: that would override {@link Object}'s GC finalizer.
   */
  public final void finalizeJob() {
    state.lock.lock();
    try {
      state.checkVerb(JobVerb.finalize);
      state.finalizeRequested = true;
      state.changed.signalAll();
    } finally {
      state.unlockAndFlush();
    }
  }

  /** job-dismiss: only in CONCLUDED; the job goes to NULL and leaves its manager. */
  public final void dismiss() {
    state.lock.lock();
    try {
      state.checkVerb(JobVerb.dismiss);
      exit.dismiss();
    } finally {
      state.unlockAndFlush();
    }
  }

  @Override
  public String toString() {
    return type + " job '" + id + "' (" + status().qapiName() + ")";
  }
}
