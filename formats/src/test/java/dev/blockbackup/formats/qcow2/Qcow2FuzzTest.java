package dev.blockbackup.formats.qcow2;

import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;

import com.code_intelligence.jazzer.api.FuzzedDataProvider;
import com.code_intelligence.jazzer.junit.FuzzTest;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;

/**
 * Hostile images from a coverage-guided fuzzer: a small image of ours (data, zero, compressed and
 * partly written clusters, 4 KiB clusters so all metadata sits in the first few clusters) has bytes
 * overwritten where the fuzzer says, mostly in the header. Opening it, reading it all, walking its
 * block status and writing to it may only ever fail with a {@link BlockIOException}: no other
 * exception, no OutOfMemoryError, no hang.
 *
 * <p>The default build replays the inputs under {@code Qcow2FuzzTestInputs/} (regression mode);
 * {@code JAZZER_FUZZ=1 ./mvnw -pl formats test -Dtest=Qcow2FuzzTest} fuzzes.
 */
class Qcow2FuzzTest {

  private static final int SIZE = 1 << 20;
  private static byte[] template;

  private static synchronized byte[] template() throws Exception {
    if (template == null) {
      Path p = Files.createTempFile("bb-fuzz-template", ".qcow2");
      try {
        try (Qcow2Image img = Qcow2Image.create(p, Qcow2CreateOptions.of(SIZE).withClusterSize(4096))) {
          byte[] data = new byte[20_000];
          for (int i = 0; i < data.length; i++) {
            data[i] = (byte) (i * 31 + 7);
          }
          img.write(1000, ByteBuffer.wrap(data));
          img.writeZeroes(64 * 1024, 8192);
          img.writeCompressed(128 * 1024, ByteBuffer.wrap(new byte[4096]).put(0, (byte) 9));
          img.writeCompressed(132 * 1024, ByteBuffer.wrap(data, 0, 4096));
          img.write(SIZE - 4096, ByteBuffer.wrap(data, 0, 4096));
          img.discard(8192, 4096);
        }
        template = Files.readAllBytes(p);
      } finally {
        Files.deleteIfExists(p);
      }
    }
    return template;
  }

  @FuzzTest(maxDuration = "60s")
  void corruptImagesFailOnlyWithBlockErrors(FuzzedDataProvider in) throws Exception {
    byte[] image = template().clone();
    int patches = in.consumeInt(1, 6);
    for (int i = 0; i < patches && in.remainingBytes() > 0; i++) {
      // The header's 112 bytes hold most of what a hostile image can lie about; the rest of the
      // first clusters hold the refcount table, refcount block, L1 and L2 tables.
      int at = in.consumeBoolean() ? in.consumeInt(0, 111) : in.consumeInt(0, image.length - 1);
      byte[] bytes = in.consumeBytes(8);
      System.arraycopy(bytes, 0, image, at, Math.min(bytes.length, image.length - at));
    }
    boolean writable = in.consumeBoolean();
    Path p = Files.createTempFile("bb-fuzz", ".qcow2");
    try {
      Files.write(p, image);
      assertTimeoutPreemptively(Duration.ofSeconds(10), () -> exercise(p, writable));
    } finally {
      Files.deleteIfExists(p);
    }
  }

  private static void exercise(Path p, boolean writable) {
    try (Qcow2Image img = Qcow2Image.open(p, !writable)) {
      long size = Math.min(img.size(), 4L * SIZE);
      img.read(0, ByteBuffer.allocate((int) size));
      for (long off = 0; off < size; ) {
        List<Extent> extents = img.blockStatus(off, size - off);
        off = extents.get(extents.size() - 1).end();
      }
      if (writable) {
        img.write(4096 * 3 + 100, ByteBuffer.allocate(9000));
        img.writeZeroes(0, Math.min(size, 3 * 4096));
        img.discard(128 * 1024, Math.min(size - 128 * 1024, 8192));
        img.flush();
      }
    } catch (BlockIOException refusedOrFailed) {
      // the only acceptable way to fail: a typed block error with a message
    }
  }
}
