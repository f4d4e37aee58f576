package dev.blockbackup.formats;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.RangeLock.Held;
import dev.blockbackup.formats.RangeLock.Mode;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

class RangeLockTest {

  @Test
  void overlappingExclusiveRequestWaitsUntilTheHolderCloses() throws Exception {
    RangeLock lock = new RangeLock();
    Held first = lock.acquire(0, 100, Mode.EXCLUSIVE);
    CountDownLatch granted = new CountDownLatch(1);
    CompletableFuture<Void> second = CompletableFuture.runAsync(() -> {
      try (Held h = lock.acquire(50, 100, Mode.EXCLUSIVE)) {
        granted.countDown();
      }
    });
    assertThat(lock.tryAcquire(99, 1, Mode.SHARED, 0, TimeUnit.SECONDS)).isNull();
    assertThat(granted.getCount()).isEqualTo(1);
    first.close();
    second.get(10, TimeUnit.SECONDS);
    assertThat(granted.getCount()).isZero();
  }

  @Test
  void disjointAndSharedRangesAreGrantedAtOnce() throws Exception {
    RangeLock lock = new RangeLock();
    Held s1 = lock.acquire(0, 100, Mode.SHARED);
    Held s2 = lock.tryAcquire(10, 10, Mode.SHARED, 0, TimeUnit.SECONDS);
    Held x = lock.tryAcquire(100, 5, Mode.EXCLUSIVE, 0, TimeUnit.SECONDS);
    assertThat(s2).isNotNull();
    assertThat(x).isNotNull();
    assertThat(lock.tryAcquire(99, 2, Mode.SHARED, 0, TimeUnit.SECONDS)).isNull();
    assertThat(lock.tryAcquire(50, 1, Mode.EXCLUSIVE, 0, TimeUnit.SECONDS)).isNull();
    s1.close();
    s2.close();
    x.close();
    assertThat(lock.overlapsAny(0, Long.MAX_VALUE)).isFalse();
  }

  @Test
  void aWaitingExclusiveRequestIsNotOvertakenBySharedOnes() throws Exception {
    RangeLock lock = new RangeLock();
    Held reader = lock.acquire(0, 10, Mode.SHARED);
    CompletableFuture<Held> writer =
        CompletableFuture.supplyAsync(() -> lock.acquire(0, 10, Mode.EXCLUSIVE));
    while (!queuedBehind(lock)) {
      Thread.onSpinWait();
    }
    assertThat(lock.tryAcquire(5, 1, Mode.SHARED, 0, TimeUnit.SECONDS)).isNull();
    reader.close();
    writer.get(10, TimeUnit.SECONDS).close();
  }

  @Test
  void emptyRangesConflictWithNothing() throws Exception {
    RangeLock lock = new RangeLock();
    try (Held all = lock.acquire(0, 1000, Mode.EXCLUSIVE);
        Held empty = lock.tryAcquire(500, 0, Mode.EXCLUSIVE, 0, TimeUnit.SECONDS)) {
      assertThat(empty).isNotNull();
    }
  }

  @Test
  void timedOutRequestHoldsNothing() throws Exception {
    RangeLock lock = new RangeLock();
    Held a = lock.acquire(0, 10, Mode.EXCLUSIVE);
    assertThat(lock.tryAcquire(0, 10, Mode.EXCLUSIVE, 10, TimeUnit.MILLISECONDS)).isNull();
    a.close();
    assertThat(lock.overlapsAny(0, 10)).isFalse();
  }

  /** True once a second request is queued on [0, 10) beside the held one. */
  private static boolean queuedBehind(RangeLock lock) throws InterruptedException {
    // A shared probe on a range only the waiting writer blocks: the reader alone would grant it.
    Held probe = lock.tryAcquire(9, 1, Mode.SHARED, 0, TimeUnit.SECONDS);
    if (probe != null) {
      probe.close();
      return false;
    }
    return true;
  }
}
