package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.QemuImg;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.TreeSet;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * An incremental backup chain as QEMU's iotest 124 builds one: a full backup and a fresh bitmap
 * taken at one instant (one {@link Transaction}), then
 * rounds of random writes, each followed by a sync=incremental backup into a qcow2 whose backing
 * file is the previous backup. In the middle an incremental fails on an injected target error: the
 * bitmap keeps its bits (on-success reclaims), and a retry into a fresh image succeeds. At every
 * round the top of the chain reads exactly as the source did when that backup began, by our own
 * compare and, in the interop variant, by {@code qemu-img compare}.
 */
@Timeout(180)
class IncrementalBackupChainTest {

  static final int CLUSTER = 64 * 1024;
  static final long SIZE = 16L << 20;
  static final Duration WAIT = Duration.ofSeconds(60);

  @TempDir Path dir;

  /** One image of the chain and what it must read as. */
  record Link(Path image, byte[] pointInTime) {}

  @Test
  void eachIncrementalOnTopOfTheChainReadsAsTheSourceAtItsStart() throws Exception {
    List<Link> chain = buildChain();
    assertThat(chain).hasSize(4);
  }

  @Test
  @Tag("interop")
  void qemuImgFindsEachTopOfTheChainIdenticalToTheSource() throws Exception {
    for (Link link : buildChain()) {
      Path raw = dir.resolve(link.image().getFileName() + ".expected.raw");
      Files.write(raw, link.pointInTime());
      QemuImg.assertIdentical(link.image(), "qcow2", raw, "raw");
      QemuImg.assertCheckClean(link.image());
    }
  }

  private List<Link> buildChain() throws Exception {
    SplittableRandom random = new SplittableRandom(124);
    Qcow2Image src = Qcow2Image.create(dir.resolve("drive0.qcow2"), Qcow2CreateOptions.of(SIZE));
    BlockNode node = BlockNode.of("drive0", src);
    JobManager jobs = new JobManager();
    randomWrites(node, random, 24);
    List<Link> chain = new ArrayList<>();

    // the full backup and the bitmap at one instant
    Path full = dir.resolve("full.qcow2");
    Qcow2Image fullTarget = Qcow2Image.create(full, Qcow2CreateOptions.of(SIZE));
    BackupJob job;
    BlockDirtyBitmap bitmap;
    byte[] pit;
    pit = readAll(src); // nothing writes meanwhile: this is the transaction's instant
    job = Transaction.of(java.util.List.of(
        Transaction.bitmapAdd(node, "bitmap0", null, false, false),
        Transaction.backup(jobs, node, fullTarget, BackupOptions.of(MirrorSyncMode.full).withJobId("full")))).run().get(0);
    bitmap = node.findBitmap("bitmap0").orElseThrow();
    TreeSet<Long> during = randomWrites(node, random, 8); // copied before they land; the bitmap sees them
    awaitSuccess(job);
    fullTarget.close();
    assertThat(readAll(Qcow2Image.open(full, true), true)).isEqualTo(pit);
    assertThat(DirtyTrackingTest.granules(bitmap)).isEqualTo(during);
    chain.add(new Link(full, pit));

    Path previous = full;
    for (int round = 1; round <= 3; round++) {
      TreeSet<Long> written = randomWrites(node, random, 16);
      written.addAll(DirtyTrackingTest.granules(bitmap));
      assertThat(DirtyTrackingTest.granules(bitmap)).isEqualTo(written);
      if (round == 2) {
        Path failed = dir.resolve("inc" + round + "-failed.qcow2");
        Qcow2Image img = Qcow2Image.create(failed, Qcow2CreateOptions.of(SIZE).withBacking(previous.toString(), "qcow2"));
        ErrorInjectingDevice bad = new ErrorInjectingDevice(img);
        long lastDirty = written.last() * CLUSTER;
        bad.inject(ErrorInjectingDevice.Rule.fail(ErrorInjectingDevice.Operation.write, BlockError.ENOSPC)
            .at(lastDirty, CLUSTER));
        BackupJob failing = BackupJob.create(jobs, node, bad, BackupOptions.of(MirrorSyncMode.incremental)
            .withBitmap("bitmap0").withJobId("inc" + round + "-failed"));
        failing.start();
        assertThat(failing.awaitConcluded(WAIT)).isTrue();
        assertThat(failing.error()).as("the injected target error fails the incremental").isNotNull();
        img.close();
        assertThat(DirtyTrackingTest.granules(bitmap)).as("the bitmap is ready for a retry").isEqualTo(written);
        assertThat(bitmap.isBusy()).isFalse();
      }
      Path inc = dir.resolve("inc" + round + ".qcow2");
      Qcow2Image target = Qcow2Image.create(inc, Qcow2CreateOptions.of(SIZE).withBacking(previous.toString(), "qcow2"));
      BackupJob incremental;
      try (BlockNode.Drained d = node.drain()) {
        incremental = BackupJob.create(jobs, node, target, BackupOptions.of(MirrorSyncMode.incremental)
            .withBitmap("bitmap0").withJobId("inc" + round));
        pit = readAll(src);
      }
      TreeSet<Long> duringIncremental = randomWrites(node, random, 4);
      incremental.start();
      awaitSuccess(incremental);
      assertThat(incremental.totalProgress()).as("only the dirty clusters are copied")
          .isEqualTo((long) written.size() * CLUSTER);
      target.close();
      assertThat(readAll(Qcow2Image.open(inc, true), true)).as("round %d: the chain's top", round).isEqualTo(pit);
      assertThat(DirtyTrackingTest.granules(bitmap)).as("round %d: the writes since it began", round)
          .isEqualTo(duringIncremental);
      chain.add(new Link(inc, pit));
      previous = inc;
    }
    node.close();
    return chain;
  }

  private static void awaitSuccess(BackupJob job) throws InterruptedException {
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    assertThat(job.error()).as("job %s", job.id()).isNull();
  }

  /** {@code count} random writes of up to two clusters; returns the clusters they touched. */
  private static TreeSet<Long> randomWrites(BlockDevice d, SplittableRandom random, int count) throws Exception {
    TreeSet<Long> touched = new TreeSet<>();
    for (int i = 0; i < count; i++) {
      int len = 512 * (1 + random.nextInt(2 * CLUSTER / 512));
      long off = 512L * random.nextLong((SIZE - len) / 512 + 1);
      byte[] data = new byte[len];
      random.nextBytes(data);
      d.write(off, ByteBuffer.wrap(data));
      for (long c = off / CLUSTER; c <= (off + len - 1) / CLUSTER; c++) {
        touched.add(c);
      }
    }
    return touched;
  }

  private static byte[] readAll(BlockDevice d) throws Exception {
    return readAll(d, false);
  }

  private static byte[] readAll(BlockDevice d, boolean close) throws Exception {
    byte[] out = new byte[(int) d.size()];
    d.read(0, ByteBuffer.wrap(out));
    if (close) {
      d.close();
    }
    return out;
  }
}
