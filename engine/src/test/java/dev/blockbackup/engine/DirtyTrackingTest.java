package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.TreeSet;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Dirty tracking: what marks a node's bitmaps (every change made through the node, at granule
 * precision) and what does not (reads, disabled bitmaps, a backup job's own reads of the source
 * and writes to its target); during a job the frozen bitmap's successor records instead.
 */
@Timeout(60)
class DirtyTrackingTest {

  static final int G = 64 * 1024;
  static final long SIZE = 64L * G;
  static final Duration WAIT = Duration.ofSeconds(30);

  @TempDir Path dir;

  static TreeSet<Long> granules(BlockDirtyBitmap b) {
    return granules(b.copyOfBits());
  }

  static TreeSet<Long> granules(DirtyBitmap bits) {
    TreeSet<Long> out = new TreeSet<>();
    long pos = 0;
    while (pos < bits.size()) {
      long next = bits.nextDirty(pos, bits.size());
      if (next < 0) {
        break;
      }
      out.add(next / bits.granularity());
      pos = (next / bits.granularity() + 1) * bits.granularity();
    }
    return out;
  }

  static TreeSet<Long> set(long... gs) {
    TreeSet<Long> out = new TreeSet<>();
    for (long g : gs) {
      out.add(g);
    }
    return out;
  }

  @Test
  void everyChangeThroughTheNodeMarksTheTouchedGranules() throws Exception {
    Qcow2Image q = Qcow2Image.create(dir.resolve("a.qcow2"), Qcow2CreateOptions.of(SIZE));
    BlockNode node = BlockNode.of("drive0", q);
    BlockDirtyBitmap b = node.addBitmap("b0");
    BlockDirtyBitmap fine = node.addBitmap("fine", 4096, false, false);
    node.write(G - 512, ByteBuffer.allocate(1024)); // straddles granules 0 and 1
    assertThat(granules(b)).isEqualTo(set(0, 1));
    assertThat(granules(fine)).isEqualTo(set(15, 16));
    node.writeZeroes(3L * G, G);
    node.discard(5L * G + 4096, 4096);
    node.writeCompressed(7L * G, ByteBuffer.allocate(G));
    assertThat(granules(b)).isEqualTo(set(0, 1, 3, 5, 7));
    ByteBuffer r = ByteBuffer.allocate(G);
    node.read(9L * G, r);
    node.flush();
    node.blockStatus(0, SIZE);
    assertThat(granules(b)).as("reads, flushes and block status mark nothing").isEqualTo(set(0, 1, 3, 5, 7));
    node.close();
  }

  @Test
  void aDisabledBitmapMarksNothingUntilEnabled() throws Exception {
    BlockNode node = BlockNode.of("drive0", RawImage.create(dir.resolve("a.raw"), SIZE));
    BlockDirtyBitmap off = node.addBitmap("off", null, false, true);
    BlockDirtyBitmap on = node.addBitmap("on");
    node.write(0, ByteBuffer.allocate(512));
    assertThat(off.count()).isZero();
    assertThat(granules(on)).isEqualTo(set(0));
    node.enableBitmap("off");
    node.disableBitmap("on");
    node.write(2L * G, ByteBuffer.allocate(512));
    assertThat(granules(off)).isEqualTo(set(2));
    assertThat(granules(on)).isEqualTo(set(0));
    node.close();
  }

  @Test
  void aBackupJobsOwnReadsAndTargetWritesMarkNothingGuestWritesMarkTheirs() throws Exception {
    BlockNode node = BlockNode.of("drive0", RawImage.create(dir.resolve("a.raw"), SIZE));
    byte[] data = new byte[(int) SIZE];
    new SplittableRandom(3).nextBytes(data);
    node.write(0, ByteBuffer.wrap(data));
    BlockDirtyBitmap b = node.addBitmap("b0");
    // the target is a node too: its own bitmap sees the job's writes, the source's does not
    BlockNode target = BlockNode.of("target", RawImage.create(dir.resolve("t.raw"), SIZE));
    BlockDirtyBitmap tb = target.addBitmap("t0");
    BackupJob job = BackupJob.create(new JobManager(), node, target, BackupOptions.of(MirrorSyncMode.full)
        .withAutoFinalize(false));
    job.start();
    assertThat(job.awaitStatus(WAIT, JobStatus.pending)).isTrue();
    assertThat(b.count()).as("the job's reads of the source mark nothing").isZero();
    assertThat(tb.count()).as("the target's node saw the copy").isEqualTo(SIZE);
    node.write(4L * G, ByteBuffer.allocate(G));
    assertThat(granules(b)).isEqualTo(set(4));
    job.finalizeJob();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    assertThat(job.error()).isNull();
    assertThat(granules(b)).isEqualTo(set(4));
    target.close();
    node.close();
  }

  @Test
  void duringABitmapJobTheSuccessorRecordsAndTheBitmapIsFrozen() throws Exception {
    BlockNode node = BlockNode.of("drive0", RawImage.create(dir.resolve("a.raw"), SIZE));
    BlockDirtyBitmap b = node.addBitmap("b0");
    node.write(G, ByteBuffer.allocate(G));
    BlockDevice tgt = RawImage.create(dir.resolve("t.raw"), SIZE);
    BackupJob job = BackupJob.create(new JobManager(), node, tgt, BackupOptions.of(MirrorSyncMode.bitmap)
        .withBitmap("b0").withBitmapMode(BitmapSyncMode.on_success).withAutoFinalize(false));
    assertThat(b.isBusy()).isTrue();
    assertThat(b.hasSuccessor()).isTrue();
    job.start();
    assertThat(job.awaitStatus(WAIT, JobStatus.pending)).isTrue();
    node.write(10L * G, ByteBuffer.allocate(512));
    node.writeZeroes(12L * G, 2L * G);
    assertThat(granules(b)).as("the frozen bitmap keeps its bits").isEqualTo(set(1));
    List<BlockDirtyInfo> infos = new ArrayList<>(node.queryBitmaps());
    assertThat(infos).hasSize(2);
    BlockDirtyInfo anon = infos.stream().filter(i -> i.name() == null).findFirst().orElseThrow();
    BlockDirtyInfo named = infos.stream().filter(i -> "b0".equals(i.name())).findFirst().orElseThrow();
    assertThat(anon.count()).isEqualTo(3L * G);
    assertThat(anon.recording()).isTrue();
    assertThat(named.busy()).isTrue();
    assertThat(named.recording()).as("recording through its successor").isTrue();
    job.finalizeJob();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    assertThat(granules(b)).as("on-success: the successor's bits").isEqualTo(set(10, 12, 13));
    assertThat(b.isBusy()).isFalse();
    assertThat(node.queryBitmaps()).hasSize(1);
    node.write(20L * G, ByteBuffer.allocate(512));
    assertThat(granules(b)).as("the bitmap records again").isEqualTo(set(10, 12, 13, 20));
    tgt.close();
    node.close();
  }
}
