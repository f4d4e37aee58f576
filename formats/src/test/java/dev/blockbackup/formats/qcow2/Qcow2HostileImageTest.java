package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;

import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.ImageFormatException;
import dev.blockbackup.testkit.QemuImg;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import org.assertj.core.api.ThrowableAssert.ThrowingCallable;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Acceptance 4: hostile images are refused at open, or fail the read that meets the damage, with an
 * ImageFormatException that says what is wrong, quickly and without running out of memory.
 */
@Tag("interop")
class Qcow2HostileImageTest {

  private static final Duration HANG_GUARD = Duration.ofSeconds(1);

  @TempDir Path dir;

  /** A fresh `qemu-img create` image: header, reftable at 64K, refblock at 128K, L1 at 192K. */
  private Path qemuImage(String name, String size) {
    Path p = dir.resolve(name);
    QemuImg.img("create", "-f", "qcow2", p, size).assertExit(0);
    return p;
  }

  /** A qemu image with data in guest cluster 0: L2 table at 0x40000, data at 0x50000. */
  private Path qemuImageWithData(String name) {
    Path p = qemuImage(name, "1M");
    QemuImg.io("-f", "qcow2", "-c", "write -P 0x5a 0 64k", p).assertExit(0);
    return p;
  }

  private static void patchInt(Path p, long off, int v) throws IOException {
    patch(p, off, ByteBuffer.allocate(4).putInt(0, v).array());
  }

  private static void patchLong(Path p, long off, long v) throws IOException {
    patch(p, off, ByteBuffer.allocate(8).putLong(0, v).array());
  }

  private static void patch(Path p, long off, byte[] b) throws IOException {
    try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
      f.seek(off);
      f.write(b);
    }
  }

  /** Opening (read-only and read-write) fails fast with an ImageFormatException containing {@code what}. */
  private static void refusedAtOpen(Path p, String... what) {
    for (boolean ro : new boolean[] {true, false}) {
      assertTimeoutPreemptively(HANG_GUARD, () -> {
        assertThatThrownBy(() -> Qcow2Image.open(p, ro).close())
            .isInstanceOf(ImageFormatException.class)
            .satisfies(e -> assertThat(((BlockIOException) e).error()).isEqualTo(BlockError.EIO))
            .hasMessageContainingAll(what);
      });
    }
  }

  /** The image opens, but reading guest cluster 0 fails with an ImageFormatException containing {@code what}. */
  private static void readFails(Path p, String... what) {
    readFails(p, true, what);
  }

  /** As above; {@code metadata} says the damage is in the metadata, so block status fails too. */
  private static void readFails(Path p, boolean metadata, String... what) {
    assertTimeoutPreemptively(HANG_GUARD, () -> {
      try (Qcow2Image img = Qcow2Image.open(p, true)) {
        ThrowingCallable read = () -> img.read(0, ByteBuffer.allocate(65536));
        assertThatThrownBy(read).isInstanceOf(ImageFormatException.class).hasMessageContainingAll(what);
        if (metadata) {
          assertThatThrownBy(() -> img.blockStatus(0, 65536)).isInstanceOf(ImageFormatException.class);
        }
      }
    });
  }

  @Test
  void badMagicIsRefused() throws Exception {
    Path p = qemuImage("a.qcow2", "1M");
    patchInt(p, 0, 0x514649FA);
    refusedAtOpen(p, "bad magic");
  }

  @Test
  void unknownVersionIsRefused() throws Exception {
    Path p = qemuImage("a.qcow2", "1M");
    patchInt(p, 4, 4);
    refusedAtOpen(p, "version 4");
  }

  @Test
  void truncatedHeaderIsRefused() throws Exception {
    Path p = qemuImage("a.qcow2", "1M");
    byte[] head = Files.readAllBytes(p);
    Files.write(p, java.util.Arrays.copyOf(head, 90));
    refusedAtOpen(p, "truncated header", "90 bytes");
    Files.write(p, java.util.Arrays.copyOf(head, 4));
    refusedAtOpen(p, "truncated header");
  }

  @Test
  void clusterBitsOutOfRangeAreRefused() throws Exception {
    for (int bits : new int[] {8, 22, 63, -1}) {
      Path p = qemuImage("cb" + bits + ".qcow2", "1M");
      patchInt(p, 20, bits);
      refusedAtOpen(p, "cluster_bits " + bits, "9..21");
    }
  }

  @Test
  void hugeL1SizeIsRefusedWithoutAllocatingIt() throws Exception {
    Path p = qemuImage("a.qcow2", "1M");
    patchInt(p, 36, 0x7FFFFFFF);
    refusedAtOpen(p, "l1_size 2147483647", "limit");
    patchInt(p, 36, -1);
    refusedAtOpen(p, "l1_size 4294967295", "limit");
  }

  @Test
  void tooSmallL1IsRefused() throws Exception {
    Path p = qemuImage("a.qcow2", "1G");
    patchInt(p, 36, 1);
    refusedAtOpen(p, "l1_size 1", "too small");
  }

  @Test
  void unalignedL1OffsetIsRefused() throws Exception {
    Path p = qemuImage("a.qcow2", "1M");
    patchLong(p, 40, 0x30008);
    refusedAtOpen(p, "l1_table_offset 0x30008", "cluster-aligned");
  }

  @Test
  void l1TableBeyondTheFileIsRefused() throws Exception {
    Path p = qemuImage("a.qcow2", "1M");
    patchLong(p, 40, 1L << 40);
    refusedAtOpen(p, "L1 table", "beyond the end of the file");
  }

  @Test
  void refcountTableBeyondTheFileIsRefused() throws Exception {
    Path p = qemuImage("a.qcow2", "1M");
    patchLong(p, 48, 1L << 40);
    refusedAtOpen(p, "refcount table at 0x10000000000", "beyond the end of the file");
  }

  @Test
  void refcountTableAboveEightMegabytesIsRefused() throws Exception {
    Path p = qemuImage("a.qcow2", "1M");
    patchInt(p, 56, 129);
    refusedAtOpen(p, "refcount table of 129 clusters", "8 MiB");
    patchInt(p, 56, 0);
    refusedAtOpen(p, "refcount_table_clusters is 0");
  }

  @Test
  void overlappingMetadataIsRefused() throws Exception {
    Path p = qemuImage("a.qcow2", "1M");
    patchLong(p, 40, 0x10000); // L1 on top of the refcount table
    refusedAtOpen(p, "refcount table", "overlaps the L1 table");
    Path q = qemuImage("b.qcow2", "1M");
    patchLong(q, 48, 0); // refcount table in the header cluster is "unaligned" (offset 0)
    refusedAtOpen(q, "refcount_table_offset 0x0");
  }

  @Test
  void badHeaderLengthIsRefused() throws Exception {
    Path p = qemuImage("a.qcow2", "1M");
    patchInt(p, 100, 100);
    refusedAtOpen(p, "header_length 100");
    patchInt(p, 100, 108 + 2);
    refusedAtOpen(p, "header_length 110");
  }

  @Test
  void refcountOrderAboveSixIsRefused() throws Exception {
    Path p = qemuImage("a.qcow2", "1M");
    patchInt(p, 96, 7);
    refusedAtOpen(p, "refcount_order 7");
  }

  @Test
  void unknownIncompatibleBitIsNamedFromTheFeatureTable() throws Exception {
    Path p = qemuImage("a.qcow2", "1M");
    // QEMU's feature table starts at 112+8; entry 4 is incompatible bit 4: rename it to bit 7 'foo'
    long entry = 112 + 8 + 4 * 48;
    byte[] e = new byte[48];
    e[0] = 0;
    e[1] = 7;
    System.arraycopy("foo".getBytes(StandardCharsets.US_ASCII), 0, e, 2, 3);
    patch(p, entry, e);
    patchLong(p, 72, 1L << 7);
    refusedAtOpen(p, "unsupported incompatible feature bit 7 ('foo')");
    patchLong(p, 72, 1L << 9);
    refusedAtOpen(p, "unsupported incompatible feature bit 9");
  }

  @Test
  void unsupportedFeaturesAreRefusedClearly() throws Exception {
    Path z = dir.resolve("z.qcow2");
    QemuImg.img("create", "-f", "qcow2", "-o", "compression_type=zstd", z, "1M").assertExit(0);
    refusedAtOpen(z, "zstd", "not supported");
    Path x = dir.resolve("x.qcow2");
    QemuImg.img("create", "-f", "qcow2", "-o", "extended_l2=on", x, "1M").assertExit(0);
    refusedAtOpen(x, "extended L2", "not supported");
    Path m = qemuImage("m.qcow2", "1M");
    patchLong(m, 72, 1L << 3); // compression-type bit with compression_type 0
    refusedAtOpen(m, "compression_type 0 with the compression-type incompatible bit");
    Path c = qemuImage("c.qcow2", "1M");
    patchInt(c, 32, 2);
    refusedAtOpen(c, "encrypted", "not supported");
  }

  @Test
  void corruptBitOpensReadOnlyOnly() throws Exception {
    Path p = qemuImageWithData("a.qcow2");
    patchLong(p, 72, 1L << 1);
    assertTimeoutPreemptively(HANG_GUARD, () -> {
      assertThatThrownBy(() -> Qcow2Image.open(p, false))
          .isInstanceOf(ImageFormatException.class)
          .hasMessageContaining("marked corrupt")
          .hasMessageContaining("read-only");
      try (Qcow2Image img = Qcow2Image.open(p, true)) {
        ByteBuffer b = ByteBuffer.allocate(4);
        img.read(0, b);
        assertThat(b.array()).containsOnly(0x5a);
        assertThat(img.info().corrupt()).isTrue();
      }
    });
  }

  @Test
  void dirtyImageWhoseRefcountsCannotBeRebuiltIsRefusedReadWrite() throws Exception {
    Path p = qemuImageWithData("a.qcow2");
    patchLong(p, 72, 1L);
    patchLong(p, 0x40000, Qcow2Image.COPIED | (1L << 40));
    assertTimeoutPreemptively(HANG_GUARD, () -> {
      assertThatThrownBy(() -> Qcow2Image.open(p, false))
          .isInstanceOf(ImageFormatException.class)
          .hasMessageContaining("dirty bit")
          .hasMessageContaining("past the end of the file");
      try (Qcow2Image img = Qcow2Image.open(p, true)) {
        assertThat(img.info().dirty()).isTrue();
      }
    });
  }

  @Test
  void l2EntryPastTheEndOfTheFileFailsTheRead() throws Exception {
    Path p = qemuImageWithData("a.qcow2");
    patchLong(p, 0x40000, Qcow2Image.COPIED | (1L << 40));
    readFails(p, "points to host offset 0x10000000000", "past the end of the file");
  }

  @Test
  void unalignedL2EntryFailsTheRead() throws Exception {
    Path p = qemuImageWithData("a.qcow2");
    patchLong(p, 0x40000, Qcow2Image.COPIED | 0x50200L);
    readFails(p, "unaligned host offset 0x50200");
  }

  @Test
  void l2EntryWithReservedBitsFailsTheRead() throws Exception {
    Path p = qemuImageWithData("a.qcow2");
    patchLong(p, 0x40000, Qcow2Image.COPIED | (1L << 57) | 0x50000L);
    readFails(p, "reserved bits set");
  }

  @Test
  void l2TablePastTheEndOfTheFileFailsTheRead() throws Exception {
    Path p = qemuImageWithData("a.qcow2");
    patchLong(p, 0x30000, Qcow2Image.COPIED | (1L << 45));
    readFails(p, "L1 entry 0", "past the end of the file");
  }

  @Test
  void pointersIntoTheMetadataFailTheRead() throws Exception {
    Path p = qemuImageWithData("a.qcow2");
    patchLong(p, 0x40000, Qcow2Image.COPIED | 0x30000L); // data "in" the L1 table
    readFails(p, "inside the L1 or refcount table");
    Path q = qemuImageWithData("b.qcow2");
    patchLong(q, 0x30000, Qcow2Image.COPIED | 0x10000L); // L2 table "in" the refcount table
    readFails(q, "L1 entry 0", "inside the L1 or refcount table");
    assertTimeoutPreemptively(HANG_GUARD, () -> {
      try (Qcow2Image img = Qcow2Image.open(q, false)) {
        assertThatThrownBy(() -> img.write(0, ByteBuffer.allocate(512))).isInstanceOf(ImageFormatException.class);
      }
    });
  }

  @Test
  void compressedGarbageFailsTheRead() throws Exception {
    Path p = qemuImageWithData("a.qcow2");
    // a compressed descriptor over bytes 0xff: a deflate block of the reserved type 3
    byte[] ff = new byte[2048];
    java.util.Arrays.fill(ff, (byte) 0xff);
    patch(p, 0x50000, ff);
    patchLong(p, 0x40000, Qcow2Image.COMPRESSED | 0x50000L | (3L << 54));
    readFails(p, false, "compressed cluster at 0x50000", "not valid deflate data");
  }

  /** One corrupted byte: {@code xor} applied at file offset {@code at}. */
  record Flip(int at, int xor) {}

  @Test
  void randomlyCorruptedMetadataFailsCleanly() throws Exception {
    Path template = qemuImage("t.qcow2", "4M");
    QemuImg.io("-f", "qcow2", "-c", "write -P 0x11 0 300k", "-c", "write -c -P 0x22 1M 64k", "-c", "write -z 2M 64k",
        template).assertExit(0);
    QemuImg.img("snapshot", "-c", "s", template).assertExit(0);
    QemuImg.io("-f", "qcow2", "-c", "write -P 0x33 100k 64k", template).assertExit(0);
    byte[] good = Files.readAllBytes(template);
    int metadataEnd = Math.min(good.length, 0x50000);
    dev.blockbackup.testkit.Property.check("corrupt metadata fails cleanly", 150, r -> {
      java.util.List<Flip> flips = new java.util.ArrayList<>();
      int n = r.nextInt(1, 6);
      for (int i = 0; i < n; i++) {
        // mostly the header fields and the first bytes of each metadata cluster, where the pointers are
        long at = r.nextBoolean() ? r.nextInt(120) : (r.nextInt(metadataEnd / 65536 + 1) * 65536L + r.nextInt(64));
        flips.add(new Flip((int) Math.min(at, good.length - 1), r.nextInt(1, 256)));
      }
      return flips;
    }, flips -> {
      Path p = Files.createTempFile(dir, "fuzz", ".qcow2");
      byte[] bad = good.clone();
      for (Flip f : flips) {
        bad[f.at()] ^= (byte) f.xor();
      }
      Files.write(p, bad);
      assertTimeoutPreemptively(HANG_GUARD, () -> {
        for (boolean ro : new boolean[] {true, false}) {
          try (Qcow2Image img = Qcow2Image.open(p, ro)) {
            long size = Math.min(img.size(), 8L << 20);
            img.read(0, ByteBuffer.allocate((int) size));
            img.blockStatus(0, size);
            if (!ro) {
              img.write(0, ByteBuffer.allocate(70_000));
              img.discard(1 << 20, 1 << 16);
              img.flush();
            }
          } catch (BlockIOException expected) {
            // refused or failed with a block error: that is what we want
          }
        }
      });
    });
  }

  @Test
  void backingFileLoopIsRefused() throws Exception {
    Path a = dir.resolve("a.qcow2");
    Path b = dir.resolve("b.qcow2");
    QemuImg.img("create", "-f", "qcow2", "-u", "-b", "b.qcow2", "-F", "qcow2", a, "1M").assertExit(0);
    QemuImg.img("create", "-f", "qcow2", "-u", "-b", "a.qcow2", "-F", "qcow2", b, "1M").assertExit(0);
    refusedAtOpen(a, "backing file loop");
    Path self = dir.resolve("self.qcow2");
    QemuImg.img("create", "-f", "qcow2", "-u", "-b", "self.qcow2", "-F", "qcow2", self, "1M").assertExit(0);
    refusedAtOpen(self, "backing file loop");
  }

  @Test
  void deepBackingChainIsRefused() throws Exception {
    Path prev = dir.resolve("c0.qcow2");
    QemuImg.img("create", "-f", "qcow2", prev, "1M").assertExit(0);
    for (int i = 1; i <= Qcow2Opener.MAX_CHAIN_DEPTH; i++) {
      Path next = dir.resolve("c" + i + ".qcow2");
      QemuImg.img("create", "-f", "qcow2", "-u", "-b", prev.getFileName(), "-F", "qcow2", next, "1M").assertExit(0);
      prev = next;
    }
    refusedAtOpen(prev, "deeper than " + Qcow2Opener.MAX_CHAIN_DEPTH);
  }

  @Test
  void backingNameTooLongOrOutsideClusterZeroIsRefused() throws Exception {
    Path p = dir.resolve("a.qcow2");
    QemuImg.img("create", "-f", "qcow2", "-u", "-b", "base.raw", "-F", "raw", p, "1M").assertExit(0);
    patchInt(p, 16, 2000);
    refusedAtOpen(p, "backing file name of 2000 bytes", "1023");
    patchInt(p, 16, 8);
    patchLong(p, 8, 65536 - 4);
    refusedAtOpen(p, "outside cluster 0");
  }
}
