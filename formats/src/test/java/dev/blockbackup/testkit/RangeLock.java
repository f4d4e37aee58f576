package dev.blockbackup.testkit;

import java.util.ArrayList;
import java.util.List;

/**
 * Exclusive locks on byte ranges for concurrency tests: {@link #acquire} waits while any held range
 * overlaps, so overlapping requests from different threads reach the device one at a time, in an
 * order the test can record and replay on its model.
 */
public final class RangeLock {
  private final List<long[]> held = new ArrayList<>();

  /** Blocks until [offset, offset+length) overlaps no held range, then holds it. */
  public synchronized long[] acquire(long offset, long length) throws InterruptedException {
    long[] r = {offset, offset + length};
    while (overlapsHeld(r)) {
      wait();
    }
    held.add(r);
    return r;
  }

  /** Releases a range {@link #acquire} returned. */
  public synchronized void release(long[] r) {
    held.removeIf(h -> h == r);
    notifyAll();
  }

  private boolean overlapsHeld(long[] r) {
    for (long[] h : held) {
      if (h[0] < r[1] && r[0] < h[1]) {
        return true;
      }
    }
    return false;
  }
}
