package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.QemuImg;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A raw disk keeps its dirty bitmaps the way QEMU keeps them: a qcow2 metadata image made by
 * qemu-img with the raw file as its external data file (data_file_raw). Guest writes through our
 * node land in the raw file and in the bitmap; QEMU then reads the same bits, and an incremental
 * from the bitmap copies exactly the written clusters.
 */
@Tag("interop")
class RawDiskBitmapTest {

  static final long SIZE = 16L << 20;
  static final int CLUSTER = 64 * 1024;

  @TempDir Path dir;

  @Test
  void writesLandInTheRawFileAndInTheBitmapQemuReads() throws Exception {
    Path raw = dir.resolve("disk.raw");
    Path meta = dir.resolve("meta.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", "-o", "data_file=" + raw + ",data_file_raw=on", meta, SIZE).assertExit(0);
    QemuImg.io("-c", "write -q -P 5 0 " + SIZE, meta).assertExit(0);
    QemuImg.img("bitmap", "--add", meta, "b0").assertExit(0);

    long[] clusters = {2, 7, 100, 255};
    byte[] data = new byte[4096];
    new SplittableRandom(3).nextBytes(data);
    BlockNode node = BlockNode.of("drive0", Qcow2Image.open(meta, false));
    assertThat(node.findBitmap("b0")).isPresent();
    for (long c : clusters) {
      node.write(c * CLUSTER + 1000, ByteBuffer.wrap(data));
    }
    node.close();

    Map<Long, Long> expected = new LinkedHashMap<>();
    for (long c : clusters) {
      expected.put(c * CLUSTER, (long) CLUSTER);
      ByteBuffer got = ByteBuffer.allocate(data.length);
      try (FileChannel ch = FileChannel.open(raw, StandardOpenOption.READ)) {
        ch.read(got, c * CLUSTER + 1000);
      }
      assertThat(got.array()).as("cluster %d in the raw file itself", c).isEqualTo(data);
    }
    assertThat(QemuImg.dirtyRanges(meta, "b0")).as("QEMU's view of the bits").isEqualTo(expected);
    QemuImg.assertCheckClean(meta);
    QemuImg.assertIdentical(raw, "raw", meta, "qcow2");

    // an incremental from the bitmap: exactly the written clusters, over a copy of the disk as it was
    byte[] now = new byte[(int) SIZE];
    try (RawImage r = RawImage.open(raw, true)) {
      r.read(0, ByteBuffer.wrap(now));
    }
    BlockNode again = BlockNode.of("drive0", Qcow2Image.open(meta, false));
    Path inc = dir.resolve("inc.raw");
    try (RawImage before = RawImage.create(inc, SIZE)) {
      byte[] fives = new byte[(int) SIZE];
      java.util.Arrays.fill(fives, (byte) 5);
      before.write(0, ByteBuffer.wrap(fives)); // the previous full backup, in place
      BackupJob job = BackupJob.create(new JobManager(), again, before,
          BackupOptions.of(MirrorSyncMode.incremental).withBitmap("b0"));
      job.start();
      assertThat(job.awaitConcluded(Duration.ofSeconds(30))).isTrue();
      assertThat(job.error()).isNull();
      assertThat(job.currentProgress()).isEqualTo(clusters.length * (long) CLUSTER);
      byte[] got = new byte[(int) SIZE];
      before.read(0, ByteBuffer.wrap(got));
      assertThat(got).isEqualTo(now);
    }
    DirtyBitmap left = again.findBitmap("b0").orElseThrow().copyOfBits();
    assertThat(left.count()).as("cleared by the incremental's success").isZero();
    again.close();
    assertThat(QemuImg.dirtyRanges(meta, "b0")).isEmpty();
  }
}
