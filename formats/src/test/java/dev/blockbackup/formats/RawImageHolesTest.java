package dev.blockbackup.formats;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The raw driver's holes through native access, on the test's temporary directory (ext4 here,
 * which has SEEK_DATA, PUNCH_HOLE and ZERO_RANGE), and its pure-Java stand-in.
 */
class RawImageHolesTest {

  private static final int MIB = 1 << 20;

  @TempDir Path dir;

  @Test
  void nativeAccessLoadsOnThisLinux() {
    assertThat(SparseFile.available()).as("JNA bound to the C library").isTrue();
  }

  @Test
  void blockStatusReportsTheFileHolesAsZero() throws Exception {
    try (RawImage img = RawImage.create(dir.resolve("a.raw"), 16 * MIB)) {
      assertThat(img.hasNativeHoles()).isTrue();
      img.write(MIB, random(MIB, 1));
      img.write(5L * MIB + 100, random(4900, 2)); // unaligned: its blocks are data
      assertThat(img.blockStatus(0, 16 * MIB)).containsExactly(
          Extent.zero(0, MIB, true),
          Extent.data(MIB, MIB),
          Extent.zero(2 * MIB, 3 * MIB, true),
          Extent.data(5L * MIB, 8192),
          Extent.zero(5L * MIB + 8192, 11L * MIB - 8192, true));
      // a range that starts inside an extent is cut to the range
      assertThat(img.blockStatus(MIB + 4096, MIB)).containsExactly(
          Extent.data(MIB + 4096, MIB - 4096), Extent.zero(2 * MIB, 4096, true));
    }
  }

  @Test
  void aFileOpenedWithoutHolesIsDataUntilWeMakeOne() throws Exception {
    Path p = dir.resolve("full.raw");
    byte[] ones = new byte[(int) (2 * MIB)];
    java.util.Arrays.fill(ones, (byte) 1);
    java.nio.file.Files.write(p, ones);
    try (RawImage img = RawImage.open(p, false)) {
      assertThat(img.blockStatus(0, 2 * MIB)).containsExactly(Extent.data(0, 2 * MIB));
      // the hole we punch must show at once, though the opened file had none
      img.discard(MIB, MIB);
      assertThat(img.blockStatus(0, 2 * MIB)).containsExactly(Extent.data(0, MIB), Extent.zero(MIB, MIB, true));
    }
    try (RawImage img = RawImage.open(p, false)) {
      img.writeZeroes(0, 65536, WriteFlag.MAY_UNMAP);
      assertThat(img.blockStatus(0, 65536)).containsExactly(Extent.zero(0, 65536, true));
    }
  }

  @Test
  void readNoWaitGivesTheBytesOrLeavesTheBufferAsItWas() throws Exception {
    Path p = dir.resolve("c.raw");
    byte[] data = new byte[65536];
    new java.util.Random(7).nextBytes(data);
    java.nio.file.Files.write(p, data); // just written: in the page cache
    try (RawImage img = RawImage.open(p, true)) {
      ByteBuffer dst = ByteBuffer.allocateDirect(4096);
      if (img.readNoWait(8192, dst)) {
        assertThat(dst.position()).isEqualTo(4096);
        byte[] got = new byte[4096];
        dst.flip().get(got);
        assertThat(got).isEqualTo(java.util.Arrays.copyOfRange(data, 8192, 12288));
      } else {
        assertThat(dst.position()).isZero(); // a kernel without RWF_NOWAIT: the caller reads
      }
      // a heap buffer cannot be read into natively: always "not now"
      assertThat(img.readNoWait(0, ByteBuffer.allocate(16))).isFalse();
    }
  }

  @Test
  void anEmptyEightTebibyteFileIsOneZeroExtent() throws Exception {
    long size = 8L << 40;
    try (RawImage img = RawImage.create(dir.resolve("big.raw"), size)) {
      assertThat(img.blockStatus(0, size)).containsExactly(Extent.zero(0, size, true));
      img.write(size - 4096, random(4096, 3));
      assertThat(img.blockStatus(0, size)).containsExactly(Extent.zero(0, size - 4096, true), Extent.data(size - 4096, 4096));
    }
  }

  @Test
  void discardPunchesAHoleThatReadsZero() throws Exception {
    Path p = dir.resolve("b.raw");
    try (RawImage img = RawImage.create(p, 8 * MIB)) {
      img.write(0, random(8 * MIB, 4));
      img.flush();
      long before = RawImageTest.allocatedBytes(p);
      img.discard(2 * MIB, 4 * MIB);
      img.flush();
      assertThat(RawImageTest.allocatedBytes(p)).isLessThanOrEqualTo(before - 4 * MIB);
      assertThat(readsZero(img, 2 * MIB, 4 * MIB)).isTrue();
      assertThat(img.blockStatus(0, 8 * MIB)).containsExactly(
          Extent.data(0, 2 * MIB), Extent.zero(2 * MIB, 4 * MIB, true), Extent.data(6 * MIB, 2 * MIB));
    }
  }

  @Test
  void writeZeroesWithMayUnmapPunchesAHole() throws Exception {
    Path p = dir.resolve("c.raw");
    try (RawImage img = RawImage.create(p, 8 * MIB)) {
      img.write(0, random(8 * MIB, 5));
      img.flush();
      long before = RawImageTest.allocatedBytes(p);
      img.writeZeroes(MIB, 3 * MIB, WriteFlag.MAY_UNMAP);
      img.flush();
      assertThat(RawImageTest.allocatedBytes(p)).isLessThanOrEqualTo(before - 3 * MIB);
      assertThat(readsZero(img, MIB, 3 * MIB)).isTrue();
      assertThat(img.blockStatus(MIB, 3 * MIB)).containsExactly(Extent.zero(MIB, 3 * MIB, true));
    }
  }

  @Test
  void writeZeroesWithoutMayUnmapKeepsTheBlocks() throws Exception {
    Path p = dir.resolve("d.raw");
    try (RawImage img = RawImage.create(p, 8 * MIB)) {
      img.write(0, random(8 * MIB, 6));
      img.flush();
      long before = RawImageTest.allocatedBytes(p);
      img.writeZeroes(MIB, 3 * MIB, WriteFlag.NO_FALLBACK);
      img.flush();
      assertThat(RawImageTest.allocatedBytes(p)).isEqualTo(before);
      assertThat(readsZero(img, MIB, 3 * MIB)).isTrue();
      assertThat(readsZero(img, 0, 4096)).isFalse();
    }
  }

  @Test
  void fastZeroSucceedsWhereTheFileSystemPunchesHoles() throws Exception {
    try (RawImage img = RawImage.create(dir.resolve("e.raw"), 4 * MIB)) {
      img.write(0, random(4 * MIB, 7));
      img.writeZeroes(4096, 100_000, WriteFlag.NO_FALLBACK, WriteFlag.MAY_UNMAP);
      img.writeZeroes(2 * MIB + 3, 5000, WriteFlag.NO_FALLBACK); // unaligned: the partial blocks are zeroed too
      assertThat(readsZero(img, 4096, 100_000)).isTrue();
      assertThat(readsZero(img, 2 * MIB + 3, 5000)).isTrue();
      ByteBuffer edge = ByteBuffer.allocate(1);
      img.read(2 * MIB + 2, edge);
      assertThat(edge.get(0)).isEqualTo(random(4 * MIB, 7).get(2 * MIB + 2));
    }
  }

  /** tmpfs punches holes but has no ZERO_RANGE: zeroing without MAY_UNMAP punches and reallocates. */
  @Test
  void onTmpfsZeroingWithoutZeroRangePunchesAndAllocatesAgain() throws Exception {
    Path p = Files.createTempFile(Path.of("/dev/shm"), "bb-holes", ".raw");
    try (RawImage img = RawImage.create(p, 4 * MIB)) {
      img.write(0, random(4 * MIB, 8));
      img.writeZeroes(MIB, MIB, WriteFlag.NO_FALLBACK);
      assertThat(readsZero(img, MIB, MIB)).isTrue();
      assertThat(RawImageTest.allocatedBytes(p)).isEqualTo(4L * MIB);
      img.writeZeroes(MIB, MIB, WriteFlag.NO_FALLBACK, WriteFlag.MAY_UNMAP);
      assertThat(RawImageTest.allocatedBytes(p)).isEqualTo(3L * MIB);
      assertThat(img.blockStatus(0, 4 * MIB)).containsExactly(
          Extent.data(0, MIB), Extent.zero(MIB, MIB, true), Extent.data(2 * MIB, 2 * MIB));
    } finally {
      Files.deleteIfExists(p);
    }
  }

  @Test
  void aReadOnlyImageSeesHolesAndRefusesToPunch() throws Exception {
    Path p = dir.resolve("f.raw");
    try (RawImage img = RawImage.create(p, 4 * MIB)) {
      img.write(MIB, random(MIB, 9));
    }
    try (RawImage ro = RawImage.open(p, true)) {
      assertThat(ro.hasNativeHoles()).isTrue();
      assertThat(ro.blockStatus(0, 4 * MIB)).containsExactly(
          Extent.zero(0, MIB, true), Extent.data(MIB, MIB), Extent.zero(2 * MIB, 2 * MIB, true));
      assertThatThrownBy(() -> ro.discard(MIB, MIB))
          .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EPERM));
      ByteBuffer back = ByteBuffer.allocate(MIB);
      ro.read(MIB, back);
      assertThat(back.flip()).isEqualTo(random(MIB, 9));
    }
  }

  @Test
  void aClosedImageRefusesBlockStatusWithEshutdown() throws Exception {
    RawImage img = RawImage.create(dir.resolve("g.raw"), MIB);
    img.close();
    assertThatThrownBy(() -> img.blockStatus(0, MIB))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.ESHUTDOWN));
  }

  @Test
  void withoutNativeHolesEverythingIsDataAndDiscardKeepsIt() throws Exception {
    Path p = dir.resolve("h.raw");
    try (RawImage img = RawImage.create(p, 4 * MIB, CacheMode.WRITEBACK, false)) {
      assertThat(img.hasNativeHoles()).isFalse();
      img.write(MIB, random(MIB, 10));
      assertThat(img.blockStatus(0, 4 * MIB)).containsExactly(Extent.data(0, 4 * MIB));
      img.discard(MIB, MIB);
      ByteBuffer back = ByteBuffer.allocate(MIB);
      img.read(MIB, back);
      assertThat(back.flip()).isEqualTo(random(MIB, 10));
      img.writeZeroes(MIB, MIB, WriteFlag.MAY_UNMAP);
      assertThat(readsZero(img, MIB, MIB)).isTrue();
      img.writeZeroes(3 * MIB, MIB, WriteFlag.NO_FALLBACK); // the tail: truncation is cheap
    }
    try (RawImage ro = RawImage.open(p, true, CacheMode.WRITEBACK, false)) {
      assertThat(ro.blockStatus(0, 4 * MIB)).containsExactly(Extent.data(0, 4 * MIB));
    }
  }

  @Test
  void openingAMissingFileFailsAsBefore() {
    assertThatThrownBy(() -> RawImage.open(dir.resolve("missing.raw"), false))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EINVAL));
  }

  private static ByteBuffer random(int n, long seed) {
    byte[] b = new byte[n];
    new SplittableRandom(seed).nextBytes(b);
    return ByteBuffer.wrap(b);
  }

  private static boolean readsZero(RawImage img, long offset, int length) throws Exception {
    ByteBuffer b = ByteBuffer.allocate(length);
    img.read(offset, b);
    for (int i = 0; i < length; i++) {
      if (b.get(i) != 0) {
        return false;
      }
    }
    return true;
  }
}
