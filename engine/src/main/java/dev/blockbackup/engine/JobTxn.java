package dev.blockbackup.engine;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.locks.Condition;
import java.util.concurrent.locks.ReentrantLock;

/**
 * A group of jobs that succeed or fail together (job.c's JobTxn, a transaction with
 * completion-mode grouped). A job whose body succeeded waits in WAITING until every job of the
 * group has; then each prepares, and none commits until all have prepared. The first failure or
 * cancel of any of them aborts the group: the others are cancelled, wherever they are, and each
 * runs its own abort.
 */
final class JobTxn {

  private final ReentrantLock lock = new ReentrantLock();
  private final Condition changed = lock.newCondition();
  private final List<Job> jobs = new ArrayList<>();
  private int completed;
  private int prepared;
  private boolean aborted;

  void add(Job job) {
    lock.lock();
    try {
      jobs.add(job);
    } finally {
      lock.unlock();
    }
  }

  /** A job's body succeeded: waits for the others' (job_completed_txn_success). False if the group aborted. */
  boolean awaitCompleted() {
    return arriveAndAwait(true);
  }

  /** A job prepared: waits until all have. False if the group aborted. */
  boolean awaitPrepared() {
    return arriveAndAwait(false);
  }

  private boolean arriveAndAwait(boolean completion) {
    lock.lock();
    try {
      if (completion) {
        completed++;
      } else {
        prepared++;
      }
      changed.signalAll();
      while (!aborted && (completion ? completed : prepared) < jobs.size()) {
        changed.awaitUninterruptibly();
      }
      return !aborted;
    } finally {
      lock.unlock();
    }
  }

  /** {@code failed} failed or was cancelled (job_completed_txn_abort): cancels every other job once. */
  void abort(Job failed) {
    List<Job> others;
    lock.lock();
    try {
      if (aborted) {
        return;
      }
      aborted = true;
      changed.signalAll();
      others = new ArrayList<>(jobs);
    } finally {
      lock.unlock();
    }
    for (Job j : others) {
      if (j != failed) {
        j.cancelForTxn();
      }
    }
  }
}
