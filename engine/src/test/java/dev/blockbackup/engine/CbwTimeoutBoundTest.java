package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.ForwardingBlockDevice;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.WriteFlag;
import java.lang.management.ManagementFactory;
import java.lang.management.MemoryMXBean;
import java.lang.management.ThreadMXBean;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * cbw-timeout with a target that stops answering: copy-before-write runs its copies on a bounded
 * pool, so 10,000 guest writes cost a fixed number of threads and no growing queue, and each one
 * ends within the timeout (on-cbw-error=break-guest-write: it fails with ETIMEDOUT and changes
 * nothing).
 */
@Timeout(120)
class CbwTimeoutBoundTest {

  static final int CLUSTER = 64 * 1024;
  static final int WRITES = 10_000;
  static final int WRITERS = 8;
  static final long SIZE = (long) WRITES * CLUSTER;
  /** cbw-timeout, in seconds. */
  static final long TIMEOUT = 1;
  /** What a loaded machine may add to the timeout before a write returns. */
  static final Duration SLACK = Duration.ofSeconds(5);

  @TempDir Path dir;

  /** A target whose writes block until {@link #release}: it hangs as a dead NBD server would. */
  static final class HungTarget extends ForwardingBlockDevice {
    final CountDownLatch released = new CountDownLatch(1);
    final AtomicInteger stuck = new AtomicInteger();

    HungTarget(BlockDevice d) {
      super(d);
    }

    private void hang() throws BlockIOException {
      stuck.incrementAndGet();
      try {
        released.await();
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw new BlockIOException(BlockError.EIO, "interrupted");
      } finally {
        stuck.decrementAndGet();
      }
    }

    @Override
    public void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
      hang();
      super.write(offset, src, flags);
    }

    @Override
    public void writeZeroes(long offset, long length, WriteFlag... flags) throws BlockIOException {
      hang();
      super.writeZeroes(offset, length, flags);
    }

    void release() {
      released.countDown();
    }
  }

  @Test
  void aHungTargetMakesGuestWritesTimeOutOnAFixedNumberOfThreads() throws Exception {
    // an empty source: every cluster still has a copy to make (write-zeroes on the target)
    RawImage src = RawImage.create(dir.resolve("src.raw"), SIZE);
    byte[] old = new byte[4096];
    HungTarget target = new HungTarget(RawImage.create(dir.resolve("tgt.raw"), SIZE));
    BlockNode node = BlockNode.of("drive0", src);
    BackupJob job = BackupJob.create(new JobManager(), node, target,
        BackupOptions.of(MirrorSyncMode.none).withCbwTimeout(TIMEOUT).withOnCbwError(OnCbwError.break_guest_write));
    job.start();
    assertThat(job.awaitStatus(Duration.ofSeconds(30), JobStatus.running)).isTrue();

    ThreadMXBean threads = ManagementFactory.getThreadMXBean();
    MemoryMXBean memory = ManagementFactory.getMemoryMXBean();
    System.gc();
    long heapBefore = memory.getHeapMemoryUsage().getUsed();
    int threadsBefore = threads.getThreadCount();
    threads.resetPeakThreadCount();

    long limitNanos = TimeUnit.SECONDS.toNanos(TIMEOUT) + SLACK.toNanos();
    AtomicLong slowest = new AtomicLong();
    AtomicInteger next = new AtomicInteger();
    Map<BlockError, AtomicInteger> outcomes = new ConcurrentHashMap<>();
    AtomicInteger succeeded = new AtomicInteger();
    ExecutorService writers = Executors.newFixedThreadPool(WRITERS);
    List<Future<?>> done = new ArrayList<>();
    for (int w = 0; w < WRITERS; w++) {
      done.add(writers.submit(() -> {
        byte[] data = new byte[4096];
        int i;
        while ((i = next.getAndIncrement()) < WRITES) {
          long t0 = System.nanoTime();
          try {
            node.write((long) i * CLUSTER, ByteBuffer.wrap(data));
            succeeded.incrementAndGet();
          } catch (BlockIOException e) {
            outcomes.computeIfAbsent(e.error(), k -> new AtomicInteger()).incrementAndGet();
          }
          slowest.accumulateAndGet(System.nanoTime() - t0, Math::max);
        }
        return null;
      }));
    }
    for (Future<?> f : done) {
      f.get(100, TimeUnit.SECONDS);
    }
    writers.shutdown();

    assertThat(slowest.get()).as("the slowest guest write, in ns: each ends within cbw-timeout")
        .isLessThan(limitNanos);
    assertThat(succeeded.get()).as("no write gets past a copy that never happened").isZero();
    assertThat(outcomes.keySet()).containsOnly(BlockError.ETIMEDOUT);
    assertThat(outcomes.get(BlockError.ETIMEDOUT).get()).isEqualTo(WRITES);
    assertThat(target.stuck.get()).as("copies stuck in the target").isBetween(1, TimedCopies.THREADS);
    assertThat(threads.getPeakThreadCount())
        .as("threads at the peak (before: %d)", threadsBefore)
        .isLessThanOrEqualTo(threadsBefore + WRITERS + TimedCopies.THREADS + 4);
    System.gc();
    assertThat(memory.getHeapMemoryUsage().getUsed() - heapBefore).as("heap grown, in bytes")
        .isLessThan(64L << 20);
    ByteBuffer first = ByteBuffer.allocate(4096);
    src.read(0, first);
    assertThat(first.array()).as("a failed guest write changes nothing").isEqualTo(old);

    target.release();
    job.cancel();
    assertThat(job.awaitConcluded(Duration.ofSeconds(30))).isTrue();
    target.close();
    node.close();
  }
}
