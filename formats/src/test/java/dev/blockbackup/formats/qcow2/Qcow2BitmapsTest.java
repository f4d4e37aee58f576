package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.ImageFormatException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Persistent bitmaps through {@link Qcow2Image}'s API, and hostile images (ours, with a bitmap,
 * then patched on disk): refused at open with what and where, never an OOM.
 */
class Qcow2BitmapsTest {

  private static final long SIZE = 16L << 20;

  @TempDir
  Path dir;
  Path img;

  @BeforeEach
  void create() throws Exception {
    img = dir.resolve("b.qcow2");
    try (Qcow2Image q = Qcow2Image.create(img, Qcow2CreateOptions.of(SIZE))) {
      q.addBitmap("b", 65536, true);
      q.write(1 << 20, ByteBuffer.allocate(100)); // one mixed data cluster, so the table points somewhere
    }
  }

  /** Where the bitmaps extension's fields lie in cluster 0. */
  private long extensionData() throws Exception {
    try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "r")) {
      byte[] c0 = new byte[4096];
      f.readFully(c0);
      ByteBuffer b = ByteBuffer.wrap(c0);
      int off = b.getInt(100);
      while (b.getInt(off) != 0) {
        if (b.getInt(off) == Qcow2Header.EXT_BITMAPS) {
          return off + 8;
        }
        off += 8 + ((b.getInt(off + 4) + 7) & ~7);
      }
    }
    throw new AssertionError("no bitmaps extension");
  }

  private long readLong(long pos) throws Exception {
    try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "r")) {
      f.seek(pos);
      return f.readLong();
    }
  }

  private void patch(long pos, byte[] bytes) throws Exception {
    try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
      f.seek(pos);
      f.write(bytes);
    }
  }

  private void patchLong(long pos, long v) throws Exception {
    patch(pos, ByteBuffer.allocate(8).putLong(v).array());
  }

  private void patchInt(long pos, int v) throws Exception {
    patch(pos, ByteBuffer.allocate(4).putInt(v).array());
  }

  private long directory() throws Exception {
    return readLong(extensionData() + 16);
  }

  private void refusedBothWays(String... messages) {
    for (boolean ro : new boolean[] {true, false}) {
      assertThatThrownBy(() -> Qcow2Image.open(img, ro).close()).isInstanceOf(ImageFormatException.class)
          .hasMessageStartingWith(img.toString()).hasMessageContainingAll(messages);
    }
  }

  @Test
  void aBitmapKeepsItsBitsAcrossCloseAndOpenAndEveryMutatorMarksIt() throws Exception {
    try (Qcow2Image q = Qcow2Image.open(img, false)) {
      Qcow2Bitmap b = q.findBitmap("b");
      assertThat(b.inconsistent()).isFalse();
      assertThat(b.enabled()).isTrue();
      assertThat(b.bitmap().count()).isEqualTo(65536);
      assertThat(b.bitmap().isDirty(1 << 20)).isTrue();
      Qcow2Bitmap all = q.addBitmap("all", 512, false);
      all.bitmap().setAll();
      q.writeZeroes(4L << 20, 10);
      q.discard(6L << 20, 65536);
      ByteBuffer c = ByteBuffer.allocate(65536);
      q.writeCompressed(8L << 20, c);
      assertThat(all.bitmap().count()).isEqualTo(SIZE);
    }
    try (Qcow2Image q = Qcow2Image.open(img, true)) {
      assertThat(q.bitmaps()).extracting(Qcow2Bitmap::name).containsExactly("b", "all");
      Qcow2Bitmap b = q.findBitmap("b");
      assertThat(b.bitmap().count()).isEqualTo(4 * 65536);
      for (long off : new long[] {1 << 20, 4L << 20, 6L << 20, 8L << 20}) {
        assertThat(b.bitmap().isDirty(off)).as("0x%x", off).isTrue();
      }
      assertThat(q.findBitmap("all").bitmap().count()).as("stored as all-ones table entries").isEqualTo(SIZE);
      assertThat(q.findBitmap("all").enabled()).isFalse();
    }
  }

  @Test
  void theApiRefusesWhatQemuRefuses() throws Exception {
    try (Qcow2Image q = Qcow2Image.open(img, false)) {
      assertThatThrownBy(() -> q.addBitmap("b", 65536, true)).hasMessageContaining("already exists");
      assertThatThrownBy(() -> q.addBitmap("", 65536, true)).hasMessageContaining("cannot be empty");
      assertThatThrownBy(() -> q.addBitmap("x".repeat(1024), 65536, true)).hasMessageContaining("1024 bytes");
      assertThatThrownBy(() -> q.addBitmap("g", 1000, true)).hasMessageContaining("power of two");
      assertThatThrownBy(() -> q.addBitmap("g", 256, true)).hasMessageContaining("at least 512");
      assertThatThrownBy(() -> q.removeBitmap("none")).isInstanceOf(BlockIOException.class)
          .hasMessageContaining("no bitmap 'none'");
      assertThatThrownBy(() -> q.setBitmapEnabled("none", true)).hasMessageContaining("no bitmap 'none'");
      q.setBitmapEnabled("b", false);
      q.write(0, ByteBuffer.allocate(512));
      assertThat(q.findBitmap("b").bitmap().isDirty(0)).isFalse();
    }
    try (Qcow2Image q = Qcow2Image.open(img, true)) {
      assertThat(q.findBitmap("b").enabled()).isFalse();
      assertThatThrownBy(() -> q.addBitmap("c", 65536, true)).isInstanceOf(BlockIOException.class)
          .satisfies(e -> assertThat(((BlockIOException) e).error()).isEqualTo(BlockError.EPERM));
    }
  }

  @Test
  void aReadOnlyOpenWritesNothing() throws Exception {
    byte[] before = java.nio.file.Files.readAllBytes(img);
    try (Qcow2Image q = Qcow2Image.open(img, true)) {
      q.findBitmap("b").bitmap().setAll();
    }
    assertThat(java.nio.file.Files.readAllBytes(img)).isEqualTo(before);
  }

  @Test
  void removingTheLastBitmapRemovesTheExtensionAndItsBit() throws Exception {
    try (Qcow2Image q = Qcow2Image.open(img, false)) {
      q.removeBitmap("b");
      assertThat(q.bitmaps()).isEmpty();
    }
    assertThat(readLong(Qcow2Header.OFF_AUTOCLEAR)).isZero();
    assertThatThrownBy(this::extensionData).hasMessageContaining("no bitmaps extension");
  }

  @Test
  void aBitmapFoundInUseLoadsInconsistentAndStaysInUse() throws Exception {
    long dirOff = directory();
    patchInt(dirOff + 12, BitmapDirectory.FLAG_IN_USE | BitmapDirectory.FLAG_AUTO);
    try (Qcow2Image q = Qcow2Image.open(img, false)) {
      Qcow2Bitmap b = q.findBitmap("b");
      assertThat(b.inconsistent()).isTrue();
      assertThat(b.enabled()).isFalse();
      assertThat(b.bitmap().count()).isZero();
      assertThatThrownBy(() -> q.setBitmapEnabled("b", true)).hasMessageContaining("inconsistent");
      q.addBitmap("fresh", 65536, true);
      q.write(0, ByteBuffer.allocate(512));
    }
    try (Qcow2Image q = Qcow2Image.open(img, true)) {
      assertThat(q.findBitmap("b").inconsistent()).isTrue();
      assertThat(q.findBitmap("fresh").inconsistent()).isFalse();
      assertThat(q.findBitmap("fresh").bitmap().count()).isEqualTo(65536);
    }
  }

  @Test
  void aClearedAutoclearBitMeansTheBitmapsAreStaleAndIgnored() throws Exception {
    patchLong(Qcow2Header.OFF_AUTOCLEAR, 0);
    try (Qcow2Image q = Qcow2Image.open(img, false)) {
      assertThat(q.bitmaps()).isEmpty();
      q.addBitmap("new", 65536, true);
    }
    try (Qcow2Image q = Qcow2Image.open(img, true)) {
      assertThat(q.bitmaps()).extracting(Qcow2Bitmap::name).containsExactly("new");
    }
  }

  @Test
  void unknownAutoclearBitsAreClearedTheBitmapsBitKept() throws Exception {
    patchLong(Qcow2Header.OFF_AUTOCLEAR, 0x8000_0000_0000_0001L);
    Qcow2Image.open(img, false).close();
    assertThat(readLong(Qcow2Header.OFF_AUTOCLEAR)).isEqualTo(1);
  }

  @Test
  void aHugeDirectoryPastTheEndOfTheFileIsRefusedBeforeItIsRead() throws Exception {
    patchLong(extensionData() + 8, 1024L * 65535);
    refusedBothWays("bitmap directory", "lies beyond the end of the file");
  }

  @Test
  void badExtensionFieldsAreRefused() throws Exception {
    long ext = extensionData();
    patchInt(ext, 2);
    refusedBothWays("holds 1 bitmaps, fewer than the 2");
    patchInt(ext, 65536);
    refusedBothWays("65536 bitmaps");
    patchInt(ext, 1);
    patchLong(ext + 16, readLong(ext + 16) + 512);
    refusedBothWays("bitmap_directory_offset");
  }

  /** Points guest cluster 0 (allocated by a write) at host offset {@code host}, as a broken L2 entry would. */
  private void pointGuestClusterZeroAt(long host) throws Exception {
    long l2 = readLong(readLong(40)) & Qcow2Image.OFFSET_MASK;
    patchLong(l2, host | Qcow2Image.COPIED);
  }

  /** Allocates guest cluster 0 (the bitmap's clusters move as it is stored again on close). */
  private void allocateGuestClusterZero() throws Exception {
    try (Qcow2Image q = Qcow2Image.open(img, false)) {
      q.write(0, ByteBuffer.allocate(512));
    }
  }

  private void assertRefusedAsOverlap(String kind) throws Exception {
    Qcow2Image q = Qcow2Image.open(img, false);
    try {
      assertThatThrownBy(() -> q.write(0, ByteBuffer.allocate(512))).isInstanceOf(ImageFormatException.class)
          .hasMessageContaining("Preventing invalid write on metadata (overlaps with " + kind);
    } finally {
      try {
        q.close();
      } catch (ImageFormatException ignored) {
        // the image is marked corrupt: what close would flush is refused too
      }
    }
    try (Qcow2Image r = Qcow2Image.open(img, true)) {
      assertThat(r.findBitmap("b").inconsistent()).as("not stored after the corruption: still in use").isTrue();
    }
  }

  @Test
  void aGuestWriteOntoABitmapDataClusterIsRefusedAsAnOverlap() throws Exception {
    allocateGuestClusterZero();
    long table = readLong(directory());
    long data = readLong(table) & BitmapTables.ENTRY_OFFSET_MASK; // one cluster covers the whole disk
    assertThat(data).isPositive();
    pointGuestClusterZeroAt(data);
    assertRefusedAsOverlap("bitmap data");
  }

  @Test
  void aGuestWriteOntoABitmapTableIsRefusedAsAnOverlap() throws Exception {
    allocateGuestClusterZero();
    pointGuestClusterZeroAt(readLong(directory()));
    assertRefusedAsOverlap("bitmap table");
  }

  @Test
  void manyBigBitmapsAreRefusedBeforeTheyAreHeld() throws Exception {
    Path big = dir.resolve("big.qcow2");
    long tableOffset;
    try (Qcow2Image q = Qcow2Image.create(big, Qcow2CreateOptions.of(1L << 50))) {
      q.addBitmap("b", 1 << 20, true); // 128 MiB of bits: QEMU's limit allows it
    }
    img = big;
    tableOffset = readLong(directory());
    // a hostile directory: 64 such bitmaps sharing one table, 8 GiB of bits in all
    java.util.List<BitmapDirectory.Entry> entries = new java.util.ArrayList<>();
    for (int i = 0; i < 64; i++) {
      entries.add(new BitmapDirectory.Entry(tableOffset, 2048, BitmapDirectory.FLAG_AUTO, 20, "b" + i));
    }
    ByteBuffer d = BitmapDirectory.encode(entries);
    long at = (java.nio.file.Files.size(big) + 65535) & ~65535L;
    patch(at, d.array());
    long ext = extensionData();
    patchInt(ext, 64);
    patchLong(ext + 8, d.capacity());
    patchLong(ext + 16, at);
    refusedBothWays("bitmap 'b", "bytes of memory, more than");
  }

  @Test
  void badTablesAreRefused() throws Exception {
    long dirOff = directory();
    long tableOff = readLong(dirOff);
    patchLong(tableOff, readLong(tableOff) | 2);
    refusedBothWays("bitmap 'b'", "entry 0 of its table", "is invalid");
    patchLong(dirOff, 1L << 40);
    refusedBothWays("bitmap 'b'", "its table", "lies beyond the end of the file");
    patchLong(dirOff, tableOff);
    patchInt(dirOff + 8, 2);
    refusedBothWays("bitmap 'b'", "bitmap_table_size 2 does not match the 1 entries");
    patchInt(dirOff + 8, 1);
    patch(dirOff + 17, new byte[] {31});
    refusedBothWays("bitmap 'b'", "granularity 2^31 is not supported");
  }
}
