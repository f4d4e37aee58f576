package dev.blockbackup.formats.qcow2;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;

/**
 * The operations our qcow2 tests run against both the driver and a byte-array model, and a
 * generator of them. Offsets are drawn so that unaligned, cluster-crossing, whole-cluster and
 * end-of-image ranges all come up often.
 */
final class ModelOps {

  private ModelOps() {}

  sealed interface Op permits Write, Zero, Discard, Flush, Read, Reopen, Compress {}

  /** Writes {@code length} bytes drawn from {@code seed} (or, when {@code fill} is non-negative, that byte). */
  record Write(long offset, int length, long seed, int fill, boolean fua) implements Op {
    byte[] data() {
      byte[] d = new byte[length];
      if (fill >= 0) {
        java.util.Arrays.fill(d, (byte) fill);
      } else {
        new SplittableRandom(seed).nextBytes(d);
      }
      return d;
    }
  }

  record Zero(long offset, long length, boolean mayUnmap, boolean fua) implements Op {}

  record Discard(long offset, long length) implements Op {}

  record Flush() implements Op {}

  /** Reads a range mid-sequence and compares it with the model. */
  record Read(long offset, int length) implements Op {}

  /** Closes the image and opens it again read-write. */
  record Reopen() implements Op {}

  /**
   * writeCompressed of guest cluster {@code index} (its content drawn from {@code seed}: text that
   * compresses, random bytes that do not, or a few bytes in zeros). It must succeed when the
   * cluster is unallocated and fail with EIO, changing nothing, when it is allocated.
   */
  record Compress(long index, long seed) implements Op {
    byte[] data(int length) {
      SplittableRandom r = new SplittableRandom(seed);
      byte[] d = new byte[length];
      switch (r.nextInt(3)) {
        case 0 -> {
          byte[] text = ("compressed " + seed + " ").repeat(length / 12 + 1).getBytes(java.nio.charset.StandardCharsets.US_ASCII);
          System.arraycopy(text, 0, d, 0, length);
        }
        case 1 -> r.nextBytes(d);
        default -> {
          for (int i = r.nextInt(100); i < length; i += 1 + r.nextInt(4000)) {
            d[i] = (byte) r.nextInt(256);
          }
        }
      }
      return d;
    }
  }

  /** A byte range inside the image. */
  record Range(long offset, long length) {}

  /** Draws a range of an image of {@code size} bytes with clusters of {@code cluster} bytes. */
  static Range range(SplittableRandom r, long size, int cluster) {
    long clusters = (size + cluster - 1) / cluster;
    switch (r.nextInt(7)) {
      case 0 -> { // anywhere, up to three clusters long
        long off = r.nextLong(size);
        return new Range(off, 1 + r.nextLong(Math.min(size - off, 3L * cluster + 1000)));
      }
      case 1 -> { // whole clusters
        long k = r.nextLong(clusters);
        long n = 1 + r.nextLong(Math.min(4, clusters - k));
        long off = k * cluster;
        return new Range(off, Math.min(size, (k + n) * cluster) - off);
      }
      case 2 -> { // reaching the end of the image
        long off = size - 1 - r.nextLong(Math.min(size, 2L * cluster + 1000));
        if (r.nextBoolean()) {
          off = off / cluster * cluster; // from a cluster boundary: the last cluster is then whole
        }
        return new Range(off, size - off);
      }
      case 3 -> { // a few bytes either side of a cluster boundary
        if (clusters < 2) {
          long off = r.nextLong(size);
          return new Range(off, 1 + r.nextLong(size - off));
        }
        long b = (1 + r.nextLong(clusters - 1)) * cluster;
        long off = b - 1 - r.nextInt(Math.min(cluster, 5000));
        long end = Math.min(size, b + 1 + r.nextInt(5000));
        return new Range(off, end - off);
      }
      case 4 -> { // sector-aligned
        long sectors = size / 512;
        long off = r.nextLong(sectors) * 512;
        long maxLen = Math.min((size - off) / 512, 2L * cluster / 512 + 8);
        return new Range(off, (1 + r.nextLong(maxLen)) * 512);
      }
      case 5 -> { // a cluster minus a little at either end (partial discards and zeroes)
        long k = r.nextLong(clusters);
        long off = Math.min(size - 1, k * cluster + r.nextInt(2) * (1 + r.nextInt(Math.min(cluster - 1, 511))));
        long end = Math.min(size, (k + 1 + r.nextInt(2)) * cluster - r.nextInt(2) * (1 + r.nextInt(511)));
        if (end <= off) {
          end = Math.min(size, off + 1);
        }
        return new Range(off, end - off);
      }
      default -> { // tiny
        long off = r.nextLong(size);
        return new Range(off, 1 + r.nextLong(Math.min(size - off, 600)));
      }
    }
  }

  /**
   * Draws up to {@code maxOps} operations. {@code reopenOdds} in 1000 of them close and reopen the
   * image (0 for none).
   */
  static List<Op> generate(SplittableRandom r, long size, int cluster, int maxOps, int reopenOdds) {
    List<Op> ops = new ArrayList<>();
    int n = 1 + r.nextInt(maxOps);
    for (int i = 0; i < n; i++) {
      Range g = range(r, size, cluster);
      int dice = r.nextInt(1000);
      if (dice < reopenOdds) {
        ops.add(new Reopen());
      } else if (dice >= 950) {
        ops.add(new Compress(r.nextLong((size + cluster - 1) / cluster), r.nextLong()));
      } else if (dice < 60) {
        ops.add(new Flush());
      } else if (dice < 130) {
        ops.add(new Read(g.offset(), (int) Math.min(g.length(), 1 << 24)));
      } else if (dice < 330) {
        ops.add(new Zero(g.offset(), g.length(), r.nextBoolean(), r.nextInt(5) == 0));
      } else if (dice < 470) {
        ops.add(new Discard(g.offset(), g.length()));
      } else {
        int len = (int) Math.min(g.length(), 8 << 20);
        int fill = r.nextInt(6) == 0 ? r.nextInt(256) : -1;
        ops.add(new Write(g.offset(), len, r.nextLong(), fill, r.nextInt(5) == 0));
      }
    }
    return ops;
  }
}
