package dev.blockbackup.nbd;

import java.util.Queue;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.Executor;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * The server's bounded queue of block I/O: requests handed from the event loops to the worker
 * pool, counted from hand-over until done. It never refuses a request for lack of room (a request
 * a client sent is answered, never dropped); instead a connection that finds the queue full
 * stops reading and asks to be told when there is room again ({@link #whenRoom}), so the bound
 * holds through back-pressure on the sockets. Past the bound by at most the requests a connection
 * had already decoded when it stopped reading.
 */
final class WorkQueue {

  /** The pool that runs the requests; its own queue holds what is waiting. */
  private final Executor pool;
  /** Requests handed over and not yet done above which connections stop reading. */
  private final int capacity;
  /** Requests handed over and not yet done (waiting for a worker or running). */
  private final AtomicInteger queued = new AtomicInteger();
  /** Connections waiting for room, each called once. */
  private final Queue<Runnable> waiting = new ConcurrentLinkedQueue<>();

  WorkQueue(Executor pool, int capacity) {
    if (capacity < 1) {
      throw new IllegalArgumentException("capacity (" + capacity + ") must be positive");
    }
    this.pool = pool;
    this.capacity = capacity;
  }

  int capacity() {
    return capacity;
  }

  /** Requests handed over and not yet done. */
  int queued() {
    return queued.get();
  }

  /** Whether connections should stop reading: the queue holds {@link #capacity} requests or more. */
  boolean isFull() {
    return queued.get() >= capacity;
  }

  /**
   * Hands {@code task} to the pool, full or not.
   *
   * @throws RejectedExecutionException only when the pool is shut down
   */
  void execute(Runnable task) {
    queued.incrementAndGet();
    try {
      pool.execute(() -> {
        try {
          task.run();
        } finally {
          done();
        }
      });
    } catch (RejectedExecutionException e) {
      done();
      throw e;
    }
  }

  /**
   * Calls {@code onRoom} once, on whichever thread makes room, as soon as the queue is not full;
   * at once if it is not full now. It must not block: a connection hops to its event loop.
   */
  void whenRoom(Runnable onRoom) {
    waiting.add(onRoom);
    // Added before looking: a request that finishes after this look finds the waiter, one that
    // finished before it left the room this look sees.
    callWaiters();
  }

  private void done() {
    queued.decrementAndGet();
    callWaiters();
  }

  private void callWaiters() {
    Runnable r;
    while (!isFull() && (r = waiting.poll()) != null) {
      r.run();
    }
  }
}
