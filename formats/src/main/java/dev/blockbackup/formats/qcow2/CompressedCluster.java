package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.ImageFormatException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.zip.DataFormatException;
import java.util.zip.Deflater;
import java.util.zip.Inflater;

/**
 * Compressed clusters: raw deflate streams packed at byte granularity, and the L2 descriptor that
 * finds them. The descriptor keeps the host byte offset below bit {@code 62 - (cluster_bits - 8)}
 * and, above it, the number of 512-byte sectors the stream touches beyond the first.
 */
final class CompressedCluster {

  private CompressedCluster() {}

  static int csizeShift(int clusterBits) {
    return 62 - (clusterBits - 8);
  }

  /** The host byte offset where the stream of descriptor {@code d} starts. */
  static long hostOffset(long d, int clusterBits) {
    return d & ((1L << csizeShift(clusterBits)) - 1);
  }

  /** How many 512-byte sectors the stream touches. */
  static long sectors(long d, int clusterBits) {
    return ((d >>> csizeShift(clusterBits)) & ((1L << (clusterBits - 8)) - 1)) + 1;
  }

  /** The descriptor of a stream of {@code len} bytes at host offset {@code coff} (never COPIED). */
  static long descriptor(long coff, int len, int clusterBits) {
    long extra = (coff + len - 1) / 512 - coff / 512;
    return Qcow2Image.COMPRESSED | coff | (extra << csizeShift(clusterBits));
  }

  /** The first host cluster the stream touches. */
  static long firstCluster(long d, int clusterBits) {
    return hostOffset(d, clusterBits) >>> clusterBits;
  }

  /** The last host cluster the stream's sectors touch (each touched cluster holds one reference). */
  static long lastCluster(long d, int clusterBits) {
    long start = hostOffset(d, clusterBits) & ~511L;
    return (start + sectors(d, clusterBits) * 512 - 1) >>> clusterBits;
  }

  /**
   * Deflates one cluster ({@code in}) into {@code out} (one cluster long); returns the stream's
   * length, or -1 when it does not fit in one byte less than a cluster (QEMU then writes the
   * cluster uncompressed).
   */
  static int deflate(byte[] in, byte[] out) {
    Deflater d = new Deflater(Deflater.DEFAULT_COMPRESSION, true);
    try {
      d.setInput(in);
      d.finish();
      int len = 0;
      while (!d.finished() && len < out.length) {
        len += d.deflate(out, len, out.length - len);
      }
      return d.finished() && len <= out.length - 1 ? len : -1;
    } finally {
      d.end();
    }
  }

  /**
   * Reads and inflates the stream of descriptor {@code d} into {@code out} (a heap buffer of one
   * cluster). Like QEMU, stops once a whole cluster is out and ignores what input is left over.
   */
  static void inflate(HostFile file, String where, long d, int clusterBits, ByteBuffer out) throws IOException {
    int clusterSize = 1 << clusterBits;
    long coff = hostOffset(d, clusterBits);
    long csize = sectors(d, clusterBits) * 512 - (coff & 511);
    csize = Math.min(csize, file.size() - coff);
    if (csize <= 0) {
      throw new ImageFormatException(where + ": compressed cluster at 0x" + Long.toHexString(coff)
          + " lies past the end of the file");
    }
    byte[] in = new byte[(int) csize];
    file.read(ByteBuffer.wrap(in), coff);
    Inflater inf = new Inflater(true);
    try {
      inf.setInput(in);
      byte[] o = out.array();
      int n = 0;
      while (n < clusterSize) {
        int r = inf.inflate(o, n, clusterSize - n);
        if (r == 0 && (inf.finished() || inf.needsInput() || inf.needsDictionary())) {
          break;
        }
        n += r;
      }
      if (n < clusterSize) {
        throw new ImageFormatException(where + ": compressed cluster at 0x" + Long.toHexString(coff)
            + " decompresses to " + n + " bytes instead of " + clusterSize);
      }
    } catch (DataFormatException e) {
      throw new ImageFormatException(where + ": compressed cluster at 0x" + Long.toHexString(coff)
          + " is not valid deflate data: " + e.getMessage(), e);
    } finally {
      inf.end();
    }
  }
}
