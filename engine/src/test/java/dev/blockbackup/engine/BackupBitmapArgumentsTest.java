package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.formats.RawImage;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * blockdev-backup's checks of sync, bitmap and bitmap-mode, with QEMU's messages: the table of
 * refused invocations is iotest 257's "API failure tests" (every sync mode against no bitmap, a
 * missing one and a real one, with each bitmap-mode and none). A refused backup leaves the bitmap
 * and the node as they were.
 */
@Timeout(60)
class BackupBitmapArgumentsTest {

  static final long SIZE = 4L << 20;
  static final Duration WAIT = Duration.ofSeconds(30);

  @TempDir Path dir;
  BlockNode node;
  RawImage target;
  JobManager jobs;

  @BeforeEach
  void open() throws Exception {
    node = BlockNode.of("drive0", RawImage.create(dir.resolve("a.raw"), SIZE));
    target = RawImage.create(dir.resolve("t.raw"), SIZE);
    jobs = new JobManager();
    node.addBitmap("bitmap0", 65536, false, false);
  }

  @AfterEach
  void close() throws Exception {
    target.close();
    node.close();
  }

  static Stream<Arguments> refused() {
    List<Arguments> rows = new ArrayList<>();
    String[] modes = {"on-success", "always", "never", null};
    for (String m : modes) {
      rows.add(Arguments.of("incremental", null, m, "must provide a valid bitmap name for 'incremental' sync mode"));
      rows.add(Arguments.of("bitmap", null, m, "must provide a valid bitmap name for 'bitmap' sync mode"));
      rows.add(Arguments.of("bitmap", "bitmap404", m, "Bitmap 'bitmap404' could not be found"));
      for (String sync : List.of("full", "top", "none")) {
        rows.add(Arguments.of(sync, "bitmap404", m, "Bitmap 'bitmap404' could not be found"));
        if (m != null) {
          rows.add(Arguments.of(sync, null, m, "Cannot specify bitmap sync mode without a bitmap"));
          rows.add(Arguments.of("none", "bitmap0", m, "sync mode 'none' does not produce meaningful bitmap outputs"));
        }
      }
    }
    rows.add(Arguments.of("incremental", "bitmap404", "on-success", "Bitmap 'bitmap404' could not be found"));
    rows.add(Arguments.of("incremental", "bitmap404", null, "Bitmap 'bitmap404' could not be found"));
    for (String b : new String[] {"bitmap404", "bitmap0"}) {
      for (String m : new String[] {"always", "never"}) {
        rows.add(Arguments.of("incremental", b, m,
            "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'"));
      }
    }
    for (String sync : List.of("bitmap", "full", "top", "none")) {
      rows.add(Arguments.of(sync, "bitmap0", null, "Bitmap sync mode must be given when providing a bitmap"));
    }
    for (String sync : List.of("full", "top")) {
      rows.add(Arguments.of(sync, "bitmap0", "never",
          "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode '" + sync + "'"));
    }
    return rows.stream().distinct();
  }

  @ParameterizedTest(name = "sync={0}, bitmap={1}, bitmap-mode={2}")
  @MethodSource("refused")
  void qemuRefusesTheseCombinations(String sync, String bitmap, String mode, String message) {
    BackupOptions o = BackupOptions.of(MirrorSyncMode.parse(sync));
    if (bitmap != null) {
      o = o.withBitmap(bitmap);
    }
    if (mode != null) {
      o = o.withBitmapMode(BitmapSyncMode.parse(mode));
    }
    BackupOptions options = o;
    assertThatThrownBy(() -> BackupJob.create(jobs, node, target, options)).isInstanceOf(JobException.class)
        .hasMessage(message);
    assertUntouched();
  }

  @Test
  void qemuAcceptsBitmapsWithFullTopAndBitmapInTheseModes() throws Exception {
    String[][] accepted = {{"incremental", null}, {"incremental", "on-success"}, {"bitmap", "on-success"},
        {"bitmap", "never"}, {"bitmap", "always"}, {"full", "on-success"}, {"full", "always"},
        {"top", "on-success"}, {"top", "always"}};
    for (String[] a : accepted) {
      BackupOptions o = BackupOptions.of(MirrorSyncMode.parse(a[0])).withBitmap("bitmap0");
      if (a[1] != null) {
        o = o.withBitmapMode(BitmapSyncMode.parse(a[1]));
      }
      BackupJob job = BackupJob.create(jobs, node, target, o.withJobId("j-" + a[0] + "-" + a[1]));
      assertThat(job.bitmapMode()).isEqualTo(a[1] == null ? BitmapSyncMode.on_success : BitmapSyncMode.parse(a[1]));
      assertThat(node.findBitmap("bitmap0").orElseThrow().isBusy()).isTrue();
      job.cancel();
      assertThat(job.awaitConcluded(WAIT)).isTrue();
      assertUntouched();
    }
  }

  @Test
  void aBusyBitmapIsRefusedAndFreeAgainAfterwards() throws Exception {
    try (BlockNode.BitmapUse use = node.useBitmap("bitmap0")) {
      assertThatThrownBy(() -> BackupJob.create(jobs, node, target, BackupOptions.of(MirrorSyncMode.incremental)
          .withBitmap("bitmap0"))).isInstanceOf(BitmapException.class)
          .hasMessage("Bitmap 'bitmap0' is currently in use by another operation and cannot be used");
    }
    BackupJob job = BackupJob.create(jobs, node, target, BackupOptions.of(MirrorSyncMode.incremental)
        .withBitmap("bitmap0"));
    job.cancel();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
  }

  @Test
  void aReadonlyBitmapServesOnlyModeNeverAndAnInconsistentOneNothing() throws Exception {
    node.attachStoredBitmap("ro", new DirtyBitmap(SIZE, 65536), true, false, true);
    node.attachStoredBitmap("bad", new DirtyBitmap(SIZE, 65536), true, true, false);
    assertThatThrownBy(() -> BackupJob.create(jobs, node, target, BackupOptions.of(MirrorSyncMode.bitmap)
        .withBitmap("ro").withBitmapMode(BitmapSyncMode.on_success)))
        .hasMessage("Bitmap 'ro' is readonly and cannot be modified");
    assertThatThrownBy(() -> BackupJob.create(jobs, node, target, BackupOptions.of(MirrorSyncMode.bitmap)
        .withBitmap("bad").withBitmapMode(BitmapSyncMode.never)))
        .hasMessage("Bitmap 'bad' is inconsistent and cannot be used");
    BackupJob job = BackupJob.create(jobs, node, target, BackupOptions.of(MirrorSyncMode.bitmap)
        .withBitmap("ro").withBitmapMode(BitmapSyncMode.never));
    job.start();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    assertThat(job.error()).isNull();
    assertThat(node.findBitmap("ro").orElseThrow().isBusy()).isFalse();
  }

  @Test
  void aBitmapOfAnyGranularityCopiesWholeJobClusters() throws Exception {
    node.addBitmap("fine", 4096, false, false);
    node.addBitmap("coarse", 1 << 20, false, false);
    node.write(70_000, ByteBuffer.allocate(4096)); // inside job cluster 1 (64 KiB), and in the first MiB
    BackupJob fine = BackupJob.create(jobs, node, target, BackupOptions.of(MirrorSyncMode.bitmap)
        .withBitmap("fine").withBitmapMode(BitmapSyncMode.never).withJobId("fine"));
    fine.start();
    assertThat(fine.awaitConcluded(WAIT)).isTrue();
    assertThat(fine.totalProgress()).as("one job cluster").isEqualTo(65536);
    BackupJob coarse = BackupJob.create(jobs, node, target, BackupOptions.of(MirrorSyncMode.bitmap)
        .withBitmap("coarse").withBitmapMode(BitmapSyncMode.never).withJobId("coarse"));
    coarse.start();
    assertThat(coarse.awaitConcluded(WAIT)).isTrue();
    assertThat(coarse.totalProgress()).as("the bitmap's 1 MiB granule").isEqualTo(1 << 20);
  }

  private void assertUntouched() {
    BlockDirtyBitmap b = node.findBitmap("bitmap0").orElseThrow();
    assertThat(b.isBusy()).isFalse();
    assertThat(b.hasSuccessor()).isFalse();
    assertThat(b.isRecording()).isTrue();
    assertThat(node.queryBitmaps()).extracting(BlockDirtyInfo::name).doesNotContainNull();
    assertThat(jobs.list()).isEmpty();
  }
}
