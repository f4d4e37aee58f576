package dev.blockbackup.formats;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.Condition;
import java.util.concurrent.locks.ReentrantLock;

/**
 * Byte-range locks for requests in flight, QEMU's tracked requests: a request that must not overlap
 * another (a guest write while its old data is copied, a qcow2 allocation, a compressed rewrite)
 * holds its range, and an overlapping request that conflicts waits for it instead of failing.
 *
 * <p>Shared holders of overlapping ranges run together; an exclusive holder excludes every
 * overlapping holder. Requests are granted in arrival order among those that conflict, so a stream
 * of shared requests cannot starve an exclusive one: a waiter blocks every later request that
 * overlaps it and conflicts with it. Requests that do not overlap never wait for each other.
 *
 * <p>Cost is linear in the number of requests in flight, which the callers bound (NBD in-flight
 * limits, copier workers).
 */
public final class RangeLock {

  /** How a held range shares with overlapping ones. */
  public enum Mode {
    /** Overlapping shared holders run together (reads of stable data). */
    SHARED,
    /** No overlapping holder of either mode runs at once (changes). */
    EXCLUSIVE
  }

  private final ReentrantLock lock = new ReentrantLock();
  private final Condition changed = lock.newCondition();
  /** Held and waiting ranges, in arrival order: a waiter looks only at those before it. */
  private final List<Held> queue = new ArrayList<>();

  /**
   * Waits until {@code [offset, offset+length)} can be held in {@code mode}, then holds it until the
   * returned handle is closed. An empty range is held at once and conflicts with nothing.
   */
  public Held acquire(long offset, long length, Mode mode) {
    Held held = enqueue(offset, length, mode);
    lock.lock();
    try {
      boolean interrupted = false;
      while (blocked(held)) {
        try {
          changed.await();
        } catch (InterruptedException e) {
          interrupted = true; // a request in flight finishes; the flag is kept for the caller
        }
      }
      if (interrupted) {
        Thread.currentThread().interrupt();
      }
      return held;
    } finally {
      lock.unlock();
    }
  }

  /**
   * As {@link #acquire}, giving up after {@code timeout}: returns null then, holding nothing.
   *
   * @throws InterruptedException if interrupted while waiting; nothing is held then
   */
  public Held tryAcquire(long offset, long length, Mode mode, long timeout, TimeUnit unit)
      throws InterruptedException {
    Held held = enqueue(offset, length, mode);
    long nanos = unit.toNanos(timeout);
    lock.lock();
    try {
      while (blocked(held)) {
        if (nanos <= 0) {
          remove(held);
          return null;
        }
        try {
          nanos = changed.awaitNanos(nanos);
        } catch (InterruptedException e) {
          remove(held);
          throw e;
        }
      }
      return held;
    } finally {
      lock.unlock();
    }
  }

  /** Whether any range held or waited for overlaps {@code [offset, offset+length)}. */
  public boolean overlapsAny(long offset, long length) {
    lock.lock();
    try {
      for (Held h : queue) {
        if (h.overlaps(offset, offset + length)) {
          return true;
        }
      }
      return false;
    } finally {
      lock.unlock();
    }
  }

  private Held enqueue(long offset, long length, Mode mode) {
    if (offset < 0 || length < 0 || offset + length < offset) {
      throw new IllegalArgumentException("range [" + offset + ", +" + length + ") is not valid");
    }
    Held held = new Held(this, offset, offset + length, mode);
    lock.lock();
    try {
      queue.add(held);
    } finally {
      lock.unlock();
    }
    return held;
  }

  private boolean blocked(Held held) {
    for (Held h : queue) {
      if (h == held) {
        return false;
      }
      if (h.overlaps(held.start, held.end)
          && (h.mode == Mode.EXCLUSIVE || held.mode == Mode.EXCLUSIVE)) {
        return true;
      }
    }
    throw new IllegalStateException("range is not queued");
  }

  private void remove(Held held) {
    if (queue.remove(held)) {
      changed.signalAll();
    }
  }

  private void release(Held held) {
    lock.lock();
    try {
      remove(held);
    } finally {
      lock.unlock();
    }
  }

  /** One held range; closing it releases the range (closing twice is harmless). */
  public static final class Held implements AutoCloseable {
    private final RangeLock owner;
    /** First byte of the range. */
    private final long start;
    /** One past the last byte. */
    private final long end;
    /** Shared or exclusive. */
    private final Mode mode;

    private Held(RangeLock owner, long start, long end, Mode mode) {
      this.owner = owner;
      this.start = start;
      this.end = end;
      this.mode = mode;
    }

    public long offset() {
      return start;
    }

    public long length() {
      return end - start;
    }

    private boolean overlaps(long otherStart, long otherEnd) {
      return start < end && otherStart < otherEnd && start < otherEnd && otherStart < end;
    }

    @Override
    public void close() {
      owner.release(this);
    }
  }
}
