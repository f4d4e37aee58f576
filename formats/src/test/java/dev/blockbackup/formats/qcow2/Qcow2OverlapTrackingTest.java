package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.ImageFormatException;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The metadata an image gains while it is open (new L2 tables, new refcount blocks) is protected
 * from then on: a mapping pointed at it behind the image's back is refused on write.
 */
class Qcow2OverlapTrackingTest {

  private static final int CLUSTER = 512;
  private static final long COPIED = 1L << 63;

  @TempDir Path dir;

  @Test
  void aRefcountBlockAllocatedDuringTheSessionIsProtected() throws IOException {
    assertNewMetadataProtected(true, "refcount block");
  }

  @Test
  void anL2TableAllocatedDuringTheSessionIsProtected() throws IOException {
    assertNewMetadataProtected(false, "active L2 table");
  }

  private void assertNewMetadataProtected(boolean refblock, String kind) throws IOException {
    Path image = dir.resolve("grown.qcow2");
    Qcow2Image.create(image, Qcow2CreateOptions.of(64L << 20).withClusterSize(CLUSTER)).close();
    // two cached L2 tables: the first table is written out and read back after the hand edit
    try (Qcow2Image img = Qcow2Image.openWithSmallCache(image, false, 2)) {
      ByteBuffer data = ByteBuffer.allocate(1 << 20);
      img.write(0, data); // 2048 clusters: 32 new L2 tables and several new refcount blocks
      img.flush();
      try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "rw")) {
        long reftable = readLong(f, 48);
        long l1 = readLong(f, 40);
        long firstL2 = readLong(f, l1) & Qcow2Image.OFFSET_MASK;
        long victim;
        if (refblock) {
          int last = 0;
          while (readLong(f, reftable + (last + 1) * 8L) != 0) {
            last++;
          }
          assertThat(last).as("refcount blocks added").isPositive();
          victim = readLong(f, reftable + last * 8L);
        } else {
          victim = readLong(f, l1 + 31 * 8) & Qcow2Image.OFFSET_MASK; // the last table of the write
        }
        f.seek(firstL2);
        f.writeLong(victim | COPIED);
      }
      assertThatThrownBy(() -> img.write(0, ByteBuffer.allocate(CLUSTER)))
          .isInstanceOf(ImageFormatException.class)
          .hasMessageContaining("overlaps with " + kind);
    } catch (ImageFormatException closing) {
      // close flushes nothing into a corrupt image: refused, as every write after the first
      assertThat(closing).hasMessageContaining("marked corrupt");
    }
    assertThatThrownBy(() -> Qcow2Image.open(image, false)).hasMessageContaining("marked corrupt");
  }

  private static long readLong(RandomAccessFile f, long pos) throws IOException {
    f.seek(pos);
    return f.readLong();
  }
}
