package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.ImageFormatException;
import dev.blockbackup.testkit.QemuImg;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Images made by qemu-img, then hand-edited so that a write would land on their metadata: the
 * write fails with QEMU's "Preventing invalid write on metadata", nothing of the image changes but
 * the corrupt bit, and qemu-img sees the bit.
 */
@Tag("interop")
class Qcow2OverlapCheckTest {

  private static final long COPIED = 1L << 63;
  private static final int CLUSTER = 64 * 1024;

  @TempDir Path dir;
  private Path image;
  private long l1Offset;
  private long reftableOffset;
  private long refblockOffset;
  private long l2Offset;

  @BeforeEach
  void qemuMakesAnImageWithOneDataCluster() throws IOException {
    image = dir.resolve("hostile.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", image, "1G").assertExit(0);
    QemuImg.io("-c", "write -P 0xab 0 64k", image).assertExit(0);
    l1Offset = longAt(40);
    reftableOffset = longAt(48);
    refblockOffset = longAt(reftableOffset);
    l2Offset = longAt(l1Offset) & Qcow2Image.OFFSET_MASK;
    assertThat(l2Offset).isPositive();
  }

  @Test
  void aDataClusterInsideItsRefcountBlockIsRefusedAndMarksTheImageCorrupt() throws IOException {
    putLong(l2Offset, refblockOffset | COPIED);
    assertRefusedAndCorrupt(0, "refcount block");
  }

  @Test
  void aDataClusterOnItsOwnL2TableIsRefusedAndMarksTheImageCorrupt() throws IOException {
    putLong(l2Offset, l2Offset | COPIED);
    assertRefusedAndCorrupt(4096, "active L2 table");
  }

  @Test
  void aHeaderClusterCountedFreeIsNotAllocatedOverTheHeader() throws IOException {
    // refcount 0 for cluster 0: the allocator hands it out, and the data write would hit the header
    ByteBuffer zero = ByteBuffer.allocate(2);
    write(zero, refblockOffset);
    assertRefusedAndCorrupt(1 << 20, "qcow2_header");
  }

  @Test
  void anL2TableAllocatedOverTheL1TableIsRefused() throws IOException {
    // refcount 0 for the L1 table's cluster, the first that counts free, and a write past the
    // first L2 table's reach (512 MiB), which needs a new L2 table
    assertThat(l1Offset).isEqualTo(3L * CLUSTER);
    write(ByteBuffer.allocate(2), refblockOffset + 3 * 2);
    assertRefusedAndCorrupt(600L << 20, "active L1 table");
  }

  private void assertRefusedAndCorrupt(long guestOffset, String kind) throws IOException {
    byte[] before = Files.readAllBytes(image);
    Qcow2Image img = Qcow2Image.open(image, false);
    try {
      assertThatThrownBy(() -> img.write(guestOffset, ByteBuffer.wrap(new byte[4096])))
          .isInstanceOf(ImageFormatException.class)
          .hasMessageContaining("Preventing invalid write on metadata (overlaps with " + kind)
          .hasMessageContaining("image marked as corrupt");
      assertThatThrownBy(() -> img.write(guestOffset, ByteBuffer.wrap(new byte[4096])))
          .isInstanceOf(ImageFormatException.class).hasMessageContaining("marked corrupt");
      assertThat(img.info().corrupt()).as("info of the open image after the refusal").isTrue();
    } finally {
      try {
        img.close();
      } catch (ImageFormatException ignored) {
        // metadata it would flush is refused too: the image is not written again
      }
    }
    byte[] after = Files.readAllBytes(image);
    assertThat(after[Qcow2Header.OFF_INCOMPAT + 7] & 2).as("corrupt bit").isEqualTo(2);
    after[Qcow2Header.OFF_INCOMPAT + 7] &= ~2;
    assertThat(after).as("the image but for the corrupt bit").isEqualTo(before);
    assertThat(QemuImg.info(image).path("format-specific").path("data").path("corrupt").asBoolean()).isTrue();
    assertThatThrownBy(() -> Qcow2Image.open(image, false))
        .isInstanceOf(ImageFormatException.class).hasMessageContaining("marked corrupt");
  }

  private long longAt(long pos) throws IOException {
    try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "r")) {
      f.seek(pos);
      return f.readLong();
    }
  }

  private void putLong(long pos, long v) throws IOException {
    write(ByteBuffer.allocate(8).putLong(0, v), pos);
  }

  private void write(ByteBuffer b, long pos) throws IOException {
    try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "rw")) {
      f.getChannel().write(b, pos);
    }
  }
}
