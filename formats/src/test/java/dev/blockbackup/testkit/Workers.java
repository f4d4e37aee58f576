package dev.blockbackup.testkit;

import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Future;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * Worker threads for concurrency tests: daemon threads (a deadlocked device must not keep the test
 * JVM alive) and a wait for all of them that turns a hang into a failure showing where each thread
 * stands.
 */
public final class Workers {

  private Workers() {}

  /** Daemon threads named {@code prefix1}, {@code prefix2}, ... */
  public static ThreadFactory daemonThreads(String prefix) {
    AtomicInteger n = new AtomicInteger();
    return task -> {
      Thread t = new Thread(task, prefix + n.incrementAndGet());
      t.setDaemon(true);
      return t;
    };
  }

  /**
   * Waits for every future until {@code deadline} ({@link System#nanoTime()}). Past it, fails with
   * {@code timeoutMessage} followed by the stacks of the threads whose names start with
   * {@code threadPrefix} ("" for all). The first future that failed cancels the others; its
   * AssertionError is rethrown as it is, anything else is wrapped in one that starts with {@code what}.
   */
  public static void awaitAll(List<Future<?>> futures, long deadline, String what, String timeoutMessage,
      String threadPrefix) throws InterruptedException {
    for (Future<?> f : futures) {
      try {
        f.get(Math.max(0, deadline - System.nanoTime()), TimeUnit.NANOSECONDS);
      } catch (TimeoutException e) {
        throw new AssertionError(timeoutMessage + stacks(threadPrefix));
      } catch (ExecutionException e) {
        for (Future<?> other : futures) {
          other.cancel(true);
        }
        if (e.getCause() instanceof AssertionError a) {
          throw a;
        }
        throw new AssertionError(what + ": " + e.getCause(), e.getCause());
      }
    }
  }

  private static String stacks(String threadPrefix) {
    StringBuilder stacks = new StringBuilder();
    for (Map.Entry<Thread, StackTraceElement[]> t : Thread.getAllStackTraces().entrySet()) {
      if (t.getKey().getName().startsWith(threadPrefix)) {
        stacks.append(t.getKey().getName()).append(' ').append(t.getKey().getState()).append('\n');
        for (StackTraceElement s : t.getValue()) {
          stacks.append("    at ").append(s).append('\n');
        }
      }
    }
    return stacks.toString();
  }
}
