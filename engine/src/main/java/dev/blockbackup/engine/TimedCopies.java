package dev.blockbackup.engine;

import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.Semaphore;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * Copy-before-write copies under cbw-timeout: the guest write waits for its copy at most the
 * timeout, while the copy itself goes on (QEMU lets a timed-out block-copy call finish in the
 * background). The copies run on at most {@link #THREADS} threads, so a target that stops answering
 * costs that many stuck threads and no more: a guest write waits for a free thread within its own
 * timeout, and once every thread is stuck in a copy that has already outlived its timeout, later
 * writes time out at once instead of queueing behind copies that show no sign of ending.
 */
final class TimedCopies {

  /** A copy that may fail. */
  interface Copy {
    void run() throws BlockIOException;
  }

  /** Copy threads per filter: guest writes rarely need more than a few copies at once. */
  static final int THREADS = 4;

  private final ThreadPoolExecutor pool;
  /** One permit per thread: a copy is handed to the pool only with a permit, so nothing queues. */
  private final Semaphore threads = new Semaphore(THREADS);
  /** Copies still running whose guest write has timed out (may lag by one while one ends). */
  private final AtomicInteger abandoned = new AtomicInteger();

  TimedCopies(String name) {
    this.pool = new ThreadPoolExecutor(THREADS, THREADS, 10, TimeUnit.SECONDS, new LinkedBlockingQueue<>(),
        r -> {
          Thread t = new Thread(r, "cbw-timed-copy-" + name);
          t.setDaemon(true);
          return t;
        });
    pool.allowCoreThreadTimeOut(true);
  }

  /** Runs {@code copy}, waiting for it at most {@code timeoutNanos} in all. */
  void run(Copy copy, long timeoutNanos, String what) throws BlockIOException {
    long deadline = System.nanoTime() + timeoutNanos;
    if (abandoned.get() >= THREADS) {
      throw timedOut(what, "every copy thread is still in a copy that outlived cbw-timeout");
    }
    try {
      if (!threads.tryAcquire(timeoutNanos, TimeUnit.NANOSECONDS)) {
        throw timedOut(what, "no copy thread became free");
      }
    } catch (InterruptedException e) {
      throw interrupted();
    }
    Attempt attempt = new Attempt(copy);
    try {
      pool.execute(attempt);
    } catch (RejectedExecutionException e) {
      threads.release();
      throw new BlockIOException(BlockError.ESHUTDOWN, "copy-before-write has ended");
    }
    try {
      attempt.done.get(Math.max(0, deadline - System.nanoTime()), TimeUnit.NANOSECONDS);
    } catch (TimeoutException e) {
      attempt.abandon();
      throw timedOut(what, "the copy did not end");
    } catch (ExecutionException e) {
      if (e.getCause() instanceof BlockIOException b) {
        throw b;
      }
      throw new BlockIOException(BlockError.EIO, "copy-before-write failed: " + e.getCause(), e.getCause());
    } catch (InterruptedException e) {
      attempt.abandon();
      throw interrupted();
    }
  }

  /** No new copies; those running finish on their threads (never interrupted: file I/O would close). */
  void shutdown() {
    pool.shutdown();
  }

  private static BlockIOException timedOut(String what, String why) {
    return new BlockIOException(BlockError.ETIMEDOUT, "copy-before-write of " + what
        + " took longer than cbw-timeout: " + why);
  }

  private static BlockIOException interrupted() {
    Thread.currentThread().interrupt();
    return new BlockIOException(BlockError.ECANCELED, "interrupted while copying before write");
  }

  /** One copy on a pool thread, and whether its guest write still waits for it. */
  private final class Attempt implements Runnable {
    private static final int WAITED_FOR = 0;
    private static final int ENDED = 1;
    private static final int ABANDONED = 2;

    private final Copy copy;
    private final CompletableFuture<Void> done = new CompletableFuture<>();
    private final AtomicInteger state = new AtomicInteger(WAITED_FOR);

    Attempt(Copy copy) {
      this.copy = copy;
    }

    @Override
    public void run() {
      try {
        copy.run();
        done.complete(null);
      } catch (Throwable t) {
        done.completeExceptionally(t);
      } finally {
        if (!state.compareAndSet(WAITED_FOR, ENDED)) {
          abandoned.decrementAndGet();
        }
        threads.release();
      }
    }

    void abandon() {
      if (state.compareAndSet(WAITED_FOR, ABANDONED)) {
        abandoned.incrementAndGet();
      }
    }
  }
}
