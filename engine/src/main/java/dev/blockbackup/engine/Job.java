package dev.blockbackup.engine;

import dev.blockbackup.engine.JobEvent.BlockJobCancelled;
import dev.blockbackup.engine.JobEvent.BlockJobCompleted;
import dev.blockbackup.engine.JobEvent.BlockJobError;
import dev.blockbackup.engine.JobEvent.BlockJobPending;
import dev.blockbackup.engine.JobEvent.BlockJobReady;
import dev.blockbackup.engine.JobEvent.ErrorAction;
import dev.blockbackup.engine.JobEvent.IoOperation;
import dev.blockbackup.engine.JobEvent.JobStatusChange;
import java.time.Duration;
import java.util.Objects;
import java.util.Queue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.Executor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.Condition;
import java.util.concurrent.locks.ReentrantLock;

/**
 * QEMU's generic job (job.c and the job half of blockjob.c): the status machine of
 * {@link JobTables}, the user verbs, the pause counter and the QMP events. A subclass supplies
 * {@link #run()} (the job body, QEMU's JobDriver.run) and the finalization hooks.
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

  private static final System.Logger LOG = System.getLogger(Job.class.getName());

  /** strerror(ECANCELED) on Linux: the error a cancelled job reports in query-jobs. */
  static final String ECANCELED_MESSAGE = "Operation canceled";

  private final String id;
  private final String type;
  private final boolean autoFinalize;
  private final boolean autoDismiss;

  private final ReentrantLock lock = new ReentrantLock();
  /** Signalled on every change of the fields below. */
  private final Condition changed = lock.newCondition();

  // The fields below are written only under the lock. Those a getter returns are volatile, so a
  // getter reads them without taking the lock (one field, one consistent value).

  /** Current status. */
  private volatile JobStatus status = JobStatus.undefined;
  /** QEMU's pause_count: internal pauses (drains) plus one user pause; 1 until start(). */
  private volatile int pauseCount = 1;
  /** A user pause (job-pause, or an error with action=stop) is counted in pauseCount. */
  private volatile boolean userPaused;
  /** Cancel was requested (backup always force-cancels). */
  private volatile boolean cancelled;
  /** start() was called: the body ran or is running. */
  private boolean started;
  /** job-finalize arrived while PENDING with auto-finalize=false. */
  private boolean finalizeRequested;
  /** Why the job failed (QEMU's job->err), or null. */
  private volatile String error;
  /** Progress: bytes done and bytes expected in total (QEMU's ProgressMeter). */
  private volatile long progressCurrent;
  private volatile long progressTotal;
  /** Counts {@link #wake()} calls, so a sleeper notices one that came while it was not waiting. */
  private long wakeups;
  /** Rate limit in bytes per second; 0 = unlimited. */
  private volatile long speed;
  /** The manager that lists this job, set once at registration; read when delivering events. */
  private volatile JobManager manager;

  private final CopyOnWriteArrayList<JobListener> listeners = new CopyOnWriteArrayList<>();
  /** Events queued under lock, delivered by flushEvents() outside it. */
  private final Queue<JobEvent> pendingEvents = new ConcurrentLinkedQueue<>();
  /** Held by the thread delivering events, so they go out one at a time and in order. */
  private final ReentrantLock dispatchLock = new ReentrantLock();
  private final CompletableFuture<JobStatus> concluded = new CompletableFuture<>();

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

  /** Whether job-complete means something for this job type (JobDriver.complete exists). */
  protected boolean canComplete() {
    return false;
  }

  /** JobDriver.complete: the user asked a READY job to finish; called outside the lock. */
  protected void onComplete() {}

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
    return status;
  }

  public final boolean autoFinalize() {
    return autoFinalize;
  }

  public final boolean autoDismiss() {
    return autoDismiss;
  }

  /** query-jobs current-progress. */
  public final long currentProgress() {
    return progressCurrent;
  }

  /** query-jobs total-progress. */
  public final long totalProgress() {
    return progressTotal;
  }

  /** The rate limit in bytes per second, 0 for none. */
  public final long speed() {
    return speed;
  }

  /** query-jobs error: why the job failed ("Operation canceled" after a cancel), or null. */
  public final String error() {
    return error;
  }

  /** query-block-jobs paused: the pause counter is above zero. */
  public final boolean isPaused() {
    return pauseCount > 0;
  }

  /** Whether a user pause (or an error with action=stop) holds the job. */
  public final boolean isUserPaused() {
    return userPaused;
  }

  public final boolean isCancelled() {
    return cancelled;
  }

  public final void addListener(JobListener listener) {
    listeners.add(Objects.requireNonNull(listener, "listener"));
  }

  public final void removeListener(JobListener listener) {
    listeners.remove(listener);
  }

  /** Completes with CONCLUDED or NULL once the job has concluded (after its final events). */
  public final CompletableFuture<JobStatus> concludedFuture() {
    return concluded;
  }

  /** Waits until the job is CONCLUDED or NULL; false if the timeout passed first. */
  public final boolean awaitConcluded(Duration timeout) throws InterruptedException {
    // The future completes after the final events went out, so a caller that returns from here
    // has seen (through its listeners) how the job ended.
    try {
      concluded.get(timeout.toNanos(), java.util.concurrent.TimeUnit.NANOSECONDS);
      return true;
    } catch (java.util.concurrent.TimeoutException e) {
      return false;
    } catch (java.util.concurrent.ExecutionException e) {
      return true; // never completed exceptionally; concluded all the same
    }
  }

  /** Waits until the status is one of {@code wanted}; false if the timeout passed first. */
  final boolean awaitStatus(Duration timeout, JobStatus... wanted) throws InterruptedException {
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

  // ---------------------------------------------------------------- progress (QEMU's progress API)

  /** progress_work_done: {@code done} more bytes were processed. */
  protected final void progressUpdate(long done) {
    checkNonNegative("done", done);
    lock.lock();
    try {
      progressCurrent += done;
    } finally {
      lock.unlock();
    }
  }

  /** progress_set_remaining: {@code remaining} bytes are left, so total = current + remaining. */
  protected final void progressSetRemaining(long remaining) {
    checkNonNegative("remaining", remaining);
    lock.lock();
    try {
      progressTotal = progressCurrent + remaining;
    } finally {
      lock.unlock();
    }
  }

  /** progress_increase_remaining: {@code delta} more bytes are expected. */
  protected final void progressIncreaseRemaining(long delta) {
    checkNonNegative("delta", delta);
    lock.lock();
    try {
      progressTotal += delta;
    } finally {
      lock.unlock();
    }
  }

  private static void checkNonNegative(String what, long value) {
    if (value < 0) {
      throw new IllegalArgumentException(what + " (" + value + ") must not be negative");
    }
  }

  // ---------------------------------------------------------------- lifecycle

  /** Called by {@link JobManager#register}: UNDEFINED -> CREATED (job_create). */
  final void attach(JobManager owner) {
    lock.lock();
    try {
      if (manager != null || status != JobStatus.undefined) {
        throw new IllegalStateException("job '" + id + "' is already registered");
      }
      manager = owner;
      transition(JobStatus.created);
    } finally {
      unlockAndFlush();
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
    lock.lock();
    try {
      if (status != JobStatus.created || started || cancelled) {
        throw new IllegalStateException("job '" + id + "' cannot start in state '"
            + status.qapiName() + "'" + (cancelled ? " (cancelled)" : ""));
      }
      started = true;
      pauseCount--; // job_create's initial pause is dropped by job_start
      transition(JobStatus.running);
    } finally {
      unlockAndFlush();
    }
    executor.execute(this::jobMain);
  }

  /**
   * A pause point (job_pause_point): blocks while the job is paused, moving RUNNING -> PAUSED
   * (READY -> STANDBY) and back; throws {@link JobCancelledException} if the job was cancelled.
   * Call only from the job body.
   */
  protected final void pausePoint() {
    lock.lock();
    try {
      if (!cancelled && pauseCount > 0
          && (status == JobStatus.running || status == JobStatus.ready)) {
        JobStatus resumeTo = status;
        transition(resumeTo == JobStatus.ready ? JobStatus.standby : JobStatus.paused);
        flushOutsideLock();
        while (pauseCount > 0 && !cancelled) {
          changed.awaitUninterruptibly();
        }
        transition(resumeTo);
      }
      if (cancelled) {
        throw new JobCancelledException(id);
      }
    } finally {
      unlockAndFlush();
    }
  }

  /**
   * job_sleep_ns: waits up to {@code nanos}, or less when the job is cancelled, asked to pause,
   * given a new speed or {@linkplain #wake() woken}. Call {@link #pausePoint()} afterwards.
   */
  protected final void sleep(long nanos) {
    lock.lock();
    try {
      long left = nanos;
      long seen = wakeups;
      while (left > 0 && !cancelled && pauseCount == 0 && seen == wakeups) {
        try {
          left = changed.awaitNanos(left);
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
          return;
        }
      }
    } finally {
      lock.unlock();
    }
  }

  /** job_enter: ends a {@link #sleep} early, e.g. because something the body waits for happened. */
  protected final void wake() {
    lock.lock();
    try {
      wakeups++;
      changed.signalAll();
    } finally {
      lock.unlock();
    }
  }

  /** job_transition_to_ready: RUNNING -> READY and BLOCK_JOB_READY; for jobs that complete. */
  protected final void transitionToReady() {
    lock.lock();
    try {
      transition(JobStatus.ready);
      pendingEvents.add(new BlockJobReady(type, id, progressTotal, progressCurrent, speed));
    } finally {
      unlockAndFlush();
    }
  }

  /**
   * block_job_error_action: reports a background I/O error with BLOCK_JOB_ERROR; with
   * action=stop the job is also user-paused (it stops at its next pause point and needs
   * job-resume).
   */
  protected final void blockJobError(IoOperation operation, ErrorAction action) {
    lock.lock();
    try {
      if (action == ErrorAction.stop && !userPaused) {
        userPaused = true;
        pauseCount++;
        changed.signalAll();
      }
      pendingEvents.add(new BlockJobError(id, operation, action));
    } finally {
      unlockAndFlush();
    }
  }

  /** Internal pause for drains (job_pause): counts, and the body stops at its next pause point. */
  final void pauseInternal() {
    lock.lock();
    try {
      pauseCount++;
      changed.signalAll();
    } finally {
      lock.unlock();
    }
  }

  /** Internal resume for drains (job_resume): the body continues once the count reaches zero. */
  final void resumeInternal() {
    lock.lock();
    try {
      if (pauseCount <= 0) {
        throw new IllegalStateException("job '" + id + "' is not paused");
      }
      pauseCount--;
      changed.signalAll();
    } finally {
      lock.unlock();
    }
  }

  /** The job thread: run the body, then finalize like job_exit / job_completed. */
  private void jobMain() {
    String failure = null;
    try {
      run();
    } catch (JobCancelledException e) {
      // the cancel flag says it all
    } catch (Throwable t) {
      failure = t.getMessage() != null ? t.getMessage() : t.toString();
      if (t instanceof Error && !(t instanceof AssertionError)) {
        LOG.log(System.Logger.Level.ERROR, "job '" + id + "' failed", t);
      }
    }
    boolean success;
    lock.lock();
    try {
      if (failure != null && error == null) {
        error = failure;
      }
      success = error == null && !cancelled;
      if (success) {
        // job_completed_txn_success: the whole (one-job) transaction has converged.
        transition(JobStatus.waiting);
        transition(JobStatus.pending);
        if (!autoFinalize) {
          pendingEvents.add(new BlockJobPending(type, id));
          flushOutsideLock();
          while (!finalizeRequested && !cancelled) {
            changed.awaitUninterruptibly();
          }
        }
        success = !cancelled;
      }
    } finally {
      unlockAndFlush();
    }
    if (success) {
      try {
        prepare();
      } catch (Throwable t) {
        lock.lock();
        try {
          error = t.getMessage() != null ? t.getMessage() : t.toString();
        } finally {
          lock.unlock();
        }
        success = false;
      }
    }
    if (success) {
      lock.lock();
      try {
        success = !cancelled; // a cancel during prepare still aborts
      } finally {
        lock.unlock();
      }
    }
    if (success) {
      finalizeSuccess();
    } else {
      beginAbort();
      finishAbort();
    }
  }

  private void finalizeSuccess() {
    runHook("commit", this::commit);
    runHook("clean", this::clean);
    lock.lock();
    try {
      pendingEvents.add(new BlockJobCompleted(type, id, progressTotal, progressCurrent, speed, null));
      conclude();
    } finally {
      unlockAndFlush();
    }
    concluded.complete(status());
  }

  /** job_update_rc with an error: -> ABORTING. */
  private void beginAbort() {
    lock.lock();
    try {
      beginAbortLocked();
    } finally {
      unlockAndFlush();
    }
  }

  private void beginAbortLocked() {
    if (error == null) {
      error = ECANCELED_MESSAGE;
    }
    transition(JobStatus.aborting);
  }

  /** job_finalize_single on the abort side: abort and clean hooks, event, CONCLUDED. */
  private void finishAbort() {
    runHook("abort", this::abort);
    runHook("clean", this::clean);
    lock.lock();
    try {
      // Only a job that actually started reports how it ended.
      if (started) {
        if (cancelled) {
          pendingEvents.add(new BlockJobCancelled(type, id, progressTotal, progressCurrent, speed));
        } else {
          pendingEvents.add(new BlockJobCompleted(type, id, progressTotal, progressCurrent, speed, error));
        }
      }
      conclude();
    } finally {
      unlockAndFlush();
    }
    concluded.complete(status());
  }

  /** job_conclude: -> CONCLUDED, then NULL if auto-dismiss or never started. */
  private void conclude() {
    transition(JobStatus.concluded);
    if (autoDismiss || !started) {
      dismissLocked();
    }
  }

  private void dismissLocked() {
    transition(JobStatus.null_);
    if (manager != null) {
      manager.remove(this);
    }
  }

  private void runHook(String name, Runnable hook) {
    try {
      hook.run();
    } catch (RuntimeException | AssertionError e) {
      // QEMU's hooks cannot fail; a throwing hook is a bug in the subclass.
      LOG.log(System.Logger.Level.ERROR, "job '" + id + "': " + name + " hook threw", e);
    }
  }

  // ---------------------------------------------------------------- user verbs

  /** job-pause: the job pauses at its next pause point. Pausing twice is an error. */
  public final void pause() {
    lock.lock();
    try {
      checkVerb(JobVerb.pause);
      if (userPaused) {
        throw new JobException("Job is already paused");
      }
      userPaused = true;
      pauseCount++;
      changed.signalAll();
    } finally {
      unlockAndFlush();
    }
  }

  /** job-resume: only for a user-paused job (job_user_resume checks that before the verb). */
  public final void resume() {
    lock.lock();
    try {
      if (!userPaused || pauseCount <= 0) {
        throw new JobException("Can't resume a job that was not paused");
      }
      checkVerb(JobVerb.resume);
      userPaused = false;
      pauseCount--;
      changed.signalAll();
    } finally {
      unlockAndFlush();
    }
  }

  /**
   * job-cancel: backup always behaves as force-cancel; a user-paused job is resumed so it can
   * abort. A job that never started is aborted right here, on the caller's thread
   * (CREATED -> ABORTING -> CONCLUDED -> NULL, without BLOCK_JOB_* events).
   */
  public final void cancel() {
    boolean abortHere;
    lock.lock();
    try {
      checkVerb(JobVerb.cancel);
      if (userPaused) {
        userPaused = false;
        pauseCount--;
      }
      cancelled = true;
      abortHere = !started;
      if (abortHere) {
        beginAbortLocked();
      }
      changed.signalAll();
    } finally {
      unlockAndFlush();
    }
    if (abortHere) {
      finishAbort();
    }
  }

  /** block-job-set-speed: the rate limit in bytes per second, 0 for none. */
  public final void setSpeed(long bytesPerSecond) {
    lock.lock();
    try {
      checkVerb(JobVerb.set_speed);
      if (bytesPerSecond < 0) {
        // QERR_INVALID_PARAMETER_VALUE, as block_job_set_speed says it
        throw new JobException("Parameter 'speed' expects a non-negative value");
      }
      speed = bytesPerSecond;
      wakeups++; // a sleeping rate-limited body recomputes its delay (block_job_set_speed)
      changed.signalAll();
    } finally {
      unlockAndFlush();
    }
    onSpeedChanged(bytesPerSecond);
  }

  /** job-change (QEMU 8.2+): passes the change to the job type. */
  public final void change() {
    lock.lock();
    try {
      checkVerb(JobVerb.change);
    } finally {
      unlockAndFlush();
    }
    onChange();
  }

  /** job-complete: only READY/STANDBY jobs of a type that can complete; backup never can. */
  public final void complete() {
    lock.lock();
    try {
      checkVerb(JobVerb.complete);
      if (cancelled || !canComplete()) {
        throw new JobException("The active block job '" + id + "' cannot be completed");
      }
    } finally {
      unlockAndFlush();
    }
    onComplete();
  }

  /**
   * job-finalize: only in PENDING; the job thread then commits (or aborts if prepare fails).
   * Not named {@code finalize()}: that would override {@link Object}'s GC finalizer.
   */
  public final void finalizeJob() {
    lock.lock();
    try {
      checkVerb(JobVerb.finalize);
      finalizeRequested = true;
      changed.signalAll();
    } finally {
      unlockAndFlush();
    }
  }

  /** job-dismiss: only in CONCLUDED; the job goes to NULL and leaves its manager. */
  public final void dismiss() {
    lock.lock();
    try {
      checkVerb(JobVerb.dismiss);
      dismissLocked();
    } finally {
      unlockAndFlush();
    }
  }

  /** job_apply_verb: refuses a verb the status does not accept. Caller holds the lock. */
  private void checkVerb(JobVerb verb) {
    if (!JobTables.verbAllowed(verb, status)) {
      throw JobException.verbRefused(id, status, verb);
    }
  }

  // ---------------------------------------------------------------- transitions and events

  /** job_state_transition: an illegal transition is a bug. Caller holds the lock. */
  private void transition(JobStatus to) {
    if (!JobTables.transitionAllowed(status, to)) {
      throw new IllegalStateException("job '" + id + "': illegal transition "
          + status.qapiName() + " -> " + to.qapiName());
    }
    status = to;
    pendingEvents.add(new JobStatusChange(id, to));
    changed.signalAll();
  }

  private void unlockAndFlush() {
    lock.unlock();
    if (!lock.isHeldByCurrentThread()) {
      flushEvents();
    }
  }

  /** Delivers queued events while the lock is held once by this thread; re-takes it after. */
  private void flushOutsideLock() {
    int holds = lock.getHoldCount();
    for (int i = 0; i < holds; i++) {
      lock.unlock();
    }
    try {
      flushEvents();
    } finally {
      for (int i = 0; i < holds; i++) {
        lock.lock();
      }
    }
  }

  /**
   * Delivers queued events in order. Whoever holds dispatchLock delivers everyone's events; a
   * thread that finds it taken leaves its events to the holder, which re-checks the queue after
   * letting go. Events a listener causes are delivered after the current event, never nested.
   */
  private void flushEvents() {
    if (dispatchLock.isHeldByCurrentThread()) {
      // A listener called a verb: its events wait until every listener has seen this one.
      return;
    }
    while (!pendingEvents.isEmpty()) {
      if (!dispatchLock.tryLock()) {
        return;
      }
      try {
        JobEvent e;
        while ((e = pendingEvents.poll()) != null) {
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
      LOG.log(System.Logger.Level.WARNING, "job '" + id + "': listener threw on " + e.name(), ex);
    }
  }

  @Override
  public String toString() {
    return type + " job '" + id + "' (" + status().qapiName() + ")";
  }
}
