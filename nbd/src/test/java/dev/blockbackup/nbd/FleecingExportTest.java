package dev.blockbackup.nbd;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.engine.BackupJob;
import dev.blockbackup.engine.BackupOptions;
import dev.blockbackup.engine.BitmapException;
import dev.blockbackup.engine.BlockNode;
import dev.blockbackup.engine.JobException;
import dev.blockbackup.engine.JobManager;
import dev.blockbackup.engine.MirrorSyncMode;
import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.RawImage;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.NotDirectoryException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@link FleecingExport}: the snapshot export shows the disk as it was at start, byte for byte,
 * while writers change the live export under it; its dirty bitmaps are frozen at the same instant;
 * close ends the view with ESHUTDOWN and leaves no file, job or bitmap behind, and so does a start
 * that fails.
 */
@Timeout(120)
class FleecingExportTest {

  static final int CLUSTER = 64 * 1024;
  static final int SIZE = 64 * CLUSTER;

  @TempDir Path dir;
  @TempDir Path fleeceDir;

  private final JobManager jobs = new JobManager();
  private byte[] pointInTime;

  /** A live node over a raw image filled with a seeded random pattern. */
  private BlockNode disk() throws Exception {
    pointInTime = new byte[SIZE];
    new SplittableRandom(42).nextBytes(pointInTime);
    RawImage raw = RawImage.create(dir.resolve("disk.raw"), SIZE);
    raw.write(0, ByteBuffer.wrap(pointInTime));
    return BlockNode.of("drive0", raw);
  }

  private static byte[] read(BlockDevice d, long off, int len) throws BlockIOException {
    ByteBuffer b = ByteBuffer.allocate(len);
    d.read(off, b);
    return b.array();
  }

  private List<Path> fleeceFiles() throws Exception {
    try (Stream<Path> s = Files.list(fleeceDir)) {
      return s.toList();
    }
  }

  @Test
  void theSnapshotStaysThePointInTimeWhileWritersChangeTheLiveExport() throws Exception {
    BlockNode node = disk();
    FleecingExport fleece = FleecingExport.start(jobs, node, "drive0", fleeceDir, List.of());
    assertThat(fleece.liveExport().name()).isEqualTo("drive0");
    assertThat(fleece.liveExport().isReadOnly()).isFalse();
    assertThat(fleece.liveExport().device()).isSameAs(node);
    assertThat(fleece.snapshotExport().name()).isEqualTo("drive0-snapshot");
    assertThat(fleece.snapshotExport().isReadOnly()).isTrue();
    assertThat(fleece.snapshotExport().bitmaps()).isEmpty();
    assertThat(fleece.exports()).containsExactly(fleece.liveExport(), fleece.snapshotExport());
    assertThat(fleeceFiles()).containsExactly(fleece.targetPath());
    BlockDevice live = fleece.liveExport().device();
    BlockDevice snapshot = fleece.snapshotExport().device();
    assertThat(snapshot.size()).isEqualTo(SIZE);

    int writers = 4;
    int writesEach = 200;
    CountDownLatch go = new CountDownLatch(1);
    ExecutorService pool = Executors.newFixedThreadPool(writers + 1);
    try {
      List<Future<?>> done = new ArrayList<>();
      for (int w = 0; w < writers; w++) {
        int seed = w;
        done.add(pool.submit(() -> {
          SplittableRandom rnd = new SplittableRandom(1000 + seed);
          go.await();
          for (int i = 0; i < writesEach; i++) {
            // unaligned and cluster-crossing writes too: copy-before-write works in whole clusters
            int len = 1 + rnd.nextInt(2 * CLUSTER);
            long off = rnd.nextLong(SIZE - len + 1);
            byte[] data = new byte[len];
            rnd.nextBytes(data);
            live.write(off, ByteBuffer.wrap(data));
          }
          return null;
        }));
      }
      Future<Integer> reader = pool.submit(() -> {
        SplittableRandom rnd = new SplittableRandom(7);
        go.await();
        int reads = 0;
        while (!done.stream().allMatch(Future::isDone) || reads < 50) {
          int len = 1 + rnd.nextInt(3 * CLUSTER);
          int off = rnd.nextInt(SIZE - len + 1);
          assertThat(read(snapshot, off, len)).as("snapshot [%d, +%d)", off, len)
              .isEqualTo(Arrays.copyOfRange(pointInTime, off, off + len));
          reads++;
        }
        return reads;
      });
      go.countDown();
      for (Future<?> f : done) {
        f.get();
      }
      assertThat(reader.get()).isPositive();
    } finally {
      pool.shutdownNow();
    }

    assertThat(read(snapshot, 0, SIZE)).as("the whole snapshot after the writes").isEqualTo(pointInTime);
    assertThat(read(live, 0, SIZE)).as("the live disk did change").isNotEqualTo(pointInTime);
    assertThat(fleece.job().copyBeforeWriteBytes()).isPositive();

    fleece.close();
    assertThatThrownBy(() -> read(snapshot, 0, CLUSTER))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.ESHUTDOWN));
    assertThat(fleeceFiles()).isEmpty();
    assertThat(jobs.list()).isEmpty();
    fleece.close(); // idempotent
    live.write(0, ByteBuffer.wrap(new byte[CLUSTER])); // the filter is off: straight to the disk
    assertThat(read(live, 0, CLUSTER)).isEqualTo(new byte[CLUSTER]);
    node.close();
  }

  @Test
  void theSnapshotExportOffersTheBitmapFrozenAtThePointInTime() throws Exception {
    BlockNode node = disk();
    node.addBitmap("b0");
    node.write(3L * CLUSTER, ByteBuffer.wrap(new byte[100])); // dirty before: in the frozen copy
    FleecingExport fleece = FleecingExport.start(jobs, node, "drive0", fleeceDir, List.of("b0"));
    node.write(10L * CLUSTER, ByteBuffer.wrap(new byte[100])); // after: only the live bitmap has it

    assertThat(fleece.bitmapContexts()).containsExactly("qemu:dirty-bitmap:b0");
    NbdExport.ExportedBitmap exported = fleece.snapshotExport().bitmaps().get(0);
    assertThat(exported.name()).isEqualTo("b0");
    var frozen = exported.node().findBitmap("b0").orElseThrow();
    assertThat(exported.node()).isNotSameAs(node);
    assertThat(frozen.isEnabled()).isFalse();
    assertThat(frozen.granularity()).isEqualTo(node.findBitmap("b0").orElseThrow().granularity());
    assertThat(frozen.isDirty(3L * CLUSTER)).isTrue();
    assertThat(frozen.isDirty(10L * CLUSTER)).isFalse();
    assertThat(frozen.count()).isEqualTo(frozen.granularity());
    var liveBitmap = node.findBitmap("b0").orElseThrow();
    assertThat(liveBitmap.isDirty(10L * CLUSTER)).isTrue();
    assertThat(liveBitmap.isEnabled()).isTrue();

    // while a server holds the frozen copy, close cannot remove it; once released, a second close does
    BlockNode.BitmapUse served = exported.node().useBitmap("b0");
    assertThatThrownBy(fleece::close).isInstanceOf(BitmapException.class);
    assertThat(fleeceFiles()).as("the rest is done all the same").isEmpty();
    served.close();
    fleece.close();
    assertThat(exported.node().findBitmap("b0")).isEmpty();
    assertThat(node.findBitmap("b0")).as("the live bitmap stays").isPresent();
    node.close();
  }

  @Test
  void aServerOfBothExportsHoldsTheFrozenBitmapUntilItCloses() throws Exception {
    BlockNode node = disk();
    node.addBitmap("b0");
    FleecingExport fleece = FleecingExport.start(jobs, node, "drive0", fleeceDir, List.of("b0"));
    BlockNode snapshotNode = fleece.snapshotExport().bitmaps().get(0).node();
    NbdServer server = NbdServer.builder().export(fleece.liveExport()).export(fleece.snapshotExport())
        .tcp("127.0.0.1", 0).build();
    server.start();
    assertThat(server.exports()).containsOnlyKeys("drive0", "drive0-snapshot");
    assertThat(snapshotNode.findBitmap("b0").orElseThrow().isBusy()).isTrue();
    assertThat(node.findBitmap("b0").orElseThrow().isBusy()).as("the live bitmap is not exported").isFalse();
    server.close();
    fleece.close();
    assertThat(snapshotNode.findBitmap("b0")).isEmpty();
    assertThat(fleeceFiles()).isEmpty();
    node.close();
  }

  @Test
  void aMissingBitmapIsRefusedAndLeavesNothingBehind() throws Exception {
    BlockNode node = disk();
    assertThatThrownBy(() -> FleecingExport.start(jobs, node, "drive0", fleeceDir, List.of("nope")))
        .isInstanceOf(BitmapException.class).hasMessage("Dirty bitmap 'nope' not found");
    assertNothingLeft(node);
  }

  @Test
  void aDirectoryThatIsMissingOrAFileIsRefusedAndLeavesNothingBehind() throws Exception {
    BlockNode node = disk();
    assertThatThrownBy(() -> FleecingExport.start(jobs, node, "drive0", fleeceDir.resolve("none"), List.of()))
        .isInstanceOf(NoSuchFileException.class);
    Path file = Files.writeString(fleeceDir.resolve("plain"), "x");
    assertThatThrownBy(() -> FleecingExport.start(jobs, node, "drive0", file, List.of()))
        .isInstanceOf(NotDirectoryException.class);
    Files.delete(file);
    assertNothingLeft(node);
  }

  @Test
  void aBusyNodeIsRefusedAndTheFleecingImageIsDeleted() throws Exception {
    BlockNode node = disk();
    RawImage other = RawImage.create(dir.resolve("other.raw"), SIZE);
    BackupJob busy = BackupJob.create(jobs, node, other, BackupOptions.of(MirrorSyncMode.none));
    assertThatThrownBy(() -> FleecingExport.start(jobs, node, "drive0", fleeceDir, List.of()))
        .isInstanceOf(JobException.class).hasMessageContaining("is busy");
    assertThat(fleeceFiles()).isEmpty();
    busy.cancel();
    assertThat(busy.awaitConcluded(Duration.ofSeconds(30))).isTrue();
    other.close();
    assertNothingLeft(node);
  }

  @Test
  void closeDeletesOnlyTheImageItMade() throws Exception {
    BlockNode node = disk();
    Path lookalike = Files.writeString(fleeceDir.resolve("drive0-fleece-1.qcow2"), "not ours");
    FleecingExport fleece = FleecingExport.start(jobs, node, "", fleeceDir, List.of());
    assertThat(fleece.snapshotExport().name()).isEqualTo("-snapshot");
    assertThat(fleece.targetPath()).isNotEqualTo(lookalike);
    fleece.close();
    assertThat(fleeceFiles()).containsExactly(lookalike);
    node.close();
  }

  /** No file, no job, no bitmap, and the node takes a new fleece. */
  private void assertNothingLeft(BlockNode node) throws Exception {
    assertThat(fleeceFiles()).isEmpty();
    assertThat(jobs.list()).isEmpty();
    assertThat(node.queryBitmaps()).isEmpty();
    try (FleecingExport again = FleecingExport.start(jobs, node, "drive0", fleeceDir, List.of())) {
      assertThat(read(again.snapshotExport().device(), 0, CLUSTER))
          .isEqualTo(Arrays.copyOf(pointInTime, CLUSTER));
    }
    node.close();
  }
}
