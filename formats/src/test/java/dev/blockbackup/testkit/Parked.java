package dev.blockbackup.testkit;

import java.time.Duration;
import java.util.Arrays;
import java.util.concurrent.locks.LockSupport;

/**
 * Proves that a thread is blocked where a test says it is, instead of sleeping and hoping it got
 * there: a thread parked (WAITING or TIMED_WAITING) with a given method on its stack can do nothing
 * until someone signals it. A test that wants to show "the request waits for the drain" waits until
 * the request's thread is parked inside the drain's wait, then asserts; when the code is wrong the
 * thread never parks there and the deadline fails the test.
 */
public final class Parked {

  private static final long POLL_NANOS = 1_000_000;

  private Parked() {}

  /**
   * Waits until {@code thread} is parked with {@code className.method} on its stack ({@code
   * className} is the simple or full name); fails with the thread's stack if the deadline passes.
   */
  public static void awaitParkedIn(Thread thread, String className, String method, Duration deadline) {
    long end = System.nanoTime() + deadline.toNanos();
    while (!isParkedIn(thread, className, method)) {
      if (System.nanoTime() - end > 0) {
        throw new AssertionError(String.format("thread '%s' is not parked in %s.%s after %s; it is %s at%n  %s",
            thread.getName(), className, method, deadline, thread.getState(),
            String.join("\n  ", Arrays.stream(thread.getStackTrace()).map(String::valueOf).toList())));
      }
      LockSupport.parkNanos(POLL_NANOS);
    }
  }

  /** Whether {@code thread} is parked now with {@code className.method} on its stack. */
  public static boolean isParkedIn(Thread thread, String className, String method) {
    Thread.State state = thread.getState();
    if (state != Thread.State.WAITING && state != Thread.State.TIMED_WAITING) {
      return false;
    }
    for (StackTraceElement frame : thread.getStackTrace()) {
      String cls = frame.getClassName();
      boolean classMatches = cls.equals(className) || cls.endsWith("." + className) || cls.endsWith("$" + className);
      if (classMatches && frame.getMethodName().equals(method)) {
        // The state read before the stack: re-check, so a thread that woke in between is not taken.
        Thread.State now = thread.getState();
        return now == Thread.State.WAITING || now == Thread.State.TIMED_WAITING;
      }
    }
    return false;
  }
}
