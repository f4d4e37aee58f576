package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;

import com.fasterxml.jackson.databind.JsonNode;
import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.ForwardingBlockDevice;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.WriteFlag;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.QemuImg;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

@Timeout(120)
class BlockCopyTest {

  static final int C = BackupJob.MIN_CLUSTER_SIZE;

  @TempDir Path dir;

  /** Counts, per job cluster, how often the target was written there. */
  static final class CountingTarget extends ForwardingBlockDevice {
    final ConcurrentHashMap<Long, AtomicInteger> writes = new ConcurrentHashMap<>();
    final AtomicInteger zeroWrites = new AtomicInteger();
    final AtomicInteger dataWrites = new AtomicInteger();

    CountingTarget(BlockDevice d) {
      super(d);
    }

    private void count(long off, long len) {
      for (long c = off / C; c * C < off + len; c++) {
        writes.computeIfAbsent(c, k -> new AtomicInteger()).incrementAndGet();
      }
    }

    @Override
    public void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
      count(offset, src.remaining());
      dataWrites.incrementAndGet();
      super.write(offset, src, flags);
    }

    @Override
    public void writeZeroes(long offset, long length, WriteFlag... flags) throws BlockIOException {
      count(offset, length);
      zeroWrites.incrementAndGet();
      super.writeZeroes(offset, length, flags);
    }

    @Override
    public void writeCompressed(long offset, ByteBuffer cluster) throws BlockIOException {
      count(offset, cluster.remaining());
      super.writeCompressed(offset, cluster);
    }
  }

  private static byte[] readAll(BlockDevice d) throws Exception {
    ByteBuffer b = ByteBuffer.allocate((int) d.size());
    d.read(0, b);
    return b.array();
  }

  @Test
  void everyClusterIsCopiedOnceWhenGuestsAndTheCopierRace() throws Exception {
    long size = 16L << 20;
    RawImage src = RawImage.create(dir.resolve("src.raw"), size);
    byte[] init = new byte[(int) size];
    new SplittableRandom(3).nextBytes(init);
    src.write(0, ByteBuffer.wrap(init));
    CountingTarget tgt = new CountingTarget(RawImage.create(dir.resolve("tgt.raw"), size));
    BlockNode node = BlockNode.of("drive0", src);
    BackupJob job = BackupJob.create(new JobManager(), node, tgt,
        BackupOptions.of(MirrorSyncMode.full).withMaxWorkers(4).withMaxChunk(2 * C));
    job.start();
    List<Thread> guests = new ArrayList<>();
    for (int g = 0; g < 4; g++) {
      int seed = g;
      Thread t = new Thread(() -> {
        SplittableRandom r = new SplittableRandom(seed);
        try {
          for (int i = 0; i < 300; i++) {
            // the same few clusters from every thread, so copies collide
            long off = r.nextInt(64) * (long) C + r.nextInt(C - 100);
            node.write(off, ByteBuffer.wrap(new byte[] {(byte) seed, 1, 2, 3}));
          }
        } catch (BlockIOException e) {
          throw new RuntimeException(e);
        }
      });
      t.start();
      guests.add(t);
    }
    for (Thread t : guests) {
      t.join();
    }
    assertThat(job.awaitConcluded(Duration.ofSeconds(60))).isTrue();
    assertThat(job.error()).isNull();
    assertThat(readAll(tgt)).isEqualTo(init);
    assertThat(tgt.writes).hasSize((int) (size / C));
    assertThat(tgt.writes.values()).allSatisfy(n -> assertThat(n.get()).isEqualTo(1));
    tgt.close();
    node.close();
  }

  @Test
  @Tag("interop")
  void zeroDataBecomesWriteZeroesAndTheTargetStaysSparse() throws Exception {
    long size = 8L << 20;
    Path s = dir.resolve("src.raw");
    RawImage src = RawImage.create(s, size);
    byte[] data = new byte[C];
    new SplittableRandom(5).nextBytes(data);
    src.write(0, ByteBuffer.wrap(data));
    src.write(5L * C, ByteBuffer.wrap(new byte[C])); // zeros written as data
    src.write(7L * C, ByteBuffer.wrap(data));
    Path t = dir.resolve("tgt.qcow2");
    CountingTarget tgt = new CountingTarget(Qcow2Image.create(t, Qcow2CreateOptions.of(size)));
    BlockNode node = BlockNode.of("drive0", src);
    BackupJob job = BackupJob.create(new JobManager(), node, tgt, BackupOptions.of(MirrorSyncMode.full));
    job.start();
    assertThat(job.awaitConcluded(Duration.ofSeconds(60))).isTrue();
    assertThat(job.error()).isNull();
    assertThat(tgt.dataWrites.get()).isEqualTo(2); // clusters 0 and 7 only
    tgt.close();
    node.close();
    QemuImg.assertCheckClean(t);
    QemuImg.assertIdentical(s, "raw", t, "qcow2");
    for (QemuImg.MapEntry e : QemuImg.map(t, "qcow2")) {
      boolean dataCluster = e.start() < C || e.start() >= 7L * C && e.start() < 8L * C;
      assertThat(e.data()).as("map entry %s", e).isEqualTo(dataCluster);
    }
  }

  @Test
  @Tag("interop")
  void aCompressedBackupWritesCompressedClusters() throws Exception {
    long size = 4L << 20;
    Path s = dir.resolve("src.raw");
    RawImage src = RawImage.create(s, size);
    byte[] text = new byte[(int) size];
    for (int i = 0; i < text.length; i++) {
      text[i] = (byte) ("copy before write ".charAt(i % 18));
    }
    src.write(0, ByteBuffer.wrap(text));
    Path t = dir.resolve("tgt.qcow2");
    Qcow2Image tgt = Qcow2Image.create(t, Qcow2CreateOptions.of(size));
    BlockNode node = BlockNode.of("drive0", src);
    BackupJob job = BackupJob.create(new JobManager(), node, tgt,
        BackupOptions.of(MirrorSyncMode.full).withCompress(true));
    job.start();
    // guest writes meanwhile take the copy-before-write path, compressed too
    node.write(3L * C + 7, ByteBuffer.wrap(new byte[] {9, 9, 9}));
    assertThat(job.awaitConcluded(Duration.ofSeconds(60))).isTrue();
    assertThat(job.error()).isNull();
    tgt.close();
    node.close();
    QemuImg.assertCheckClean(t);
    JsonNode check = QemuImg.run("qemu-img", "check", "--output=json", t.toString()).assertExit(0).json();
    assertThat(check.path("compressed-clusters").asLong()).isEqualTo(size / C);
    // the target holds the point in time, not the guest's write
    byte[] back = readAll(Qcow2Image.open(t, true));
    assertThat(back).isEqualTo(text);
  }
}
