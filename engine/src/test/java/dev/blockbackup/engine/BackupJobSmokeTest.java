package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Arrays;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** One backup of each sync mode while one writer runs: the target holds the point in time. */
class BackupJobSmokeTest {

  static final long SIZE = 8L << 20;

  @TempDir Path dir;

  private static byte[] readAll(dev.blockbackup.formats.BlockDevice d) throws Exception {
    ByteBuffer b = ByteBuffer.allocate((int) d.size());
    d.read(0, b);
    return b.array();
  }

  private static void fill(dev.blockbackup.formats.BlockDevice d, long seed) throws Exception {
    SplittableRandom r = new SplittableRandom(seed);
    byte[] buf = new byte[(int) d.size()];
    r.nextBytes(buf);
    Arrays.fill(buf, 1 << 20, 2 << 20, (byte) 0); // a zero stretch
    d.write(0, ByteBuffer.wrap(buf));
  }

  @Test
  void fullBackupWhileWritingKeepsThePointInTime() throws Exception {
    RawImage src = RawImage.create(dir.resolve("src.raw"), SIZE);
    fill(src, 1);
    byte[] before = readAll(src);
    Qcow2Image tgt = Qcow2Image.create(dir.resolve("tgt.qcow2"), Qcow2CreateOptions.of(SIZE));
    BlockNode node = BlockNode.of("drive0", src);
    JobManager jobs = new JobManager();
    BackupJob job = BackupJob.create(jobs, node, tgt, BackupOptions.of(MirrorSyncMode.full).withSpeed(16L << 20));
    job.start();
    SplittableRandom r = new SplittableRandom(7);
    for (int i = 0; i < 200; i++) {
      byte[] w = new byte[1 + r.nextInt(100_000)];
      r.nextBytes(w);
      long off = r.nextLong(SIZE - w.length);
      node.write(off, ByteBuffer.wrap(w));
    }
    assertThat(job.awaitConcluded(Duration.ofSeconds(30))).isTrue();
    assertThat(job.error()).isNull();
    assertThat(readAll(tgt)).isEqualTo(before);
    assertThat(node.device()).isSameAs(node.unfiltered());
    assertThat(job.currentProgress()).isEqualTo(job.totalProgress());
    tgt.close();
    node.close();
  }

  @Test
  void copyBeforeWriteCountsWhatGuestWritesCopied() throws Exception {
    RawImage src = RawImage.create(dir.resolve("src.raw"), SIZE);
    fill(src, 3);
    RawImage tgt = RawImage.create(dir.resolve("tgt.raw"), SIZE);
    BlockNode node = BlockNode.of("drive0", src);
    JobManager jobs = new JobManager();
    BackupJob job = BackupJob.create(jobs, node, tgt, BackupOptions.of(MirrorSyncMode.none));
    job.start();
    int cluster = job.clusterSize();
    assertThat(job.copyBeforeWriteBytes()).isZero();
    node.write(0, ByteBuffer.allocate(4096));
    node.write(5L * cluster + 100, ByteBuffer.allocate(4096)); // one cluster
    node.write(9L * cluster - 10, ByteBuffer.allocate(20)); // two clusters
    node.write(10, ByteBuffer.allocate(10)); // copied already
    assertThat(job.copyBeforeWriteBytes()).isEqualTo(4L * cluster);
    assertThat(job.currentProgress()).isEqualTo(4L * cluster);
    job.cancel();
    assertThat(job.awaitConcluded(Duration.ofSeconds(30))).isTrue();
    tgt.close();
    node.close();
  }

  @Test
  void syncNoneSnapshotViewShowsThePointInTime() throws Exception {
    RawImage src = RawImage.create(dir.resolve("src.raw"), SIZE);
    fill(src, 2);
    byte[] before = readAll(src);
    RawImage tgt = RawImage.create(dir.resolve("tgt.raw"), SIZE);
    BlockNode node = BlockNode.of("drive0", src);
    JobManager jobs = new JobManager();
    BackupJob job = BackupJob.create(jobs, node, tgt, BackupOptions.of(MirrorSyncMode.none));
    job.start();
    SplittableRandom r = new SplittableRandom(8);
    for (int i = 0; i < 100; i++) {
      byte[] w = new byte[1 + r.nextInt(100_000)];
      r.nextBytes(w);
      node.write(r.nextLong(SIZE - w.length), ByteBuffer.wrap(w));
    }
    node.writeZeroes(0, 4096);
    node.discard(SIZE - 70_000, 70_000);
    assertThat(readAll(job.snapshotView())).isEqualTo(before);
    job.cancel();
    assertThat(job.awaitConcluded(Duration.ofSeconds(30))).isTrue();
    assertThat(job.error()).isEqualTo("Operation canceled");
    tgt.close();
    node.close();
  }
}
