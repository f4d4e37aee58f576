package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * QEMU's rules for the block-dirty-bitmap commands on a node, each with QEMU's error text: names,
 * granularity, persistence, and what a busy, readonly or inconsistent bitmap refuses.
 */
class BlockDirtyBitmapRulesTest {

  static final long SIZE = 4L << 20;
  static final String BUSY = "Bitmap 'b0' is currently in use by another operation and cannot be used";
  static final String READONLY = "Bitmap 'ro' is readonly and cannot be modified";
  static final String INCONSISTENT = "Bitmap 'bad' is inconsistent and cannot be used";

  @TempDir Path dir;
  BlockNode node;

  @BeforeEach
  void open() throws Exception {
    node = BlockNode.of("drive0", RawImage.create(dir.resolve("a.raw"), SIZE));
  }

  @AfterEach
  void close() throws Exception {
    node.close();
  }

  @Test
  void addUsesQemusDefaultsAndListsNewestFirst() {
    BlockDirtyBitmap b0 = node.addBitmap("b0");
    node.addBitmap("b1", 512, false, true);
    assertThat(b0.granularity()).as("raw has no cluster size: 64 KiB").isEqualTo(65536);
    assertThat(b0.isRecording()).isTrue();
    assertThat(node.queryBitmaps()).containsExactly(
        new BlockDirtyInfo("b1", 0, 512, false, false, false, false),
        new BlockDirtyInfo("b0", 0, 65536, true, false, false, false));
    assertThat(node.findBitmap("b0")).containsSame(b0);
    assertThat(node.findBitmap("nope")).isEmpty();
  }

  @Test
  void defaultGranularityIsTheClusterSizeClampedTo4KiBAnd64KiB() throws Exception {
    int[][] cases = {{512, 4096}, {4096, 4096}, {16384, 16384}, {65536, 65536}, {1 << 21, 65536}};
    for (int[] c : cases) {
      Qcow2Image q = Qcow2Image.create(dir.resolve("c" + c[0] + ".qcow2"),
          Qcow2CreateOptions.of(SIZE).withClusterSize(c[0]));
      BlockNode n = BlockNode.of("q" + c[0], q);
      assertThat(n.addBitmap("b").granularity()).as("cluster size %d", c[0]).isEqualTo(c[1]);
      n.close();
    }
  }

  @Test
  void namesMustBeNonEmptyUniqueAndAtMost1023Bytes() {
    assertThatThrownBy(() -> node.addBitmap("")).isInstanceOf(BitmapException.class)
        .hasMessage("Bitmap name cannot be empty");
    assertThatThrownBy(() -> node.addBitmap(null)).hasMessage("Bitmap name cannot be empty");
    node.addBitmap("b0");
    assertThatThrownBy(() -> node.addBitmap("b0")).hasMessage("Bitmap already exists: b0");
    String longest = "x".repeat(1023);
    node.addBitmap(longest);
    String tooLong = "y".repeat(1024);
    assertThatThrownBy(() -> node.addBitmap(tooLong)).hasMessage("Bitmap name too long: " + tooLong);
    assertThat(node.queryBitmaps()).extracting(BlockDirtyInfo::name).containsExactly(longest, "b0");
  }

  @Test
  void granularityMustBeAPowerOfTwoOfAtLeast512() {
    for (int g : new int[] {0, 256, 3000, -512, 65537}) {
      assertThatThrownBy(() -> node.addBitmap("b", g, false, false)).as("granularity %d", g)
          .isInstanceOf(BitmapException.class).hasMessage("Granularity must be power of 2 and at least 512");
    }
    assertThat(node.queryBitmaps()).isEmpty();
    assertThat(node.addBitmap("b", 512, false, false).granularity()).isEqualTo(512);
  }

  @Test
  void persistentBitmapsAreRefusedByANodeThatCannotStoreThem() {
    assertThatThrownBy(() -> node.addBitmap("p", null, true, false))
        .hasMessage("Can't store persistent bitmaps to drive0: Operation not supported");
    assertThat(node.queryBitmaps()).isEmpty();
  }

  @Test
  void commandsOnAMissingBitmapSayNotFound() {
    assertThatThrownBy(() -> node.removeBitmap("b9")).hasMessage("Dirty bitmap 'b9' not found");
    assertThatThrownBy(() -> node.clearBitmap("b9")).hasMessage("Dirty bitmap 'b9' not found");
    assertThatThrownBy(() -> node.enableBitmap("b9")).hasMessage("Dirty bitmap 'b9' not found");
    assertThatThrownBy(() -> node.disableBitmap("b9")).hasMessage("Dirty bitmap 'b9' not found");
    node.addBitmap("b0");
    assertThatThrownBy(() -> node.mergeBitmaps("b0", List.of(BlockDirtyBitmapMergeSource.local("b9"))))
        .hasMessage("Dirty bitmap 'b9' not found");
  }

  @Test
  void clearEnableDisableAndRemoveDoWhatTheySay() throws Exception {
    BlockDirtyBitmap b0 = node.addBitmap("b0");
    node.write(0, java.nio.ByteBuffer.allocate(4096));
    assertThat(b0.count()).isEqualTo(65536);
    node.clearBitmap("b0");
    assertThat(b0.count()).isZero();
    node.disableBitmap("b0");
    assertThat(node.queryBitmaps().get(0).recording()).isFalse();
    node.enableBitmap("b0");
    assertThat(node.queryBitmaps().get(0).recording()).isTrue();
    node.removeBitmap("b0");
    assertThat(node.queryBitmaps()).isEmpty();
    assertThat(node.findBitmap("b0")).isEmpty();
  }

  @Test
  void aBusyBitmapRefusesEveryCommandUntilItsUserLetsGo() {
    node.addBitmap("b0");
    node.addBitmap("b1");
    BlockNode.BitmapUse use = node.useBitmap("b0");
    assertThat(node.queryBitmaps()).filteredOn(i -> "b0".equals(i.name())).extracting(BlockDirtyInfo::busy)
        .containsExactly(true);
    assertThatThrownBy(() -> node.removeBitmap("b0")).isInstanceOf(BitmapException.class).hasMessage(BUSY);
    assertThatThrownBy(() -> node.clearBitmap("b0")).hasMessage(BUSY);
    assertThatThrownBy(() -> node.enableBitmap("b0")).hasMessage(BUSY);
    assertThatThrownBy(() -> node.disableBitmap("b0")).hasMessage(BUSY);
    assertThatThrownBy(() -> node.mergeBitmaps("b0", List.of(BlockDirtyBitmapMergeSource.local("b1"))))
        .hasMessage(BUSY);
    assertThatThrownBy(() -> node.mergeBitmaps("b1", List.of(BlockDirtyBitmapMergeSource.local("b0"))))
        .as("a busy source is refused too").hasMessage(BUSY);
    assertThatThrownBy(() -> node.useBitmap("b0")).hasMessage(BUSY);
    use.close();
    use.close();
    node.removeBitmap("b0");
    assertThat(node.findBitmap("b0")).isEmpty();
  }

  @Test
  void aReadonlyBitmapMayBeReadAndToggledButNotChangedOrRemoved() {
    DirtyBitmap stored = new DirtyBitmap(SIZE, 65536);
    stored.set(0, 65536);
    BlockDirtyBitmap ro = node.attachStoredBitmap("ro", stored, true, false, true);
    BlockDirtyBitmap b1 = node.addBitmap("b1");
    assertThat(ro.isPersistent()).isTrue();
    assertThatThrownBy(() -> node.clearBitmap("ro")).hasMessage(READONLY);
    assertThatThrownBy(() -> node.removeBitmap("ro")).hasMessage(READONLY);
    assertThatThrownBy(() -> node.mergeBitmaps("ro", List.of(BlockDirtyBitmapMergeSource.local("b1"))))
        .hasMessage(READONLY);
    node.mergeBitmaps("b1", List.of(BlockDirtyBitmapMergeSource.local("ro")));
    assertThat(b1.count()).isEqualTo(65536);
    node.disableBitmap("ro");
    node.enableBitmap("ro");
    assertThat(ro.count()).isEqualTo(65536);
  }

  @Test
  void aNodeWithAReadonlyBitmapRefusesWritesWithEperm() {
    node.attachStoredBitmap("ro", new DirtyBitmap(SIZE, 65536), true, false, true);
    assertThatThrownBy(() -> node.write(0, java.nio.ByteBuffer.allocate(512)))
        .isInstanceOf(dev.blockbackup.formats.BlockIOException.class)
        .satisfies(e -> assertThat(((dev.blockbackup.formats.BlockIOException) e).error())
            .isEqualTo(dev.blockbackup.formats.BlockError.EPERM));
  }

  @Test
  void anInconsistentBitmapCanOnlyBeRemovedAndSaysHow() {
    BlockDirtyBitmap bad = node.attachStoredBitmap("bad", new DirtyBitmap(SIZE, 65536), true, true, false);
    node.addBitmap("b1");
    assertThat(bad.isInconsistent()).isTrue();
    assertThat(bad.isRecording()).as("an inconsistent bitmap is disabled").isFalse();
    for (Runnable r : List.<Runnable>of(() -> node.clearBitmap("bad"), () -> node.enableBitmap("bad"),
        () -> node.disableBitmap("bad"),
        () -> node.mergeBitmaps("bad", List.of(BlockDirtyBitmapMergeSource.local("b1"))),
        () -> node.mergeBitmaps("b1", List.of(BlockDirtyBitmapMergeSource.local("bad"))))) {
      assertThatThrownBy(r::run).isInstanceOf(BitmapException.class).hasMessage(INCONSISTENT)
          .extracting(e -> ((BitmapException) e).hint())
          .isEqualTo("Try block-dirty-bitmap-remove to delete this bitmap from disk");
    }
    assertThat(node.queryBitmaps()).filteredOn(i -> "bad".equals(i.name()))
        .extracting(BlockDirtyInfo::inconsistent, BlockDirtyInfo::persistent).containsExactly(
            org.assertj.core.groups.Tuple.tuple(true, true));
    node.removeBitmap("bad");
    assertThat(node.findBitmap("bad")).isEmpty();
  }

  @Test
  void mergeTakesLocalAndExternalSourcesOfAnyGranularity() throws Exception {
    BlockNode other = BlockNode.of("drive1", RawImage.create(dir.resolve("b.raw"), SIZE));
    BlockDirtyBitmap dst = node.addBitmap("dst", 65536, false, true);
    node.addBitmap("local", 4096, false, false);
    other.addBitmap("far", 512, false, false);
    node.write(70_000, java.nio.ByteBuffer.allocate(4096)); // granules 17 and 18 at 4 KiB: cluster 1
    other.write(SIZE - 512, java.nio.ByteBuffer.allocate(512)); // the last 512 bytes: the last cluster
    node.mergeBitmaps("dst", List.of(BlockDirtyBitmapMergeSource.local("local"),
        BlockDirtyBitmapMergeSource.external(other, "far")));
    DirtyBitmap bits = dst.copyOfBits();
    assertThat(bits.count()).isEqualTo(2 * 65536);
    assertThat(bits.isDirty(65536)).isTrue();
    assertThat(bits.isDirty(SIZE - 1)).isTrue();
    other.close();
  }

  @Test
  void mergeOfBitmapsOfDifferentSizesChangesNothing() throws Exception {
    BlockNode small = BlockNode.of("drive2", RawImage.create(dir.resolve("s.raw"), SIZE / 2));
    small.addBitmap("s");
    BlockDirtyBitmap dst = node.addBitmap("dst");
    BlockDirtyBitmap local = node.addBitmap("local");
    node.write(0, java.nio.ByteBuffer.allocate(512));
    node.clearBitmap("dst");
    assertThat(local.count()).isEqualTo(65536);
    assertThatThrownBy(() -> node.mergeBitmaps("dst", List.of(BlockDirtyBitmapMergeSource.local("local"),
        BlockDirtyBitmapMergeSource.external(small, "s"))))
        .hasMessage("Bitmaps are of different sizes (destination size is " + SIZE + ", source size is "
            + SIZE / 2 + ") and can't be merged");
    assertThat(dst.count()).as("the merge changed nothing").isZero();
    small.close();
  }
}
