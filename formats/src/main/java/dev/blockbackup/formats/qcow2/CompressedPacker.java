package dev.blockbackup.formats.qcow2;

import java.io.IOException;

/**
 * Packs compressed streams into host clusters, each after the previous one, the way QEMU's byte
 * allocator does: a host cluster holds as many streams as fit, and counts one reference per stream.
 * Used under the metadata lock.
 */
final class CompressedPacker {

  private final RefcountTable refcounts;
  private final int clusterBits;
  private final int clusterSize;
  /** Next free byte in the host cluster that streams are packed into, or 0 for none. */
  private long next;

  CompressedPacker(RefcountTable refcounts, int clusterBits) {
    this.refcounts = refcounts;
    this.clusterBits = clusterBits;
    this.clusterSize = 1 << clusterBits;
  }

  /** Places {@code len} (less than one cluster) bytes, packed after the previous stream; returns their host offset. */
  long allocate(int len) throws IOException {
    long cur = next;
    if (cur != 0 && (cur & (clusterSize - 1)) != 0) {
      long c = cur >>> clusterBits;
      long room = clusterSize - (cur & (clusterSize - 1));
      long rc = refcounts.get(c);
      if (rc > 0 && rc < refcounts.maxRefcount()) {
        // a stream that does not fit may run on into the next cluster when that one is free
        if (len <= room || refcounts.allocateAt(c + 1)) {
          refcounts.add(c, 1);
          next = cur + len;
          return cur;
        }
      }
    }
    long off = refcounts.allocate(1) << clusterBits;
    next = off + len;
    return off;
  }

  /** Whether streams are being packed into host cluster {@code ci}. */
  boolean packsInto(long ci) {
    return next != 0 && (next - 1) >>> clusterBits == ci;
  }

  /** Packs no further stream into the current cluster (it lost its last reference). */
  void stop() {
    next = 0;
  }
}
