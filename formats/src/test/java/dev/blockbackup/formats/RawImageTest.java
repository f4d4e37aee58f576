package dev.blockbackup.formats;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.testkit.Property;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class RawImageTest {

  @TempDir Path dir;

  private static final int SIZE = 1 << 20;

  sealed interface Op permits Write, Zero, Discard, Flush {}

  record Write(long offset, int length, long seed) implements Op {}

  record Zero(long offset, int length, boolean mayUnmap) implements Op {}

  record Discard(long offset, int length) implements Op {}

  record Flush() implements Op {}

  static List<Op> ops(SplittableRandom r) {
    List<Op> ops = new ArrayList<>();
    int n = r.nextInt(1, 40);
    for (int i = 0; i < n; i++) {
      long off = r.nextInt(SIZE);
      int len = r.nextInt(1, (int) Math.min(SIZE - off, 200_000) + 1);
      switch (r.nextInt(10)) {
        case 0, 1 -> ops.add(new Zero(off, len, r.nextBoolean()));
        case 2 -> ops.add(new Discard(off, len));
        case 3 -> ops.add(new Flush());
        default -> ops.add(new Write(off, len, r.nextLong()));
      }
    }
    if (r.nextInt(4) == 0) {
      ops.add(new Zero(SIZE - 70_000, 70_000, true)); // the tail-truncation path
    }
    return ops;
  }

  @Test
  void randomWritesZeroesAndDiscardsReadBackAsTheModel() {
    modelCheck(true);
  }

  /** The pure-Java stand-in keeps the same contract, except that discard keeps the data. */
  @Test
  void withoutNativeHolesRandomOpsReadBackAsTheModel() {
    modelCheck(false);
  }

  private void modelCheck(boolean nativeHoles) {
    Property.check("raw matches a byte-array model (native holes " + nativeHoles + ")", 30, RawImageTest::ops, ops -> {
      Path p = Files.createTempFile(dir, "raw", ".img");
      byte[] model = new byte[SIZE];
      try (RawImage img = RawImage.create(p, SIZE, CacheMode.WRITEBACK, nativeHoles)) {
        assertThat(img.hasNativeHoles()).as("native holes").isEqualTo(nativeHoles);
        for (Op op : ops) {
          if (op instanceof Write w) {
            byte[] data = new byte[w.length()];
            new SplittableRandom(w.seed()).nextBytes(data);
            img.write(w.offset(), ByteBuffer.wrap(data));
            System.arraycopy(data, 0, model, (int) w.offset(), data.length);
          } else if (op instanceof Zero z) {
            img.writeZeroes(z.offset(), z.length(), z.mayUnmap() ? new WriteFlag[] {WriteFlag.MAY_UNMAP} : new WriteFlag[0]);
            Arrays.fill(model, (int) z.offset(), (int) z.offset() + z.length(), (byte) 0);
          } else if (op instanceof Discard d) {
            img.discard(d.offset(), d.length());
            if (nativeHoles || d.offset() + d.length() == SIZE) {
              Arrays.fill(model, (int) d.offset(), (int) d.offset() + d.length(), (byte) 0);
            }
          } else {
            img.flush();
          }
        }
        ByteBuffer back = ByteBuffer.allocate(SIZE);
        img.read(0, back);
        assertSameBytes(back.array(), model, "read back");
        assertZeroExtentsReadZero(img, model);
      }
      try (RawImage again = RawImage.open(p, true)) {
        ByteBuffer back = ByteBuffer.allocate(SIZE);
        again.read(0, back);
        assertSameBytes(back.array(), model, "after reopening");
      }
    });
  }

  @Test
  void requestBeyondTheEndIsRejectedWithEinval() throws Exception {
    try (RawImage img = RawImage.create(dir.resolve("a.raw"), 4096)) {
      assertThatThrownBy(() -> img.write(4000, ByteBuffer.allocate(200)))
          .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EINVAL));
      assertThatThrownBy(() -> img.read(-1, ByteBuffer.allocate(1)))
          .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EINVAL));
    }
  }

  @Test
  void writeToReadOnlyImageIsRejectedWithEperm() throws Exception {
    Path p = dir.resolve("b.raw");
    RawImage.create(p, 4096).close();
    try (RawImage img = RawImage.open(p, true)) {
      assertThatThrownBy(() -> img.write(0, ByteBuffer.allocate(1)))
          .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EPERM));
    }
  }

  @Test
  void zeroingTheTailFreesItsBlocks() throws Exception {
    Path p = dir.resolve("c.raw");
    try (RawImage img = RawImage.create(p, 8 << 20)) {
      img.write(0, ByteBuffer.wrap(new byte[8 << 20]).put(0, (byte) 1));
      img.flush();
      img.writeZeroes(1 << 20, 7 << 20, WriteFlag.MAY_UNMAP, WriteFlag.NO_FALLBACK);
      img.flush();
    }
    assertThat(allocatedBytes(p)).as("bytes allocated on disk").isLessThanOrEqualTo(2 << 20);
  }

  @Test
  void withoutNativeHolesFastZeroInTheMiddleIsRefusedWithEnotsup() throws Exception {
    try (RawImage img = RawImage.create(dir.resolve("d.raw"), 1 << 20, CacheMode.WRITEBACK, false)) {
      assertThatThrownBy(() -> img.writeZeroes(0, 4096, WriteFlag.NO_FALLBACK))
          .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.ENOTSUP));
    }
  }

  /** Compares without printing a megabyte: the first differing byte and the ops that led there. */
  private static void assertSameBytes(byte[] actual, byte[] model, String what) {
    int i = Arrays.mismatch(actual, model);
    assertThat(i).as("%s: first byte that differs from the model (%s)", what,
        i < 0 ? "" : "at " + i + " reads " + actual[i] + ", model " + model[i]).isEqualTo(-1);
  }

  /** Block status never calls zero what reads otherwise, and its extents tile the device. */
  private static void assertZeroExtentsReadZero(RawImage img, byte[] model) throws Exception {
    long pos = 0;
    while (pos < model.length) {
      List<Extent> ext = img.blockStatus(pos, model.length - pos);
      assertThat(ext).isNotEmpty();
      for (Extent e : ext) {
        assertThat(e.offset()).isEqualTo(pos);
        assertThat(e.allocated()).isTrue();
        assertThat(e.data()).isNotEqualTo(e.zero());
        if (e.zero()) {
          for (long i = e.offset(); i < e.end(); i++) {
            if (model[(int) i] != 0) {
              throw new AssertionError("byte " + i + " of the zero extent " + e + " reads " + model[(int) i]);
            }
          }
        }
        pos = e.end();
      }
    }
  }

  /** Bytes the file occupies on disk, from stat(1): blocks times block size. */
  static long allocatedBytes(Path p) throws Exception {
    Process stat = new ProcessBuilder("stat", "-c", "%b %B", p.toString()).start();
    String[] out = new String(stat.getInputStream().readAllBytes()).trim().split(" ");
    stat.waitFor();
    return Long.parseLong(out[0]) * Long.parseLong(out[1]);
  }
}
