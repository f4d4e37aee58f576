package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.CountingDevice;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** A full backup of a raw disk with holes reads its data and never its holes. */
class BackupRawHolesTest {

  static final long SIZE = 64L << 20;
  static final int REGION = 1 << 20;

  @TempDir Path dir;

  @Test
  void fullBackupOfASparseRawSourceReadsNoHoleBytes() throws Exception {
    RawImage raw = RawImage.create(dir.resolve("src.raw"), SIZE);
    // 1 MiB regions, about 15% of them never written: holes aligned to any backup cluster size
    SplittableRandom r = new SplittableRandom(11);
    byte[] region = new byte[REGION];
    for (long off = 0; off < SIZE; off += REGION) {
      if (r.nextInt(100) >= 15) {
        r.nextBytes(region);
        raw.write(off, ByteBuffer.wrap(region));
      }
    }
    long dataBytes = 0;
    long holeBytes = 0;
    for (Extent e : raw.blockStatus(0, SIZE)) {
      if (e.data()) {
        dataBytes += e.length();
      } else {
        holeBytes += e.length();
      }
    }
    assertThat(dataBytes + holeBytes).isEqualTo(SIZE);
    assertThat(holeBytes).as("the source has holes").isGreaterThanOrEqualTo(4L * REGION);
    byte[] before = readAll(raw);

    CountingDevice src = new CountingDevice(raw);
    Qcow2Image tgt = Qcow2Image.create(dir.resolve("tgt.qcow2"), Qcow2CreateOptions.of(SIZE));
    BlockNode node = BlockNode.of("drive0", src);
    BackupJob job = BackupJob.create(new JobManager(), node, tgt, BackupOptions.of(MirrorSyncMode.full));
    job.start();
    assertThat(job.awaitConcluded(Duration.ofSeconds(60))).isTrue();
    assertThat(job.error()).isNull();

    assertThat(src.readBytes.get()).as("bytes read from the source").isEqualTo(dataBytes);
    assertThat(readAll(tgt)).isEqualTo(before);
    tgt.close();
    node.close();
  }

  private static byte[] readAll(BlockDevice d) throws Exception {
    ByteBuffer b = ByteBuffer.allocate((int) d.size());
    d.read(0, b);
    return b.array();
  }
}
