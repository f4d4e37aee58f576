package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.ForwardingBlockDevice;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.WriteFlag;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Arrays;
import java.util.SplittableRandom;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A {@link SnapshotView} lives exactly as long as its copy-before-write filter (QEMU's
 * snapshot-access cannot outlive it): after cancel, after completion and once the filter is
 * removed at finalize, reads and block status fail with ESHUTDOWN, and a guest write made after
 * that never shows through the view, not even to a read that began before the removal.
 */
@Timeout(60)
class SnapshotViewLifetimeTest {

  static final int CLUSTER = 64 * 1024;
  static final long SIZE = 16L * CLUSTER;
  static final Duration WAIT = Duration.ofSeconds(30);

  @TempDir Path dir;

  private byte[] pointInTime;
  private RawImage src;
  private RawImage tgt;

  private BlockNode node(BlockDevice below) {
    return BlockNode.of("drive0", below);
  }

  private void images() throws Exception {
    pointInTime = new byte[(int) SIZE];
    new SplittableRandom(3).nextBytes(pointInTime);
    src = RawImage.create(dir.resolve("src.raw"), SIZE);
    src.write(0, ByteBuffer.wrap(pointInTime));
    tgt = RawImage.create(dir.resolve("tgt.raw"), SIZE);
  }

  private static void assertShutDown(SnapshotView view) {
    assertThatThrownBy(() -> view.read(0, ByteBuffer.allocate(CLUSTER)))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.ESHUTDOWN));
    assertThatThrownBy(() -> view.read(3L * CLUSTER, ByteBuffer.allocate(0)))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.ESHUTDOWN));
    assertThatThrownBy(() -> view.blockStatus(0, SIZE))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.ESHUTDOWN));
    assertThatThrownBy(() -> view.discard(0, CLUSTER))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.ESHUTDOWN));
  }

  private static byte[] guestData(int seed) {
    byte[] b = new byte[CLUSTER];
    new SplittableRandom(seed).nextBytes(b);
    return b;
  }

  private byte[] old(long off) {
    return Arrays.copyOfRange(pointInTime, (int) off, (int) off + CLUSTER);
  }

  private static byte[] read(BlockDevice d, long off) throws Exception {
    ByteBuffer b = ByteBuffer.allocate(CLUSTER);
    d.read(off, b);
    return b.array();
  }

  @Test
  void afterCancelTheViewFailsWithEshutdown() throws Exception {
    images();
    BlockNode node = node(src);
    BackupJob job = BackupJob.create(new JobManager(), node, tgt, BackupOptions.of(MirrorSyncMode.none));
    SnapshotView view = job.snapshotView();
    job.start();
    assertThat(job.awaitStatus(WAIT, JobStatus.running)).isTrue();
    node.write(0, ByteBuffer.wrap(guestData(1))); // copied: the view reads cluster 0 from the target
    assertThat(read(view, 0)).isEqualTo(old(0));
    assertThat(read(view, CLUSTER)).isEqualTo(old(CLUSTER));

    job.cancel();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    assertShutDown(view);
    assertShutDown(job.snapshotView());
    node.write(CLUSTER, ByteBuffer.wrap(guestData(2))); // no filter now: straight to the source
    assertThat(read(src, CLUSTER)).isEqualTo(guestData(2));
    assertShutDown(view);
    tgt.close();
    node.close();
  }

  @Test
  void afterCompletionTheViewFailsWithEshutdown() throws Exception {
    images();
    BlockNode node = node(src);
    BackupJob job = BackupJob.create(new JobManager(), node, tgt, BackupOptions.of(MirrorSyncMode.full));
    SnapshotView view = job.snapshotView();
    job.start();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    assertThat(job.error()).isNull();
    assertShutDown(view);
    node.write(0, ByteBuffer.wrap(guestData(3)));
    assertShutDown(view);
    assertThat(read(tgt, 0)).as("the backup itself is whole").isEqualTo(old(0));
    tgt.close();
    node.close();
  }

  @Test
  void theViewWorksUntilFinalizeRemovesTheFilterThenFailsWithEshutdown() throws Exception {
    images();
    BlockNode node = node(src);
    BackupJob job = BackupJob.create(new JobManager(), node, tgt,
        BackupOptions.of(MirrorSyncMode.full).withAutoFinalize(false));
    SnapshotView view = job.snapshotView();
    job.start();
    assertThat(job.awaitStatus(WAIT, JobStatus.pending)).isTrue();
    node.write(2L * CLUSTER, ByteBuffer.wrap(guestData(4)));
    assertThat(read(view, 2L * CLUSTER)).as("pending: the filter is still there").isEqualTo(old(2L * CLUSTER));
    assertThat(view.blockStatus(0, SIZE)).isNotEmpty();

    job.finalizeJob();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    assertShutDown(view);
    node.write(3L * CLUSTER, ByteBuffer.wrap(guestData(5)));
    assertShutDown(view);
    tgt.close();
    node.close();
  }

  /**
   * A source whose reads by one chosen thread stop at a gate until it opens, and which notes any
   * write that reaches it while a gated read waits there.
   */
  static final class GatedSource extends ForwardingBlockDevice {
    final CountDownLatch readWaiting = new CountDownLatch(1);
    final CountDownLatch open = new CountDownLatch(1);
    final AtomicReference<Thread> gated = new AtomicReference<>();
    final AtomicBoolean writeDuringGatedRead = new AtomicBoolean();

    GatedSource(BlockDevice d) {
      super(d);
    }

    @Override
    public void read(long offset, ByteBuffer dst) throws BlockIOException {
      if (Thread.currentThread() == gated.get()) {
        readWaiting.countDown();
        try {
          open.await();
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
          throw new BlockIOException(BlockError.ECANCELED, "interrupted");
        }
      }
      super.read(offset, dst);
    }

    @Override
    public void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
      if (readWaiting.getCount() == 0 && open.getCount() > 0) {
        writeDuringGatedRead.set(true);
      }
      super.write(offset, src, flags);
    }
  }

  /** Polls, up to a deadline, until {@code t} is parked (or ended). */
  private static void awaitParkedOrEnded(Thread t, String what) throws InterruptedException {
    long deadline = System.nanoTime() + WAIT.toNanos();
    while (t.isAlive() && t.getState() != Thread.State.WAITING && t.getState() != Thread.State.TIMED_WAITING) {
      assertThat(System.nanoTime()).as("%s neither parked nor ended in time", what).isLessThan(deadline);
      Thread.sleep(1);
    }
  }

  private static boolean inShutDown(Thread t) {
    for (StackTraceElement e : t.getStackTrace()) {
      if (e.getClassName().equals(CopyBeforeWrite.class.getName()) && e.getMethodName().equals("shutDown")) {
        return true;
      }
    }
    return false;
  }

  private static Thread thread(String name) {
    for (Thread t : Thread.getAllStackTraces().keySet()) {
      if (t.getName().equals(name)) {
        return t;
      }
    }
    return null;
  }

  /**
   * The race: a view read of the live source is in flight when the job is cancelled. The filter's
   * removal waits for that read, so a guest write issued meanwhile cannot reach the source before
   * the read has its old data.
   */
  @Test
  void aReadInFlightAtTheRemovalNeverReturnsWhatIsWrittenAfterIt() throws Exception {
    images();
    GatedSource gate = new GatedSource(src);
    BlockNode node = node(gate);
    BackupJob job = BackupJob.create(new JobManager(), node, tgt,
        BackupOptions.of(MirrorSyncMode.none).withJobId("race"));
    SnapshotView view = job.snapshotView();
    job.start();
    assertThat(job.awaitStatus(WAIT, JobStatus.running)).isTrue();

    long off = 5L * CLUSTER; // never copied: the view reads it from the source
    CompletableFuture<byte[]> seen = new CompletableFuture<>();
    Thread reader = new Thread(() -> {
      try {
        seen.complete(read(view, off));
      } catch (Throwable t) {
        seen.completeExceptionally(t);
      }
    }, "view-reader");
    gate.gated.set(reader);
    reader.start();
    assertThat(gate.readWaiting.await(WAIT.toSeconds(), TimeUnit.SECONDS)).isTrue();

    job.cancel();
    // the job's thread ends at the filter's removal, where it waits for the read in flight (an
    // implementation without that wait concludes here instead)
    Thread jobThread = thread("job-race");
    long deadline = System.nanoTime() + WAIT.toNanos();
    while (!job.concludedFuture().isDone() && (jobThread == null || !inShutDown(jobThread))) {
      assertThat(System.nanoTime()).as("the job neither waited at the removal nor concluded").isLessThan(deadline);
      Thread.sleep(1);
      if (jobThread == null) {
        jobThread = thread("job-race");
      }
    }
    byte[] guest = guestData(6);
    Thread writer = new Thread(() -> {
      try {
        node.write(off, ByteBuffer.wrap(guest));
      } catch (BlockIOException e) {
        throw new IllegalStateException(e);
      }
    }, "guest-writer");
    writer.start();
    awaitParkedOrEnded(writer, "the guest write");
    gate.open.countDown();

    assertThat(seen.get(WAIT.toSeconds(), TimeUnit.SECONDS)).as("the read in flight").isEqualTo(old(off));
    assertThat(gate.writeDuringGatedRead).as("a guest write reached the source during the read").isFalse();
    writer.join(WAIT.toMillis());
    assertThat(writer.isAlive()).isFalse();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    assertThat(read(src, off)).isEqualTo(guest);
    assertShutDown(view);
    tgt.close();
    node.close();
  }
}
