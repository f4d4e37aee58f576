package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@link Transaction}: all actions at one instant or none, and grouped completion. */
class TransactionTest {

  static final long SIZE = 8L << 20;
  static final int CLUSTER = 64 * 1024;

  @TempDir Path dir;

  private BlockNode node(String name) throws Exception {
    RawImage img = RawImage.create(dir.resolve(name + ".raw"), SIZE);
    byte[] data = new byte[(int) SIZE];
    new SplittableRandom(name.hashCode()).nextBytes(data);
    img.write(0, ByteBuffer.wrap(data));
    return BlockNode.of(name, img);
  }

  private Qcow2Image target(String name) throws Exception {
    return Qcow2Image.create(dir.resolve(name + ".qcow2"), Qcow2CreateOptions.of(SIZE));
  }

  private static byte[] readAll(BlockDevice d) throws BlockIOException {
    ByteBuffer b = ByteBuffer.allocate((int) d.size());
    d.read(0, b);
    return b.array();
  }

  @Test
  void aRefusedActionUndoesTheOnesBeforeIt() throws Exception {
    BlockNode n = node("drive0");
    n.addBitmap("old");
    n.write(0, ByteBuffer.allocate(4096));
    n.disableBitmap("old");
    JobManager jobs = new JobManager();
    RawImage small = RawImage.create(dir.resolve("small.raw"), SIZE / 2);
    List<Transaction.Action> actions = List.of(
        Transaction.bitmapAdd(n, "new", null, false, false),
        Transaction.bitmapClear(n, "old"),
        Transaction.bitmapEnable(n, "old"),
        Transaction.bitmapRemove(n, "new"),
        Transaction.backup(jobs, n, target("t0"), BackupOptions.of(MirrorSyncMode.full).withJobId("ok")),
        Transaction.backup(jobs, n, small, BackupOptions.of(MirrorSyncMode.full).withJobId("bad")));
    assertThatThrownBy(() -> Transaction.of(actions).run())
        .isInstanceOf(JobException.class).hasMessageContaining("same size");
    assertThat(n.findBitmap("new")).isEmpty();
    BlockDirtyBitmap old = n.findBitmap("old").orElseThrow();
    assertThat(old.count()).as("cleared bits put back").isEqualTo(CLUSTER);
    assertThat(old.isEnabled()).isFalse();
    assertThat(old.isBusy()).isFalse();
    assertThat(jobs.list()).as("the first backup was created, then cancelled unstarted").isEmpty();
    assertThat(n.device()).as("no filter left on the node").isSameAs(n.unfiltered());
    n.write(CLUSTER, ByteBuffer.allocate(1)); // the node is not left drained
    n.close();
  }

  @Test
  void committedBitmapActionsTakeEffectInOrder() throws Exception {
    BlockNode a = node("a");
    BlockNode b = node("b");
    b.addBitmap("src");
    b.write(3L * CLUSTER, ByteBuffer.allocate(10));
    a.addBitmap("gone");
    List<Transaction.Action> actions = List.of(
        Transaction.bitmapAdd(a, "m", null, false, true),
        Transaction.bitmapMerge(a, "m", List.of(BlockDirtyBitmapMergeSource.external(b, "src"))),
        Transaction.bitmapRemove(a, "gone"),
        Transaction.bitmapClear(b, "src"));
    assertThat(Transaction.of(actions).run()).isEmpty();
    BlockDirtyBitmap m = a.findBitmap("m").orElseThrow();
    assertThat(m.count()).isEqualTo(CLUSTER);
    assertThat(m.isDirty(3L * CLUSTER)).isTrue();
    assertThat(m.isEnabled()).isFalse();
    assertThat(a.findBitmap("gone")).isEmpty();
    assertThat(b.findBitmap("src").orElseThrow().count()).isZero();
    a.close();
    b.close();
  }

  /**
   * A full backup and a new bitmap at one instant, while a writer runs: afterwards every cluster in
   * which the disk differs from the backup is dirty in the bitmap, so an incremental from it would
   * miss nothing.
   */
  @Test
  void aFullBackupAndANewBitmapShareTheirInstant() throws Exception {
    BlockNode n = node("drive0");
    JobManager jobs = new JobManager();
    Qcow2Image tgt = target("full");
    AtomicReference<Throwable> failed = new AtomicReference<>();
    Writer w = new Writer(failed, SIZE, n);
    w.start();
    while (w.count.get() < 50) {
      Thread.onSpinWait();
    }
    List<BackupJob> started = Transaction.of(List.of(
        Transaction.bitmapAdd(n, "inc", null, false, false),
        Transaction.backup(jobs, n, tgt, BackupOptions.of(MirrorSyncMode.full)))).run();
    assertThat(started).hasSize(1);
    assertThat(started.get(0).awaitConcluded(Duration.ofSeconds(60))).isTrue();
    long after = w.count.get();
    while (w.count.get() < after + 50) {
      Thread.onSpinWait();
    }
    w.halt();
    assertThat(failed.get()).isNull();
    assertThat(started.get(0).error()).isNull();
    byte[] now = readAll(n);
    byte[] backup = readAll(tgt);
    BlockDirtyBitmap inc = n.findBitmap("inc").orElseThrow();
    int differing = 0;
    for (int c = 0; c < SIZE / CLUSTER; c++) {
      if (!java.util.Arrays.equals(now, c * CLUSTER, (c + 1) * CLUSTER, backup, c * CLUSTER, (c + 1) * CLUSTER)) {
        differing++;
        assertThat(inc.isDirty((long) c * CLUSTER)).as("cluster %d changed after the instant", c).isTrue();
      }
    }
    assertThat(differing).as("the writer changed clusters after the instant").isPositive();
    tgt.close();
    n.close();
  }

  /**
   * Two disks in one transaction while one writer writes an increasing counter to disk a, then to
   * disk b, over and over. The targets are a consistent cut of that history: b's counter is a's or
   * one less (a's write of n happens before b's). Backups taken one after the other would hold
   * counters many apart.
   */
  @Test
  void twoDisksInOneTransactionAreOneInstant() throws Exception {
    BlockNode a = node("a");
    BlockNode b = node("b");
    JobManager jobs = new JobManager();
    Qcow2Image ta = target("ta");
    Qcow2Image tb = target("tb");
    AtomicReference<Throwable> failed = new AtomicReference<>();
    AtomicLong counter = new AtomicLong();
    java.util.concurrent.atomic.AtomicBoolean halt = new java.util.concurrent.atomic.AtomicBoolean();
    // stopped by a flag: an interrupt would close the images' channels under a write
    Thread writer = new Thread(() -> {
      ByteBuffer buf = ByteBuffer.allocate(8);
      try {
        while (!halt.get()) {
          long v = counter.incrementAndGet();
          buf.clear();
          buf.putLong(0, v);
          a.write(0, buf.duplicate());
          b.write(0, buf.duplicate());
        }
      } catch (BlockIOException | RuntimeException e) {
        failed.set(e);
      }
    });
    writer.start();
    while (counter.get() < 1000) {
      Thread.onSpinWait();
    }
    List<BackupJob> started = Transaction.of(List.of(
        Transaction.backup(jobs, a, ta, BackupOptions.of(MirrorSyncMode.full).withJobId("ja")),
        Transaction.backup(jobs, b, tb, BackupOptions.of(MirrorSyncMode.full).withJobId("jb")))).run();
    for (BackupJob j : started) {
      assertThat(j.awaitConcluded(Duration.ofSeconds(60))).isTrue();
      assertThat(j.error()).isNull();
    }
    long total = counter.get();
    halt.set(true);
    writer.join();
    assertThat(failed.get()).isNull();
    ByteBuffer va = ByteBuffer.allocate(8);
    ByteBuffer vb = ByteBuffer.allocate(8);
    ta.read(0, va);
    tb.read(0, vb);
    long ca = va.getLong(0);
    long cb = vb.getLong(0);
    assertThat(ca).as("a's counter at the instant").isPositive().isLessThan(total);
    assertThat(cb).as("b's counter: a's, or a's write of the next value came first").isBetween(ca - 1, ca);
    ta.close();
    tb.close();
    a.close();
    b.close();
  }

  @Test
  void driveBackupCreatesItsTargetAndRemovesItOnAbort() throws Exception {
    BlockNode a = node("a");
    JobManager jobs = new JobManager();
    Path made = dir.resolve("drive.qcow2");
    Path exists = dir.resolve("exists.raw");
    java.nio.file.Files.write(exists, new byte[] {1});
    assertThatThrownBy(() -> Transaction.of(List.of(
        Transaction.driveBackup(jobs, a, made, dev.blockbackup.formats.ImageFormat.QCOW2,
            BackupOptions.of(MirrorSyncMode.full).withJobId("j1")),
        Transaction.driveBackup(jobs, a, exists, dev.blockbackup.formats.ImageFormat.RAW,
            BackupOptions.of(MirrorSyncMode.full).withJobId("j2")))).run())
        .isInstanceOf(JobException.class).hasMessageContaining("File exists");
    assertThat(made).as("the first action's image removed again").doesNotExist();
    assertThat(java.nio.file.Files.readAllBytes(exists)).containsExactly(1);
    byte[] before = readAll(a);
    List<BackupJob> started = Transaction.of(List.of(Transaction.driveBackup(jobs, a, made,
        dev.blockbackup.formats.ImageFormat.QCOW2, BackupOptions.of(MirrorSyncMode.full)))).run();
    assertThat(started.get(0).awaitConcluded(Duration.ofSeconds(30))).isTrue();
    assertThat(started.get(0).error()).isNull();
    try (Qcow2Image copy = Qcow2Image.open(made, true)) { // closed by the job: no lock left
      assertThat(readAll(copy)).isEqualTo(before);
    }
    a.close();
  }

  @Test
  void groupedJobsFailTogether() throws Exception {
    BlockNode a = node("a");
    BlockNode b = node("b");
    JobManager jobs = new JobManager();
    Qcow2Image ta = target("ta");
    ErrorInjectingDevice tb = new ErrorInjectingDevice(target("tb"))
        .inject(ErrorInjectingDevice.Rule.fail(ErrorInjectingDevice.Operation.write, BlockError.EIO).at(SIZE - CLUSTER, CLUSTER));
    List<BackupJob> started = Transaction.of(List.of(
        Transaction.backup(jobs, a, ta, BackupOptions.of(MirrorSyncMode.full).withJobId("ja").withSpeed(4L << 20)),
        Transaction.backup(jobs, b, tb, BackupOptions.of(MirrorSyncMode.full).withJobId("jb"))),
        Transaction.CompletionMode.grouped).run();
    for (BackupJob j : started) {
      assertThat(j.awaitConcluded(Duration.ofSeconds(60))).isTrue();
    }
    assertThat(started.get(1).error()).as("the failing job's own error").isEqualTo("Input/output error");
    assertThat(started.get(0).isCancelled()).as("its partner is cancelled").isTrue();
    assertThat(started.get(0).error()).isEqualTo("Operation canceled");
    assertThat(a.device()).isSameAs(a.unfiltered());
    assertThat(b.device()).isSameAs(b.unfiltered());
    ta.close();
    tb.close();
    a.close();
    b.close();
  }

  @Test
  void groupedJobsThatAllSucceedAllComplete() throws Exception {
    BlockNode a = node("a");
    BlockNode b = node("b");
    JobManager jobs = new JobManager();
    Qcow2Image ta = target("ta");
    Qcow2Image tb = target("tb");
    byte[] da = readAll(a);
    byte[] db = readAll(b);
    List<BackupJob> started = Transaction.of(List.of(
        Transaction.backup(jobs, a, ta, BackupOptions.of(MirrorSyncMode.full).withJobId("ja")),
        Transaction.backup(jobs, b, tb, BackupOptions.of(MirrorSyncMode.full).withJobId("jb").withSpeed(8L << 20))),
        Transaction.CompletionMode.grouped).run();
    for (BackupJob j : started) {
      assertThat(j.awaitConcluded(Duration.ofSeconds(60))).isTrue();
      assertThat(j.error()).isNull();
    }
    assertThat(readAll(ta)).isEqualTo(da);
    assertThat(readAll(tb)).isEqualTo(db);
    ta.close();
    tb.close();
    a.close();
    b.close();
  }

  /** Random 4 KiB writes through a node until halted. */
  private static final class Writer extends Thread {
    final AtomicLong count = new AtomicLong();
    private final AtomicReference<Throwable> failed;
    private final long size;
    private final BlockNode node;
    private volatile boolean halt;

    Writer(AtomicReference<Throwable> failed, long size, BlockNode node) {
      this.failed = failed;
      this.size = size;
      this.node = node;
    }

    void halt() throws InterruptedException {
      halt = true;
      join();
    }

    @Override
    public void run() {
      SplittableRandom r = new SplittableRandom(5);
      byte[] data = new byte[4096];
      try {
        while (!halt) {
          r.nextBytes(data);
          node.write(r.nextLong(size / 4096) * 4096, ByteBuffer.wrap(data));
          count.incrementAndGet();
        }
      } catch (BlockIOException | RuntimeException e) {
        failed.set(e);
      }
    }
  }
}
