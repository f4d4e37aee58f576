package dev.blockbackup.engine;

import dev.blockbackup.engine.JobEvent.BlockJobCancelled;
import dev.blockbackup.engine.JobEvent.BlockJobCompleted;
import dev.blockbackup.engine.JobEvent.BlockJobPending;
import java.util.concurrent.CompletableFuture;

/**
 * How a job ends (job.c's job_exit, job_completed, job_finalize_single and job_conclude): after
 * the body, a successful job waits in PENDING for job-finalize unless auto-finalize, runs prepare
 * then commit; a failed or cancelled one goes ABORTING and runs abort. Either way clean follows,
 * the final BLOCK_JOB_* event goes out, and the job concludes (and goes NULL with auto-dismiss).
 * Everything here runs on the job's own thread, except the abort of a job cancelled before it
 * started, which runs on the cancelling thread.
 */
final class JobExit {

  private static final System.Logger LOG = System.getLogger(Job.class.getName());

  /** strerror(ECANCELED) on Linux: the error a cancelled job reports in query-jobs. */
  static final String ECANCELED_MESSAGE = "Operation canceled";

  private final Job job;
  private final JobState state;
  private final JobEvents events;
  /** Completes with CONCLUDED or NULL once the final events went out. */
  final CompletableFuture<JobStatus> concluded = new CompletableFuture<>();

  JobExit(Job job, JobState state, JobEvents events) {
    this.job = job;
    this.state = state;
    this.events = events;
  }

  /** The job thread: run the body, then finalize. */
  void runJob() {
    String failure = null;
    try {
      job.run();
    } catch (JobCancelledException e) {
      // the cancel flag says it all
    } catch (Throwable t) {
      failure = messageOf(t);
      if (t instanceof Error && !(t instanceof AssertionError)) {
        LOG.log(System.Logger.Level.ERROR, "job '" + job.id() + "' failed", t);
      }
    }
    boolean success;
    JobTxn txn = job.txn();
    state.lock.lock();
    try {
      if (failure != null && state.error == null) {
        state.error = failure;
      }
      success = state.error == null && !state.cancelled;
      if (success) {
        state.transition(JobStatus.waiting);
      }
    } finally {
      state.unlockAndFlush();
    }
    if (txn != null) {
      // the group's other jobs are waited for, or cancelled, without this job's lock held
      if (success) {
        success = txn.awaitCompleted();
      } else {
        txn.abort(job);
      }
    }
    state.lock.lock();
    try {
      success = success && state.error == null && !state.cancelled;
      if (success) {
        // job_completed_txn_success: the whole transaction has converged.
        state.transition(JobStatus.pending);
        if (!job.autoFinalize()) {
          events.queue(new BlockJobPending(job.type(), job.id()));
          state.flushOutsideLock();
          while (!state.finalizeRequested && !state.cancelled) {
            state.changed.awaitUninterruptibly();
          }
        }
        success = !state.cancelled;
      }
    } finally {
      state.unlockAndFlush();
    }
    if (success) {
      try {
        job.prepare();
      } catch (Throwable t) {
        state.lock.lock();
        try {
          state.error = messageOf(t);
        } finally {
          state.lock.unlock();
        }
        success = false;
      }
    }
    if (txn != null) {
      // no job of the group commits before all have prepared
      if (success) {
        success = txn.awaitPrepared();
      } else {
        txn.abort(job);
      }
    }
    if (success) {
      state.lock.lock();
      try {
        success = !state.cancelled; // a cancel during prepare still aborts
      } finally {
        state.lock.unlock();
      }
    }
    if (success) {
      finalizeSuccess();
    } else {
      state.lock.lock();
      try {
        beginAbort();
      } finally {
        state.unlockAndFlush();
      }
      finishAbort();
    }
  }

  private static String messageOf(Throwable t) {
    return t.getMessage() != null ? t.getMessage() : t.toString();
  }

  private void finalizeSuccess() {
    runHook("commit", job::commit);
    runHook("clean", job::clean);
    state.lock.lock();
    try {
      events.queue(new BlockJobCompleted(job.type(), job.id(), job.totalProgress(), job.currentProgress(),
          job.speed(), null));
      conclude();
    } finally {
      state.unlockAndFlush();
    }
    concluded.complete(state.status);
  }

  /** job_update_rc with an error: -> ABORTING. Caller holds the lock. */
  void beginAbort() {
    if (state.error == null) {
      state.error = ECANCELED_MESSAGE;
    }
    state.transition(JobStatus.aborting);
  }

  /** job_finalize_single on the abort side: abort and clean hooks, event, CONCLUDED. */
  void finishAbort() {
    runHook("abort", job::abort);
    runHook("clean", job::clean);
    state.lock.lock();
    try {
      // Only a job that actually started reports how it ended.
      if (state.started) {
        if (state.cancelled) {
          events.queue(new BlockJobCancelled(job.type(), job.id(), job.totalProgress(), job.currentProgress(),
              job.speed()));
        } else {
          events.queue(new BlockJobCompleted(job.type(), job.id(), job.totalProgress(), job.currentProgress(),
              job.speed(), state.error));
        }
      }
      conclude();
    } finally {
      state.unlockAndFlush();
    }
    concluded.complete(state.status);
  }

  /** job_conclude: -> CONCLUDED, then NULL if auto-dismiss or never started. Caller holds the lock. */
  private void conclude() {
    state.transition(JobStatus.concluded);
    if (job.autoDismiss() || !state.started) {
      dismiss();
    }
  }

  /** job_dismiss: -> NULL, and the job leaves its manager. Caller holds the lock. */
  void dismiss() {
    state.transition(JobStatus.null_);
    JobManager manager = events.manager();
    if (manager != null) {
      manager.remove(job);
    }
  }

  private void runHook(String name, Runnable hook) {
    try {
      hook.run();
    } catch (RuntimeException | AssertionError e) {
      // QEMU's hooks cannot fail; a throwing hook is a bug in the subclass.
      LOG.log(System.Logger.Level.ERROR, "job '" + job.id() + "': " + name + " hook threw", e);
    }
  }
}
