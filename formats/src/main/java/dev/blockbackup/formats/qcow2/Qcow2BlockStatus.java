package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.Extent;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;

/**
 * Block status from the mapping: data and compressed clusters are data, allocated; zero-flag
 * clusters zero, allocated; unallocated ones zero without a backing file, else the backing file's
 * data/zero flags (zero beyond its end), not allocated. Adjacent extents of one kind are merged.
 */
final class Qcow2BlockStatus {

  /** The most extents one call reports; callers ask again from where the answer ended. */
  private static final int MAX_EXTENTS = 4096;

  private final Qcow2Metadata md;
  private final BlockDevice backing;

  Qcow2BlockStatus(Qcow2Metadata md, BlockDevice backing) {
    this.md = md;
    this.backing = backing;
  }

  /** The extents from {@code offset} (a prefix of {@code [offset, offset+length)}, never empty for a non-empty range). */
  List<Extent> of(long offset, long length) throws IOException {
    int clusterBits = md.clusterBits;
    List<Extent> out = new ArrayList<>();
    long end = offset + length;
    long[] run = new long[2];
    long pos = offset;
    while (pos < end && out.size() < MAX_EXTENTS) {
      long gci = pos >>> clusterBits;
      int inCluster = (int) (pos & (md.clusterSize - 1));
      long maxClusters = ((inCluster + (end - pos) - 1) >>> clusterBits) + 1;
      long n = md.lookupRun(gci, maxClusters, run);
      long runEnd = Math.min(end, (gci + n) << clusterBits);
      switch ((int) run[0]) {
        case ClusterMap.NORMAL, ClusterMap.COMPRESSED_KIND -> add(out, Extent.data(pos, runEnd - pos));
        case ClusterMap.ZERO -> add(out, Extent.zero(pos, runEnd - pos, true));
        default -> {
          if (!unallocated(out, pos, runEnd)) {
            return out; // the backing file answered a prefix: so do we
          }
        }
      }
      pos = runEnd;
    }
    return out;
  }

  /** Adds the extents of unallocated {@code [pos, runEnd)}; false when the backing file answered only a prefix. */
  private boolean unallocated(List<Extent> out, long pos, long runEnd) throws IOException {
    if (backing == null) {
      add(out, Extent.zero(pos, runEnd - pos, false));
      return true;
    }
    long bEnd = Math.min(runEnd, backing.size());
    if (pos < bEnd) {
      long reached = pos;
      for (Extent x : backing.blockStatus(pos, bEnd - pos)) {
        add(out, new Extent(x.offset(), x.length(), x.data(), x.zero(), false));
        reached = x.end();
      }
      if (reached < bEnd) {
        return false;
      }
    }
    if (Math.max(pos, bEnd) < runEnd) {
      long z = Math.max(pos, bEnd);
      add(out, Extent.zero(z, runEnd - z, false));
    }
    return true;
  }

  private static void add(List<Extent> out, Extent e) {
    if (!out.isEmpty() && out.get(out.size() - 1).mergeableWith(e)) {
      out.set(out.size() - 1, out.get(out.size() - 1).merge(e));
    } else {
      out.add(e);
    }
  }
}
