package dev.blockbackup.formats.qcow2;

import static dev.blockbackup.formats.qcow2.Qcow2Image.OFFSET_MASK;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.ImageFormatException;
import java.io.IOException;
import java.nio.ByteBuffer;

/**
 * Reads guest bytes through the mapping: data clusters from the host file, zero clusters as
 * zeros, compressed clusters inflated, unallocated ones from the backing file (zeros past its end,
 * or without one). The mapping is looked up under the metadata lock, the data read outside it;
 * callers hold the guest range, so the host clusters read cannot be freed meanwhile.
 */
final class ClusterReader {

  /** Zeros to copy from; read-only, shared. */
  static final ByteBuffer ZEROS = ByteBuffer.allocateDirect(1 << 20).asReadOnlyBuffer();

  private final Qcow2Metadata md;
  private final BlockDevice backing;

  ClusterReader(Qcow2Metadata md, BlockDevice backing) {
    this.md = md;
    this.backing = backing;
  }

  /** Fills {@code dst} with the guest bytes from {@code offset}. */
  void read(long offset, ByteBuffer dst) throws IOException {
    int clusterBits = md.clusterBits;
    int clusterSize = md.clusterSize;
    long[] run = new long[2];
    long pos = offset;
    int limit = dst.limit();
    while (dst.position() < limit) {
      long gci = pos >>> clusterBits;
      int inCluster = (int) (pos & (clusterSize - 1));
      long remaining = limit - dst.position();
      long maxClusters = ((inCluster + remaining - 1) >>> clusterBits) + 1;
      long n = md.lookupRun(gci, maxClusters, run);
      int len = (int) Math.min(remaining, (n << clusterBits) - inCluster);
      ByteBuffer part = dst.slice(dst.position(), len);
      switch ((int) run[0]) {
        case ClusterMap.UNALLOCATED -> readBacking(pos, part);
        case ClusterMap.ZERO -> zeroFill(part);
        case ClusterMap.NORMAL -> md.data.read(part, run[1] + inCluster);
        default -> {
          checkNotCompressed();
          ByteBuffer c = ByteBuffer.allocate(clusterSize);
          CompressedCluster.inflate(md.file, md.where, run[1], clusterBits, c);
          part.put(c.array(), inCluster, len);
        }
      }
      dst.position(dst.position() + len);
      pos += len;
    }
  }

  /**
   * Fills {@code c} (one cluster, a fresh heap buffer) with what the guest cluster at
   * {@code guestStart} read as under L2 entry {@code e}.
   */
  void readCluster(long e, long guestStart, ByteBuffer c) throws IOException {
    switch (md.kindOf(e)) {
      case ClusterMap.UNALLOCATED -> {
        int inImage = (int) Math.min(md.clusterSize, md.size - guestStart);
        readBacking(guestStart, c.slice(0, inImage));
      }
      case ClusterMap.ZERO -> {
        // a fresh heap buffer is zero already
      }
      case ClusterMap.NORMAL -> md.data.read(c.duplicate(), e & OFFSET_MASK);
      default -> {
        checkNotCompressed();
        CompressedCluster.inflate(md.file, md.where, e, md.clusterBits, c);
      }
    }
  }

  /** An image with an external data file has no compressed clusters: an entry saying so is corrupt. */
  private void checkNotCompressed() throws ImageFormatException {
    if (md.externalData) {
      throw new ImageFormatException(md.where + ": compressed cluster in an image with an external data file");
    }
  }

  /** Reads guest bytes that this layer does not allocate: from the backing file, zeros past its end. */
  private void readBacking(long pos, ByteBuffer part) throws IOException {
    if (backing == null) {
      zeroFill(part);
      return;
    }
    long bsize = backing.size();
    int fromBacking = (int) Math.max(0, Math.min(part.remaining(), bsize - pos));
    if (fromBacking > 0) {
      backing.read(pos, part.slice(part.position(), fromBacking));
      part.position(part.position() + fromBacking);
    }
    zeroFill(part);
  }

  static void zeroFill(ByteBuffer b) {
    while (b.hasRemaining()) {
      int n = Math.min(b.remaining(), ZEROS.capacity());
      b.put(ZEROS.duplicate().limit(n));
    }
  }
}
