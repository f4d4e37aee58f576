package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.TreeSet;
import java.util.stream.Stream;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The bitmap a backup leaves behind, for every bitmap-mode and outcome: the matrix of QEMU's
 * iotest 257 ("bitmap-sync backups"), with its disk (a 64 MiB qcow2, so that sync=top has
 * unallocated clusters to skip), its 64 KiB granularity and its four groups of writes.
 *
 * <p>As in 257: group 0 is written before the bitmap exists, group 1 after (so the bitmap holds
 * exactly group 1's granules), then a backup runs with the bitmap. It succeeds, is cancelled, or
 * fails; success and cancel are decided while the job waits to be finalized, after group 2 is
 * written through the node (the "writes during the job"), which the frozen bitmap must not see and
 * its anonymous successor must. A failure is a target write error on granule 15, the second one
 * with data the job reads (257 fails the second source read; the job's error path is the same),
 * with one background worker, so the copy stops there: before it, granule 0 was copied and, for
 * full, the zero granules 1 to 14 were zeroed.
 *
 * <p>The expected bits are those of 257's reference output (tests/qemu-iotests/257.out in QEMU: for
 * example 1009 dirty granules after the failed full backup with bitmap-mode always), in our words: on-success keeps only the writes made during the job
 * after a success, and after a failure or cancel keeps the old bits plus those writes; never
 * always keeps the old bits plus the writes during the job; always, after a success, is like
 * on-success, and after a failure or cancel keeps the writes during the job plus everything the job
 * had not copied yet. For sync=bitmap that is group 1 without its first granule; for top, which
 * drops what the source does not allocate before it copies, groups 0 and 1 without that granule;
 * for full, whose copy walks the whole disk in order, every granule from the failed one (15) to the
 * end of the disk. Then, as in 257, group 3 is written and a second bitmap backup
 * (a retry after a failure) succeeds: with on-success and always it leaves the bitmap empty, with
 * never it leaves it as it was.
 */
@Timeout(120)
class BackupBitmapModeMatrixTest {

  static final long SIZE = 64L << 20;
  static final int G = 64 * 1024;
  static final Duration WAIT = Duration.ofSeconds(60);

  /** One write of 257: {@code size} bytes of {@code fill} at {@code offset}. */
  record Pattern(int fill, long offset, long size) {
    Pattern(int fill, long offset) {
      this(fill, offset, G);
    }

    TreeSet<Long> granules() {
      TreeSet<Long> out = new TreeSet<>();
      for (long g = offset / G; g <= (offset + size - 1) / G; g++) {
        out.add(g);
      }
      return out;
    }
  }

  static final List<List<Pattern>> GROUPS = List.of(
      List.of(new Pattern(0x49, 0x0000000), new Pattern(0x6c, 0x0100000), new Pattern(0x6f, 0x2000000),
          new Pattern(0x76, 0x3ff0000)),
      List.of(new Pattern(0x65, 0x0000000), new Pattern(0x77, 0x00f8000), new Pattern(0x72, 0x2008000),
          new Pattern(0x69, 0x3fe0000)),
      List.of(new Pattern(0x74, 0x0010000), new Pattern(0x69, 0x00e8000), new Pattern(0x6e, 0x2018000),
          new Pattern(0x67, 0x3fe0000, 2L * G)),
      List.of(new Pattern(0xaa, 0x0010000, 3L * G), new Pattern(0xbb, 0x00d8000), new Pattern(0xcc, 0x2028000),
          new Pattern(0xdd, 0x3fc0000)));

  enum Outcome {
    success,
    failure,
    cancel
  }

  @TempDir Path dir;

  static Stream<Arguments> matrix() {
    List<Arguments> rows = new ArrayList<>();
    for (BitmapSyncMode mode : BitmapSyncMode.values()) {
      for (Outcome o : Outcome.values()) {
        rows.add(Arguments.of(MirrorSyncMode.bitmap, mode, o));
      }
    }
    for (MirrorSyncMode sync : List.of(MirrorSyncMode.full, MirrorSyncMode.top)) {
      for (BitmapSyncMode mode : List.of(BitmapSyncMode.on_success, BitmapSyncMode.always)) {
        for (Outcome o : Outcome.values()) {
          rows.add(Arguments.of(sync, mode, o));
        }
      }
    }
    return rows.stream();
  }

  static TreeSet<Long> bits(int group) {
    TreeSet<Long> out = new TreeSet<>();
    GROUPS.get(group).forEach(p -> out.addAll(p.granules()));
    return out;
  }

  static TreeSet<Long> union(TreeSet<Long> a, TreeSet<Long> b) {
    TreeSet<Long> out = new TreeSet<>(a);
    out.addAll(b);
    return out;
  }

  static void write(BlockNode node, int group) throws Exception {
    for (Pattern p : GROUPS.get(group)) {
      byte[] data = new byte[(int) p.size()];
      Arrays.fill(data, (byte) p.fill());
      node.write(p.offset(), ByteBuffer.wrap(data));
    }
  }

  @ParameterizedTest(name = "sync={0}, bitmap-mode={1}, {2}")
  @MethodSource("matrix")
  void theBitmapAfterTheJobIsWhatQemuLeaves(MirrorSyncMode sync, BitmapSyncMode mode, Outcome outcome)
      throws Exception {
    BlockNode node = BlockNode.of("drive0", Qcow2Image.create(dir.resolve("img.qcow2"), Qcow2CreateOptions.of(SIZE)));
    write(node, 0);
    BlockDirtyBitmap bitmap = node.addBitmap("bitmap0", G, false, false);
    write(node, 1);
    TreeSet<Long> expected = bits(1);
    assertThat(DirtyTrackingTest.granules(bitmap)).isEqualTo(expected);

    ErrorInjectingDevice target = new ErrorInjectingDevice(RawImage.create(dir.resolve("bsync1.raw"), SIZE));
    if (outcome == Outcome.failure) {
      // the first dirty cluster is 0; the next one the copy reaches is 15 (1 MiB - 32 KiB)
      target.inject(ErrorInjectingDevice.Rule.fail(ErrorInjectingDevice.Operation.write, BlockError.EIO)
          .at(15L * G, G));
    }
    byte[][] pointInTime = readClusters(node, expected);
    BackupJob job = BackupJob.create(new JobManager(), node, target, BackupOptions.of(sync).withBitmap("bitmap0")
        .withBitmapMode(mode).withAutoFinalize(false).withMaxWorkers(1));
    job.start();
    if (outcome == Outcome.failure) {
      assertThat(job.awaitConcluded(WAIT)).isTrue();
      assertThat(job.error()).as("the injected target error fails the job").isNotNull();
      TreeSet<Long> copied = new TreeSet<>(List.of(0L));
      if (mode == BitmapSyncMode.always) {
        TreeSet<Long> notCopied = new TreeSet<>();
        switch (sync) {
          case bitmap -> notCopied.addAll(bits(1));
          case top -> notCopied.addAll(union(bits(0), bits(1)));
          default -> {
            for (long g = 15; g < SIZE / G; g++) {
              notCopied.add(g);
            }
          }
        }
        notCopied.removeAll(copied);
        expected = notCopied;
      }
    } else {
      assertThat(job.awaitStatus(WAIT, JobStatus.pending)).isTrue();
      write(node, 2);
      assertThat(DirtyTrackingTest.granules(bitmap)).as("the frozen bitmap").isEqualTo(bits(1));
      BlockDirtyInfo anon = node.queryBitmaps().stream().filter(i -> i.name() == null).findFirst().orElseThrow();
      assertThat(anon.count() / anon.granularity()).as("the successor").isEqualTo(bits(2).size());
      assertThat(anon.recording()).isTrue();
      boolean synced = outcome == Outcome.success ? mode != BitmapSyncMode.never : mode == BitmapSyncMode.always;
      expected = synced ? bits(2) : union(bits(1), bits(2));
      if (outcome == Outcome.success) {
        job.finalizeJob();
      } else {
        job.cancel();
      }
      assertThat(job.awaitConcluded(WAIT)).isTrue();
      assertThat(job.error() == null).as("job error %s", job.error()).isEqualTo(outcome == Outcome.success);
      if (outcome == Outcome.success) {
        assertThat(readClusters(target, bits(1))).as("the target holds the point in time")
            .isDeepEqualTo(pointInTime);
      }
    }
    assertThat(DirtyTrackingTest.granules(bitmap)).as("bitmap0 after the job").isEqualTo(expected);
    assertThat(node.queryBitmaps()).as("no successor is left").extracting(BlockDirtyInfo::name)
        .containsExactly("bitmap0");
    assertThat(bitmap.isBusy()).isFalse();
    assertThat(bitmap.isRecording()).isTrue();

    // 257's second backup: group 3, then a bitmap backup that succeeds (a retry after a failure)
    write(node, 3);
    expected = union(expected, bits(3));
    assertThat(DirtyTrackingTest.granules(bitmap)).isEqualTo(expected);
    TreeSet<Long> second = new TreeSet<>(expected);
    byte[][] secondPit = readClusters(node, second);
    RawImage target2 = RawImage.create(dir.resolve("bsync2.raw"), SIZE);
    BackupJob retry = BackupJob.create(new JobManager(), node, target2, BackupOptions.of(MirrorSyncMode.bitmap)
        .withBitmap("bitmap0").withBitmapMode(mode).withJobId("backup_2"));
    retry.start();
    assertThat(retry.awaitConcluded(WAIT)).isTrue();
    assertThat(retry.error()).isNull();
    assertThat(readClusters(target2, second)).isDeepEqualTo(secondPit);
    if (mode != BitmapSyncMode.never) {
      expected.clear();
    }
    assertThat(DirtyTrackingTest.granules(bitmap)).as("bitmap0 after the second backup").isEqualTo(expected);

    node.removeBitmap("bitmap0");
    assertThat(node.queryBitmaps()).isEmpty();
    target2.close();
    target.close();
    node.close();
  }

  private static byte[][] readClusters(dev.blockbackup.formats.BlockDevice d, TreeSet<Long> clusters)
      throws Exception {
    byte[][] out = new byte[clusters.size()][];
    int i = 0;
    for (long c : clusters) {
      ByteBuffer b = ByteBuffer.allocate(G);
      d.read(c * G, b);
      out[i++] = b.array();
    }
    return out;
  }
}
