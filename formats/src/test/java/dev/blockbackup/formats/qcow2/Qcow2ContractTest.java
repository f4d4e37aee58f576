package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.ImageFormatException;
import dev.blockbackup.formats.WriteFlag;
import dev.blockbackup.testkit.QemuImg;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.assertj.core.api.ThrowableAssert.ThrowingCallable;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The BlockDevice contract's error cases and the open-time refusals, on qcow2 images. */
class Qcow2ContractTest {

  private static final int C = 65536;
  private static final long SIZE = 1 << 20;

  @TempDir Path dir;

  private static void assertFailsWith(BlockError error, ThrowingCallable call) {
    assertThatThrownBy(call).isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(error));
  }

  private static byte[] readAll(Qcow2Image img) throws BlockIOException {
    ByteBuffer b = ByteBuffer.allocate((int) img.size());
    img.read(0, b);
    return b.array();
  }

  @Test
  @Tag("interop")
  void requestsOutsideTheImageFailWithEinvalAndChangeNothing() throws Exception {
    Path p = dir.resolve("a.qcow2");
    try (Qcow2Image img = Qcow2Image.create(p, Qcow2CreateOptions.of(SIZE))) {
      img.write(SIZE - C, ByteBuffer.wrap(new byte[C]).put(0, (byte) 7));
      byte[] before = readAll(img);
      assertFailsWith(BlockError.EINVAL, () -> img.write(SIZE - 100, ByteBuffer.allocate(200)));
      assertFailsWith(BlockError.EINVAL, () -> img.write(-1, ByteBuffer.allocate(1)));
      assertFailsWith(BlockError.EINVAL, () -> img.read(SIZE, ByteBuffer.allocate(1)));
      assertFailsWith(BlockError.EINVAL, () -> img.writeZeroes(SIZE - C, C + 512));
      assertFailsWith(BlockError.EINVAL, () -> img.discard(SIZE - C, 2L * C));
      assertFailsWith(BlockError.EINVAL, () -> img.blockStatus(SIZE - 1, 2));
      assertThat(readAll(img)).as("content after the refused requests").isEqualTo(before);
    }
    QemuImg.assertCheckClean(p);
  }

  @Test
  @Tag("interop")
  void writesToAReadOnlyImageFailWithEperm() throws Exception {
    Path p = dir.resolve("b.qcow2");
    Qcow2Image.create(p, Qcow2CreateOptions.of(SIZE)).close();
    try (Qcow2Image img = Qcow2Image.open(p, true)) {
      assertThat(img.isReadOnly()).isTrue();
      assertFailsWith(BlockError.EPERM, () -> img.write(0, ByteBuffer.allocate(512)));
      assertFailsWith(BlockError.EPERM, () -> img.writeZeroes(0, C));
      assertFailsWith(BlockError.EPERM, () -> img.discard(0, C));
      assertFailsWith(BlockError.EPERM, () -> img.writeCompressed(0, ByteBuffer.allocate(C)));
    }
    QemuImg.assertCheckClean(p);
  }

  @Test
  void aClosedImageFailsEveryCallWithEshutdownAndClosesTwiceHarmlessly() throws Exception {
    Qcow2Image img = Qcow2Image.create(dir.resolve("c.qcow2"), Qcow2CreateOptions.of(SIZE));
    img.close();
    img.close();
    assertFailsWith(BlockError.ESHUTDOWN, () -> img.read(0, ByteBuffer.allocate(1)));
    assertFailsWith(BlockError.ESHUTDOWN, () -> img.write(0, ByteBuffer.allocate(1)));
    assertFailsWith(BlockError.ESHUTDOWN, () -> img.writeZeroes(0, 1));
    assertFailsWith(BlockError.ESHUTDOWN, () -> img.discard(0, C));
    assertFailsWith(BlockError.ESHUTDOWN, img::flush);
    assertFailsWith(BlockError.ESHUTDOWN, () -> img.blockStatus(0, 1));
  }

  @Test
  @Tag("interop")
  void fastZeroOfWholeClustersSucceedsWithTheZeroFlag() throws Exception {
    Path p = dir.resolve("d.qcow2");
    try (Qcow2Image img = Qcow2Image.create(p, Qcow2CreateOptions.of(SIZE))) {
      byte[] ones = new byte[3 * C];
      java.util.Arrays.fill(ones, (byte) 1);
      img.write(0, ByteBuffer.wrap(ones));
      img.writeZeroes(C, C, WriteFlag.NO_FALLBACK);
      img.writeZeroes(2L * C, C, WriteFlag.NO_FALLBACK, WriteFlag.MAY_UNMAP);
      byte[] back = readAll(img);
      assertThat(ModelRunner.firstNonZero(back, C, 3 * C)).isEqualTo(-1);
      assertThat(ModelRunner.firstNonZero(back, 0, C)).isZero();
      List<Extent> st = img.blockStatus(C, 2L * C);
      assertThat(st).allSatisfy(e -> assertThat(e.zero()).as("%s", e).isTrue());
    }
    QemuImg.assertCheckClean(p);
  }

  @Test
  void fastZeroOfPartOfADataClusterFailsWithEnotsup() throws Exception {
    try (Qcow2Image img = Qcow2Image.create(dir.resolve("d2.qcow2"), Qcow2CreateOptions.of(SIZE))) {
      img.write(0, ByteBuffer.wrap(new byte[C]).put(100, (byte) 1));
      assertFailsWith(BlockError.ENOTSUP, () -> img.writeZeroes(50, 100, WriteFlag.NO_FALLBACK));
      assertFailsWith(BlockError.ENOTSUP, () -> img.writeZeroes(C / 2, 2L * C, WriteFlag.NO_FALLBACK));
    }
  }

  /** Where the range already reads as zero without a backing file, no zero bytes need writing. */
  @Test
  void fastZeroOfPartOfAnUnallocatedClusterSucceeds() throws Exception {
    try (Qcow2Image img = Qcow2Image.create(dir.resolve("d3.qcow2"), Qcow2CreateOptions.of(SIZE))) {
      img.writeZeroes(C + 50, 100, WriteFlag.NO_FALLBACK);
      img.writeZeroes(2L * C + 7, 3L * C, WriteFlag.NO_FALLBACK, WriteFlag.MAY_UNMAP);
      assertThat(ModelRunner.firstNonZero(readAll(img), 0, (int) SIZE)).isEqualTo(-1);
    }
  }

  @Test
  @Tag("interop")
  void accessorsDescribeTheImageAndItsReadOnlyBacking() throws Exception {
    Path base = dir.resolve("acc-base.raw");
    QemuImg.img("create", "-q", "-f", "raw", base, SIZE / 2).assertExit(0);
    Path p = dir.resolve("acc.qcow2");
    try (Qcow2Image img = Qcow2Image.create(p,
        Qcow2CreateOptions.of(SIZE).withClusterSize(4096).withBacking("acc-base.raw", "raw"))) {
      assertThat(img.path()).isEqualTo(p);
      assertThat(img.size()).isEqualTo(SIZE);
      assertThat(img.alignment()).isEqualTo(4096);
      assertThat(img.isReadOnly()).isFalse();
      assertThat(img.backing()).isNotNull();
      assertThat(img.backing().size()).isEqualTo(SIZE / 2);
      assertThat(img.backing().isReadOnly()).isTrue();
      assertThat(img.info().version()).isEqualTo(3);
      assertThat(img.info().refcountBits()).isEqualTo(16);
    }
    try (Qcow2Image img = Qcow2Image.create(dir.resolve("acc2.qcow2"), Qcow2CreateOptions.of(SIZE))) {
      assertThat(img.backing()).isNull();
      assertThat(img.alignment()).isEqualTo(Qcow2CreateOptions.DEFAULT_CLUSTER_SIZE);
    }
  }

  @Test
  @Tag("interop")
  void anUnknownIncompatibleFeatureIsRefusedAtOpen() throws Exception {
    Path p = dir.resolve("e.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", p, SIZE).assertExit(0);
    setIncompatibleBits(p, 1L << 20);
    assertThatThrownBy(() -> Qcow2Image.open(p, true).close()).isInstanceOf(ImageFormatException.class);
  }

  /** The driver does not implement extended L2 entries, so it must say so at open, not fail on a later read. */
  @Test
  @Tag("interop")
  void anExtendedL2ImageIsRefusedAtOpenNotOnALaterRead() throws Exception {
    Path p = dir.resolve("x.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=128k", p, SIZE).assertExit(0);
    QemuImg.io("-f", "qcow2", "-c", "write -P 0x5a 4096 4096", p).assertExit(0);
    assertThatThrownBy(() -> Qcow2Image.open(p, true).close()).isInstanceOf(ImageFormatException.class);
  }

  /** Nor zstd: an image compressed with it is refused at open rather than failing on its first compressed cluster. */
  @Test
  @Tag("interop")
  void aZstdCompressedImageIsRefusedAtOpenNotOnALaterRead() throws Exception {
    Path raw = dir.resolve("z.raw");
    Files.write(raw, "zstd compresses this well. ".repeat(40_000).getBytes(java.nio.charset.StandardCharsets.US_ASCII));
    Path p = dir.resolve("z.qcow2");
    QemuImg.img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd", raw, p).assertExit(0);
    assertThatThrownBy(() -> Qcow2Image.open(p, true).close()).isInstanceOf(ImageFormatException.class);
  }

  @Test
  @Tag("interop")
  void anImageWithTheCorruptBitOpensReadOnlyOnly() throws Exception {
    Path p = dir.resolve("f.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", p, SIZE).assertExit(0);
    QemuImg.io("-f", "qcow2", "-c", "write -P 0x5a 0 4096", p).assertExit(0);
    setIncompatibleBits(p, 1L << 1);
    assertThatThrownBy(() -> Qcow2Image.open(p, false).close()).isInstanceOf(BlockIOException.class);
    try (Qcow2Image img = Qcow2Image.open(p, true)) {
      assertThat(img.info().corrupt()).isTrue();
      ByteBuffer b = ByteBuffer.allocate(4096);
      img.read(0, b);
      assertThat(b.get(0)).isEqualTo((byte) 0x5a);
    }
  }

  @Test
  void aFileThatIsNotQcow2IsRefusedAtOpen() throws Exception {
    Path p = dir.resolve("g.raw");
    Files.write(p, new byte[65536]);
    assertThatThrownBy(() -> Qcow2Image.open(p, true).close()).isInstanceOf(ImageFormatException.class);
  }

  @Test
  @Tag("interop")
  void aBackingChainThatLoopsIsRefusedAtOpen() throws Exception {
    Path self = dir.resolve("self.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", self, SIZE).assertExit(0);
    QemuImg.img("rebase", "-u", "-f", "qcow2", "-b", "self.qcow2", "-F", "qcow2", self).assertExit(0);
    assertThatThrownBy(() -> Qcow2Image.open(self, true).close()).isInstanceOf(BlockIOException.class);

    Path a = dir.resolve("a.qcow2");
    Path b = dir.resolve("b.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", a, SIZE).assertExit(0);
    QemuImg.img("create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", b, SIZE).assertExit(0);
    QemuImg.img("rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", a).assertExit(0);
    assertThatThrownBy(() -> Qcow2Image.open(b, true).close()).isInstanceOf(BlockIOException.class);
  }

  @Test
  @Tag("interop")
  void aMissingBackingFileFailsTheOpen() throws Exception {
    Path base = dir.resolve("gone.raw");
    QemuImg.img("create", "-q", "-f", "raw", base, SIZE).assertExit(0);
    Path p = dir.resolve("orphan.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", "-b", "gone.raw", "-F", "raw", p, SIZE).assertExit(0);
    Files.delete(base);
    assertThatThrownBy(() -> Qcow2Image.open(p, true).close()).isInstanceOf(BlockIOException.class);
  }

  /** As QEMU does: a relative backing name is relative to the overlay's directory, not the working directory. */
  @Test
  @Tag("interop")
  void aRelativeBackingNameIsResolvedAgainstTheOverlaysDirectory() throws Exception {
    Path baseDir = Files.createDirectory(dir.resolve("base"));
    Path topDir = Files.createDirectory(dir.resolve("top"));
    Path base = baseDir.resolve("base.raw");
    QemuImg.img("create", "-q", "-f", "raw", base, SIZE).assertExit(0);
    QemuImg.io("-f", "raw", "-c", "write -P 0x3c 0 " + SIZE, base).assertExit(0);
    Path top = topDir.resolve("top.qcow2");
    try (Qcow2Image img = Qcow2Image.create(top, Qcow2CreateOptions.of(SIZE).withBacking("../base/base.raw", "raw"))) {
      img.write(C + 10, ByteBuffer.wrap(new byte[] {1, 2, 3}));
    }
    QemuImg.assertCheckClean(top);
    byte[] expected = ModelRunner.qemuContent(top, "qcow2", dir);
    assertThat(expected[0]).isEqualTo((byte) 0x3c);
    try (Qcow2Image img = Qcow2Image.open(top, true)) {
      assertThat(img.info().backingFile()).isEqualTo("../base/base.raw");
      ModelRunner.verifyContent(img, expected, "overlay over ../base/base.raw");
    }
  }

  /**
   * Buffers are used from their position to their limit, whatever their kind: heap with an offset,
   * direct, read-only (which has no accessible array), and for reads a direct buffer and a heap
   * buffer positioned mid-array.
   */
  @Test
  @Tag("interop")
  void requestsUseTheBufferFromItsPositionToItsLimitWhateverItsKind() throws Exception {
    Path p = dir.resolve("buf.qcow2");
    byte[] expected = new byte[(int) SIZE];
    byte[] data = new byte[3 * C];
    new java.util.SplittableRandom(3).nextBytes(data);
    try (Qcow2Image img = Qcow2Image.create(p, Qcow2CreateOptions.of(SIZE))) {
      ByteBuffer offset = ByteBuffer.wrap(data).position(100).limit(100 + C + 7); // heap, not at 0
      img.write(5, offset);
      System.arraycopy(data, 100, expected, 5, C + 7);
      ByteBuffer direct = ByteBuffer.allocateDirect(2 * C + 3).put(data, 0, 2 * C + 3).flip().position(11);
      img.write(3L * C - 1, direct);
      System.arraycopy(data, 11, expected, 3 * C - 1, 2 * C + 3 - 11);
      ByteBuffer readOnly = ByteBuffer.wrap(data, 1000, C).asReadOnlyBuffer();
      img.write(7L * C + 333, readOnly);
      System.arraycopy(data, 1000, expected, 7 * C + 333, C);
      byte[] text = "compressible ".repeat(C).getBytes(java.nio.charset.StandardCharsets.US_ASCII);
      img.writeCompressed(10L * C, ByteBuffer.allocateDirect(C).put(text, 0, C).flip());
      System.arraycopy(text, 0, expected, 10 * C, C);
      img.writeCompressed(12L * C, ByteBuffer.wrap(text, 13, C).asReadOnlyBuffer());
      System.arraycopy(text, 13, expected, 12 * C, C);

      ByteBuffer intoDirect = ByteBuffer.allocateDirect((int) SIZE);
      img.read(0, intoDirect);
      byte[] got = new byte[(int) SIZE];
      intoDirect.flip().get(got);
      ModelRunner.assertSameBytes(got, 0, expected, 0, got.length, "read into a direct buffer");
      byte[] big = new byte[(int) SIZE + 50];
      ByteBuffer mid = ByteBuffer.wrap(big).position(50);
      img.read(0, mid);
      ModelRunner.assertSameBytes(big, 50, expected, 0, (int) SIZE, "read into a heap buffer at position 50");
      assertThat(ModelRunner.firstNonZero(big, 0, 50)).as("bytes before the buffer's position").isEqualTo(-1);
    }
    QemuImg.assertCheckClean(p);
    Path raw = dir.resolve("buf.raw");
    ModelRunner.writeRaw(raw, expected);
    QemuImg.assertIdentical(p, "qcow2", raw, "raw");
  }

  /** ORs {@code bits} into the v3 header's incompatible_features (bytes 72-79, big-endian). */
  private static void setIncompatibleBits(Path p, long bits) throws Exception {
    try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
      f.seek(72);
      long v = f.readLong();
      f.seek(72);
      f.writeLong(v | bits);
    }
  }
}
