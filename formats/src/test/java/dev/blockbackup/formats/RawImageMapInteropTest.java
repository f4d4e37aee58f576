package dev.blockbackup.formats;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.testkit.QemuImg;
import dev.blockbackup.testkit.QemuImg.MapEntry;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Our block status of a sparse raw file against qemu-img map of the same file. */
@Tag("interop")
class RawImageMapInteropTest {

  static final long SIZE = 32L << 20;

  @TempDir Path dir;

  /**
   * Writes a seeded layout: regions of 4 KiB to 1 MiB that are random data, written zeros (data,
   * as far as the file system knows), never written, or written and then punched by discard or
   * write-zeroes with MAY_UNMAP.
   */
  static void layout(RawImage img, long seed) throws Exception {
    SplittableRandom r = new SplittableRandom(seed);
    long pos = 0;
    while (pos < img.size()) {
      int len = (int) Math.min(img.size() - pos, 4096L * r.nextInt(1, 257));
      byte[] b = new byte[len];
      switch (r.nextInt(6)) {
        case 0, 1 -> {
          r.nextBytes(b);
          img.write(pos, ByteBuffer.wrap(b));
        }
        case 2 -> img.write(pos, ByteBuffer.wrap(b));
        case 3 -> {
          r.nextBytes(b);
          img.write(pos, ByteBuffer.wrap(b));
          img.discard(pos, len);
        }
        case 4 -> {
          r.nextBytes(b);
          img.write(pos, ByteBuffer.wrap(b));
          img.writeZeroes(pos, len, WriteFlag.MAY_UNMAP);
        }
        default -> { } // never written
      }
      pos += len;
    }
    img.flush();
  }

  @Test
  void blockStatusListsTheHolesQemuImgMapLists() throws Exception {
    for (long seed = 1; seed <= 3; seed++) {
      Path p = dir.resolve("sparse" + seed + ".raw");
      List<MapEntry> ours = new ArrayList<>();
      try (RawImage img = RawImage.create(p, SIZE)) {
        layout(img, seed);
        long pos = 0;
        while (pos < SIZE) {
          for (Extent e : img.blockStatus(pos, SIZE - pos)) {
            ours.add(new MapEntry(e.offset(), e.length(), 0, e.allocated(), e.zero(), e.data(), null));
            pos = e.end();
          }
        }
      }
      List<MapEntry> qemu = new ArrayList<>();
      for (MapEntry m : QemuImg.map(p, "raw")) {
        qemu.add(new MapEntry(m.start(), m.length(), 0, m.present(), m.zero(), m.data(), null));
      }
      assertThat(ours).as("layout %d", seed).containsExactlyElementsOf(qemu);
      assertThat(ours).as("layout %d has holes", seed).anyMatch(MapEntry::zero);
    }
  }
}
