package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.ForwardingBlockDevice;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.CountingDevice;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Arrays;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** A backup's work follows the data, not the virtual size: empty TiB and PiB disks. */
class BackupScaleTest {

  static final int CLUSTER = 64 * 1024;
  static final long TIB = 1L << 40;

  @TempDir Path dir;

  /** Calls made of the source, and what the backup left on the target. */
  record Outcome(long sourceCalls, long targetDataBytes) {}

  /** A qcow2 of {@code size} with one cluster of data at the start, the middle and the end. */
  private Path sourceWithThreeClusters(String name, long size) throws Exception {
    Path p = dir.resolve(name);
    try (Qcow2Image img = Qcow2Image.create(p, Qcow2CreateOptions.of(size))) {
      for (long off : offsets(size)) {
        img.write(off, cluster(off));
      }
    }
    return p;
  }

  private static long[] offsets(long size) {
    return new long[] {0, size / 2, size - CLUSTER};
  }

  private static ByteBuffer cluster(long off) {
    byte[] b = new byte[CLUSTER];
    Arrays.fill(b, (byte) (off / CLUSTER % 251 + 1));
    return ByteBuffer.wrap(b);
  }

  private Outcome fullBackup(long size) throws Exception {
    Path src = sourceWithThreeClusters("src-" + size + ".qcow2", size);
    try (Qcow2Image s = Qcow2Image.open(src, true);
        Qcow2Image t = Qcow2Image.create(dir.resolve("tgt-" + size + ".qcow2"), Qcow2CreateOptions.of(size))) {
      CountingDevice counting = new CountingDevice(s);
      BlockNode node = BlockNode.of("drive0", counting);
      BackupJob job = BackupJob.create(new JobManager(), node, t, BackupOptions.of(MirrorSyncMode.full));
      job.start();
      assertThat(job.awaitConcluded(Duration.ofMinutes(2))).isTrue();
      assertThat(job.error()).isNull();
      assertThat(job.currentProgress()).isEqualTo(size).isEqualTo(job.totalProgress());
      for (long off : offsets(size)) {
        ByteBuffer got = ByteBuffer.allocate(CLUSTER);
        t.read(off, got);
        assertThat(got.flip()).as("cluster at %d", off).isEqualTo(cluster(off));
      }
      long data = 0;
      for (long pos = 0; pos < size; ) {
        for (Extent e : t.blockStatus(pos, size - pos)) {
          data += e.data() ? e.length() : 0;
          pos = e.end();
        }
      }
      return new Outcome(counting.sourceCalls(), data);
    }
  }

  @Test
  void fullBackupOfAnAlmostEmptyQcow2AsksTheSourceAsOftenAtFourTebibytesAsAtOne() throws Exception {
    Outcome small = fullBackup(TIB);
    Outcome large = fullBackup(4 * TIB);
    assertThat(large.sourceCalls()).isEqualTo(small.sourceCalls()).isLessThan(30);
    assertThat(small.targetDataBytes()).isEqualTo(3L * CLUSTER);
    assertThat(large.targetDataBytes()).isEqualTo(3L * CLUSTER);
  }

  /** 2 PiB is qcow2's largest image with 64 KiB clusters: 2^35 job clusters in the copy bitmap. */
  @Test
  void fullBackupOfATwoPebibyteQcow2Completes() throws Exception {
    Outcome o = fullBackup(1L << 51);
    assertThat(o.targetDataBytes()).isEqualTo(3L * CLUSTER);
  }

  /** A device that claims a size no job can track (the content is never reached). */
  static final class Huge extends ForwardingBlockDevice {
    Huge(BlockDevice d) {
      super(d);
    }

    @Override
    public long size() {
      return 1L << 62;
    }
  }

  @Test
  void aSourceBeyondTheCopyBitmapLimitIsRefusedUpFrontNamingSizeAndLimit() throws Exception {
    try (RawImage a = RawImage.create(dir.resolve("a.raw"), 1 << 20);
        RawImage b = RawImage.create(dir.resolve("b.raw"), 1 << 20)) {
      BlockDevice source = new Huge(a);
      BlockNode node = BlockNode.of("drive0", source);
      JobManager jobs = new JobManager();
      assertThatThrownBy(() -> BackupJob.create(jobs, node, new Huge(b), BackupOptions.of(MirrorSyncMode.full)))
          .isInstanceOf(JobException.class)
          .hasMessageContaining(String.valueOf(1L << 62))
          .hasMessageContaining(String.valueOf(BackupJob.maxSize(CLUSTER)));
      assertThat(jobs.list()).isEmpty();
      assertThat(node.device()).isSameAs(node.unfiltered());
    }
    assertThat(BackupJob.maxSize(CLUSTER)).isEqualTo(16L << 50);
  }
}
