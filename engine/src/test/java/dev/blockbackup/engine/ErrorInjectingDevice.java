package dev.blockbackup.engine;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.ForwardingBlockDevice;
import dev.blockbackup.formats.WriteFlag;
import java.nio.ByteBuffer;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.Condition;
import java.util.concurrent.locks.ReentrantLock;

/**
 * A filter that fails or holds chosen requests, as QEMU's blkdebug inject-error and nbdkit's error
 * and delay filters do: to see what a backup does when its source or target goes bad at a known
 * offset. Each {@link Rule} names an operation, a byte range, and either an error or a delay, and
 * fires a number of times or for ever. A failed request does nothing below the filter, as a disk
 * that returned an error.
 *
 * <p>Block status is never failed: the engine treats it as a hint and falls back to copying data,
 * so faults there would test nothing a read fault does not.
 */
public final class ErrorInjectingDevice extends ForwardingBlockDevice {

  /** What a rule matches. {@code write} covers every request that changes data. */
  public enum Operation {
    read,
    /** write, write-zeroes, discard and compressed writes. */
    write,
    /** flush; a flush has no range, so a flush rule matches every flush. */
    flush
  }

  /**
   * One fault: immutable; {@code fail}/{@code delay} make one for the whole device that fires for
   * ever, {@link #at} narrows its range and {@link #times} bounds how often it fires.
   */
  public static final class Rule {
    private final Operation operation;
    private final long offset;
    /** Bytes from {@link #offset}; Long.MAX_VALUE means "to the end of the device". */
    private final long length;
    /** The error to fail with, or null for a delay rule. */
    private final BlockError error;
    private final Duration delay;
    /** How many requests the rule fires on; -1 for ever. */
    private final int count;

    private Rule(Operation operation, long offset, long length, BlockError error, Duration delay, int count) {
      this.operation = operation;
      this.offset = offset;
      this.length = length;
      this.error = error;
      this.delay = delay;
      this.count = count;
    }

    /** Fails every {@code operation} request with {@code error}. */
    public static Rule fail(Operation operation, BlockError error) {
      return new Rule(Objects.requireNonNull(operation, "operation"), 0, Long.MAX_VALUE,
          Objects.requireNonNull(error, "error"), null, -1);
    }

    /**
     * Holds every {@code operation} request for {@code delay} (or until {@link #clear()}), then
     * lets it through: a target that has stopped answering, for cbw-timeout.
     */
    public static Rule delay(Operation operation, Duration delay) {
      Objects.requireNonNull(delay, "delay");
      if (delay.isNegative() || delay.isZero()) {
        throw new IllegalArgumentException("delay (" + delay + ") must be positive");
      }
      return new Rule(Objects.requireNonNull(operation, "operation"), 0, Long.MAX_VALUE, null, delay, -1);
    }

    /** Fires only on requests that overlap {@code [offset, offset + length)}. */
    public Rule at(long offset, long length) {
      if (offset < 0 || length <= 0 || length > Long.MAX_VALUE - offset) {
        throw new IllegalArgumentException("range [" + offset + ", +" + length + ") must be non-empty and non-negative");
      }
      return new Rule(operation, offset, length, error, delay, count);
    }

    /** Fires on the first {@code n} matching requests only, then is spent. */
    public Rule times(int n) {
      if (n < 1) {
        throw new IllegalArgumentException("times (" + n + ") must be at least 1");
      }
      return new Rule(operation, offset, length, error, delay, n);
    }

    boolean matches(Operation op, long start, long len) {
      if (op != operation) {
        return false;
      }
      if (op == Operation.flush) {
        return true;
      }
      long end = len == 0 ? start + 1 : start + len; // an empty request still "touches" its offset
      return start < offset + length && offset < end;
    }

    @Override
    public String toString() {
      String what = error != null ? error.name() : "delay " + delay.toMillis() + " ms";
      String where = length == Long.MAX_VALUE && offset == 0 ? "" : " at [" + offset + ", +" + length + ")";
      return what + " on " + operation + where + (count < 0 ? " for ever" : " " + count + " times");
    }
  }

  private final ReentrantLock lock = new ReentrantLock();
  /** Signalled by {@link #clear()}, to release held requests. */
  private final Condition cleared = lock.newCondition();
  /** Armed rules with the firings each has left (-1: for ever), in the order they were added. */
  private final List<Armed> rules = new ArrayList<>();
  /** Bumped by {@link #clear()}: a held request whose generation is gone stops waiting. */
  private long generation;
  private long injections;

  private static final class Armed {
    final Rule rule;
    int left;

    Armed(Rule rule) {
      this.rule = rule;
      this.left = rule.count;
    }
  }

  /** A filter over {@code device} with no rules yet: it passes everything through. */
  public ErrorInjectingDevice(BlockDevice device) {
    super(device);
  }

  /** Adds a rule; the first armed rule that matches a request decides what happens to it. */
  public ErrorInjectingDevice inject(Rule rule) {
    Objects.requireNonNull(rule, "rule");
    lock.lock();
    try {
      rules.add(new Armed(rule));
    } finally {
      lock.unlock();
    }
    return this;
  }

  /** Removes every rule (the fault is fixed) and lets requests held by delay rules go on now. */
  public void clear() {
    lock.lock();
    try {
      rules.clear();
      generation++;
      cleared.signalAll();
    } finally {
      lock.unlock();
    }
  }

  /** How many times a rule has fired (failed or held a request) so far. */
  public long injections() {
    lock.lock();
    try {
      return injections;
    } finally {
      lock.unlock();
    }
  }

  /** Rules still armed (spent ones are gone). */
  public int armedRules() {
    lock.lock();
    try {
      return rules.size();
    } finally {
      lock.unlock();
    }
  }

  /** Fails or holds the request if a rule says so; returns normally to let it through. */
  private void check(Operation op, long offset, long length) throws BlockIOException {
    lock.lock();
    try {
      Rule fired = null;
      for (Iterator<Armed> it = rules.iterator(); it.hasNext(); ) {
        Armed a = it.next();
        if (a.rule.matches(op, offset, length)) {
          fired = a.rule;
          if (a.left > 0 && --a.left == 0) {
            it.remove();
          }
          break;
        }
      }
      if (fired == null) {
        return;
      }
      injections++;
      if (fired.error != null) {
        throw new BlockIOException(fired.error, "injected " + fired.error.name() + " (" + fired.error.strerror()
            + ") on " + op + (op == Operation.flush ? "" : " at [" + offset + ", +" + length + ")"));
      }
      long seen = generation;
      long left = fired.delay.toNanos();
      while (left > 0 && seen == generation) {
        left = cleared.awaitNanos(left);
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new BlockIOException(BlockError.ECANCELED, "interrupted while an injected delay held " + op);
    } finally {
      lock.unlock();
    }
  }

  @Override
  public void read(long offset, ByteBuffer dst) throws BlockIOException {
    check(Operation.read, offset, dst.remaining());
    super.read(offset, dst);
  }

  @Override
  public void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
    check(Operation.write, offset, src.remaining());
    super.write(offset, src, flags);
  }

  @Override
  public void writeZeroes(long offset, long length, WriteFlag... flags) throws BlockIOException {
    check(Operation.write, offset, length);
    super.writeZeroes(offset, length, flags);
  }

  @Override
  public void discard(long offset, long length) throws BlockIOException {
    check(Operation.write, offset, length);
    super.discard(offset, length);
  }

  @Override
  public void writeCompressed(long offset, ByteBuffer cluster) throws BlockIOException {
    check(Operation.write, offset, cluster.remaining());
    super.writeCompressed(offset, cluster);
  }

  @Override
  public void flush() throws BlockIOException {
    check(Operation.flush, 0, 0);
    super.flush();
  }
}
