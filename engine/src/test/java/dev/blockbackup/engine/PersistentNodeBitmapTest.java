package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.qcow2.Qcow2Bitmap;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.QemuImg;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A node over a qcow2 image and the image's persistent bitmaps: the node's bitmaps are the image's,
 * so what writes, jobs and bitmap commands do to them through the node is what the image stores.
 */
class PersistentNodeBitmapTest {

  static final long SIZE = 16L << 20;
  static final int CLUSTER = 64 * 1024;

  @TempDir Path dir;

  private Path image(String name) throws Exception {
    Path p = dir.resolve(name);
    try (Qcow2Image img = Qcow2Image.create(p, Qcow2CreateOptions.of(SIZE))) {
      byte[] data = new byte[(int) SIZE];
      new SplittableRandom(1).nextBytes(data);
      img.write(0, ByteBuffer.wrap(data));
    }
    return p;
  }

  private static Qcow2Bitmap stored(Path p, String name) throws Exception {
    return Qcow2Image.inspectBitmaps(p).stream().filter(b -> b.name().equals(name)).findFirst().orElse(null);
  }

  @Test
  void storedBitmapsBecomeTheNodesAndKeepItsChanges() throws Exception {
    Path p = image("disk.qcow2");
    try (Qcow2Image img = Qcow2Image.open(p, false)) {
      img.addBitmap("old", 65536, true);
    }
    BlockNode node = BlockNode.of("drive0", Qcow2Image.open(p, false));
    BlockDirtyBitmap old = node.findBitmap("old").orElseThrow();
    assertThat(old.isPersistent()).isTrue();
    assertThat(old.isRecording()).isTrue();
    node.write(2L * CLUSTER, ByteBuffer.allocate(10));
    node.addBitmap("new", null, true, false);
    node.write(5L * CLUSTER, ByteBuffer.allocate(10));
    node.addBitmap("off", null, true, false);
    node.disableBitmap("off");
    node.write(7L * CLUSTER, ByteBuffer.allocate(10));
    node.addBitmap("temporary", null, false, false);
    node.close();

    assertThat(stored(p, "old").bitmap().count()).isEqualTo(3L * CLUSTER);
    assertThat(stored(p, "new").bitmap().count()).isEqualTo(2L * CLUSTER);
    assertThat(stored(p, "new").bitmap().isDirty(2L * CLUSTER)).isFalse();
    assertThat(stored(p, "off").enabled()).isFalse();
    assertThat(stored(p, "off").bitmap().count()).isZero();
    assertThat(stored(p, "temporary")).as("a bitmap that is not persistent is not stored").isNull();

    BlockNode again = BlockNode.of("drive0", Qcow2Image.open(p, false));
    again.removeBitmap("old");
    again.close();
    assertThat(stored(p, "old")).isNull();
    assertThat(stored(p, "new")).isNotNull();
  }

  /**
   * A full backup and a persistent bitmap, then writes, then a later process's incremental from
   * that stored bitmap: it copies exactly the written clusters, and on success the stored bitmap
   * starts over from the incremental's point in time.
   */
  @Test
  void anIncrementalFromAStoredBitmapCopiesWhatWasWritten() throws Exception {
    Path p = image("disk.qcow2");
    JobManager jobs = new JobManager();
    Path full = dir.resolve("full.qcow2");
    BlockNode node = BlockNode.of("drive0", Qcow2Image.open(p, false));
    try (Qcow2Image tgt = Qcow2Image.create(full, Qcow2CreateOptions.of(SIZE))) {
      java.util.List<BackupJob> started = Transaction.of(java.util.List.of(
          Transaction.bitmapAdd(node, "inc", null, true, false),
          Transaction.backup(jobs, node, tgt, BackupOptions.of(MirrorSyncMode.full)))).run();
      assertThat(started.get(0).awaitConcluded(Duration.ofSeconds(30))).isTrue();
      assertThat(started.get(0).error()).isNull();
    }
    long[] written = {1, 4, 9, 200};
    for (long c : written) {
      node.write(c * CLUSTER + 100, ByteBuffer.wrap(new byte[] {1, 2, 3}));
    }
    byte[] pointInTime = new byte[(int) SIZE];
    node.read(0, ByteBuffer.wrap(pointInTime));
    node.close();

    BlockNode later = BlockNode.of("drive0", Qcow2Image.open(p, false));
    assertThat(later.findBitmap("inc").orElseThrow().count()).isEqualTo(written.length * (long) CLUSTER);
    Path inc = dir.resolve("inc.qcow2");
    try (Qcow2Image tgt = Qcow2Image.create(inc, Qcow2CreateOptions.of(SIZE).withBacking(full.toString(), "qcow2"))) {
      BackupJob job = BackupJob.create(jobs, later, tgt,
          BackupOptions.of(MirrorSyncMode.incremental).withBitmap("inc"));
      job.start();
      assertThat(job.awaitConcluded(Duration.ofSeconds(30))).isTrue();
      assertThat(job.error()).isNull();
      assertThat(job.currentProgress()).isEqualTo(written.length * (long) CLUSTER);
      byte[] chain = new byte[(int) SIZE];
      tgt.read(0, ByteBuffer.wrap(chain));
      assertThat(chain).as("the incremental over the full backup is the disk at its point in time")
          .isEqualTo(pointInTime);
    }
    later.write(3L * CLUSTER, ByteBuffer.allocate(1));
    later.close();
    Qcow2Bitmap after = stored(p, "inc");
    assertThat(after.bitmap().count()).as("only the write after the incremental").isEqualTo(CLUSTER);
    assertThat(after.bitmap().isDirty(3L * CLUSTER)).isTrue();
  }

  @Test
  void aBitmapNotStoredCleanlyIsRefusedForAnIncremental() throws Exception {
    Path p = image("disk.qcow2");
    Path copy = dir.resolve("crashed.qcow2");
    try (Qcow2Image img = Qcow2Image.open(p, false)) {
      img.addBitmap("b0", 65536, true);
    }
    try (Qcow2Image img = Qcow2Image.open(p, false)) {
      img.write(0, ByteBuffer.allocate(512));
      // the file as a crash would leave it: the bitmap is marked in use while the image is open
      Files.copy(p, copy);
    }
    BlockNode node = BlockNode.of("drive0", Qcow2Image.open(copy, false));
    BlockDirtyBitmap b0 = node.findBitmap("b0").orElseThrow();
    assertThat(b0.isInconsistent()).isTrue();
    try (Qcow2Image tgt = Qcow2Image.create(dir.resolve("t.qcow2"), Qcow2CreateOptions.of(SIZE))) {
      assertThatThrownBy(() -> BackupJob.create(new JobManager(), node, tgt,
          BackupOptions.of(MirrorSyncMode.incremental).withBitmap("b0")))
          .isInstanceOf(BitmapException.class)
          .hasMessage("Bitmap 'b0' is inconsistent and cannot be used")
          .extracting(e -> ((BitmapException) e).hint())
          .isEqualTo("Try block-dirty-bitmap-remove to delete this bitmap from disk");
    }
    node.removeBitmap("b0");
    node.close();
    assertThat(stored(copy, "b0")).isNull();
  }

  @Test
  @Tag("interop")
  void qemuImgSeesTheNodesPersistentBitmaps() throws Exception {
    Path p = image("disk.qcow2");
    BlockNode node = BlockNode.of("drive0", Qcow2Image.open(p, false));
    node.addBitmap("b0", 4096, true, false);
    node.write(1L << 20, ByteBuffer.allocate(4096));
    node.close();
    String bitmaps = QemuImg.info(p).path("format-specific").path("data").path("bitmaps").toString();
    assertThat(bitmaps).isEqualTo("[{\"flags\":[\"auto\"],\"name\":\"b0\",\"granularity\":4096}]");
    QemuImg.assertCheckClean(p);
  }
}
