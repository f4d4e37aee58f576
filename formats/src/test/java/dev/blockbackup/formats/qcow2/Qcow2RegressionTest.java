package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.WriteFlag;
import dev.blockbackup.testkit.QemuImg;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.Arrays;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Minimal cases of driver bugs the acceptance tests found, each pinned by the seed that found it
 * (see the test's comment), so that a fix can be checked without replaying the property.
 */
class Qcow2RegressionTest {

  private static final int C = 65536;

  @TempDir Path dir;

  private static byte[] filled(int len, int value) {
    byte[] b = new byte[len];
    Arrays.fill(b, (byte) value);
    return b;
  }

  /**
   * Found by Qcow2ModelPropertyTest (64K, no backing, seed -1912662536758350164) and by
   * Qcow2QemuImagesTest (snapshot scenario, seed -1873936251944023249): an unaligned writeZeroes
   * that starts in a cluster reading as zero and ends inside a data cluster leaves the data
   * cluster's part unzeroed.
   */
  @Test
  @Tag("interop")
  void zeroingFromAnUnallocatedClusterIntoADataClusterZeroesTheDataPart() throws Exception {
    Path p = dir.resolve("a.qcow2");
    try (Qcow2Image img = Qcow2Image.create(p, Qcow2CreateOptions.of(4L * C))) {
      img.write(C, ByteBuffer.wrap(filled(C, 0x77)));
      img.writeZeroes(C - 100, 200);
      ByteBuffer back = ByteBuffer.allocate(200);
      img.read(C - 100, back);
      assertThat(ModelRunner.firstNonZero(back.array(), 0, 200)).as("first non-zero byte of the zeroed range").isEqualTo(-1);
      ByteBuffer rest = ByteBuffer.allocate(C - 100);
      img.read(C + 100, rest);
      assertThat(rest.array()).as("the rest of the data cluster").isEqualTo(filled(C - 100, 0x77));
    }
    QemuImg.assertCheckClean(p);
  }

  /** Same, with MAY_UNMAP and FUA as the seeds had them. */
  @Test
  void zeroingWithMayUnmapFromAnUnallocatedClusterIntoADataClusterZeroesTheDataPart() throws Exception {
    try (Qcow2Image img = Qcow2Image.create(dir.resolve("b.qcow2"), Qcow2CreateOptions.of(4L * C))) {
      img.write(C, ByteBuffer.wrap(filled(C, 0x77)));
      img.writeZeroes(C - 3126, 4193, WriteFlag.MAY_UNMAP, WriteFlag.FUA);
      ByteBuffer back = ByteBuffer.allocate(4193);
      img.read(C - 3126, back);
      assertThat(ModelRunner.firstNonZero(back.array(), 0, 4193)).as("first non-zero byte of the zeroed range").isEqualTo(-1);
    }
  }

  /**
   * Found by Qcow2QemuImagesTest.infoAgreesWithQemuImgInfo ("compat=0.10 over raw"): v2 images
   * carry header extensions too (qemu-img create -o compat=0.10 -F raw writes the backing-format
   * extension at byte 72), but the driver reads extensions only in v3 images, so the backing
   * format is lost (and a raw backing file would have to be probed).
   */
  @Test
  @Tag("interop")
  void aV2ImageKeepsItsBackingFormatExtension() throws Exception {
    Path base = dir.resolve("base.raw");
    QemuImg.img("create", "-q", "-f", "raw", base, 1 << 20).assertExit(0);
    Path p = dir.resolve("v2.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.raw", "-F", "raw", p, 1 << 20)
        .assertExit(0);
    try (Qcow2Image img = Qcow2Image.open(p, true)) {
      assertThat(img.info().version()).isEqualTo(2);
      assertThat(img.info().backingFile()).isEqualTo("base.raw");
      assertThat(img.info().backingFormat()).isEqualTo("raw");
    }
  }

  /**
   * The consequence of the bug above: a raw backing file whose guest data happens to start with
   * the qcow2 magic (a guest that stores a qcow2 image on its disk) is probed and opened as qcow2,
   * so the overlay reads other bytes than QEMU, which honours the "raw" extension.
   */
  @Test
  @Tag("interop")
  void aV2ImageOverARawBaseThatLooksLikeQcow2ReadsTheRawBytes() throws Exception {
    Path inner = dir.resolve("inner.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", inner, 1 << 20).assertExit(0);
    QemuImg.io("-f", "qcow2", "-c", "write -P 0x42 0 65536", inner).assertExit(0);
    byte[] innerBytes = java.nio.file.Files.readAllBytes(inner);
    Path base = dir.resolve("base.raw");
    java.nio.file.Files.write(base, Arrays.copyOf(innerBytes, 2 << 20)); // raw guest data: a qcow2 file's bytes
    Path p = dir.resolve("v2.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.raw", "-F", "raw", p, 2 << 20)
        .assertExit(0);
    byte[] expected = ModelRunner.qemuContent(p, "qcow2", dir);
    try (Qcow2Image img = Qcow2Image.open(p, true)) {
      ModelRunner.verifyContent(img, expected, "v2 overlay over a raw base holding qcow2 bytes");
    }
  }
}
