package dev.blockbackup.formats.qcow2;

import static dev.blockbackup.formats.qcow2.Qcow2Image.COMPRESSED;
import static dev.blockbackup.formats.qcow2.Qcow2Image.COPIED;
import static dev.blockbackup.formats.qcow2.Qcow2Image.OFFSET_MASK;
import static dev.blockbackup.formats.qcow2.Qcow2Image.ZERO_FLAG;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;

/**
 * Write-zeroes and discard, QEMU's three ways of rewriting whole clusters' L2 entries: DISCARD
 * (the cluster reads as zero and holds nothing: unallocated, or the zero flag over a backing
 * file), ZERO (the zero flag, keeping a cluster this image owns alone: ZERO_ALLOC) and ZERO_UNMAP
 * (the zero flag or unallocated, freeing the host cluster). Partial clusters are written with zero
 * bytes unless they read as zero already. A v2 image over a backing file has no zero flag, so there
 * whole clusters are written with zero bytes too. Host clusters an entry no longer points to are
 * freed once the new entries are durable.
 *
 * <p>The caller holds the guest clusters the request touches exclusively.
 */
final class ZeroAndDiscard {

  private enum Mode { DISCARD, ZERO, ZERO_UNMAP }

  private final Qcow2Metadata md;
  private final BlockDevice backing;
  private final ClusterAllocator allocator;

  ZeroAndDiscard(Qcow2Metadata md, BlockDevice backing, ClusterAllocator allocator) {
    this.md = md;
    this.backing = backing;
    this.allocator = allocator;
  }

  /**
   * Makes {@code [offset, offset+length)} (not empty) read as zero.
   *
   * @throws BlockIOException ENOTSUP with {@code noFallback} when zero bytes would have to be written
   */
  void writeZeroes(long offset, long length, boolean noFallback, boolean unmap) throws IOException {
    int clusterBits = md.clusterBits;
    long end = offset + length;
    if (md.rawData) {
      if (noFallback) {
        throw new BlockIOException(BlockError.ENOTSUP, md.where + ": zeroing [" + offset + ", +" + length
            + ") would need zero bytes written into the raw data file");
      }
      zeroRawData(offset, end);
    }
    long fw = md.clusterAtOrAfter(offset);
    long ew = md.wholeClustersEnd(end);
    boolean v2Backing = md.version == 2 && backing != null;
    List<long[]> pieces = new ArrayList<>(2);
    if (fw >= ew) {
      // no whole cluster: at most two partial ones, judged one by one
      long split = Math.min(end, ((offset >>> clusterBits) + 1) << clusterBits);
      pieces.add(new long[] {offset, split});
      if (split < end) {
        pieces.add(new long[] {split, end});
      }
    } else {
      if (offset < fw << clusterBits) {
        pieces.add(new long[] {offset, fw << clusterBits});
      }
      if (ew << clusterBits < end) {
        pieces.add(new long[] {ew << clusterBits, end});
      }
    }
    List<long[]> toWrite = new ArrayList<>(2);
    md.lock.lock();
    try {
      for (long[] p : pieces) {
        int k = md.kindOf(md.map.entryAt(p[0] >>> clusterBits));
        if (!(k == ClusterMap.ZERO || (k == ClusterMap.UNALLOCATED && backing == null))) {
          toWrite.add(p);
        }
      }
    } finally {
      md.lock.unlock();
    }
    if (noFallback && (!toWrite.isEmpty() || (v2Backing && fw < ew))) {
      throw new BlockIOException(BlockError.ENOTSUP, md.where + ": zeroing [" + offset + ", +" + length
          + ") would need zero bytes written (partial clusters or a v2 image over a backing file)");
    }
    for (long[] p : toWrite) {
      writeZeroBytes(p[0], p[1]);
    }
    if (fw < ew) {
      if (v2Backing) {
        writeZeroBytes(fw << clusterBits, Math.min(md.size, ew << clusterBits));
      } else {
        rewriteEntries(fw, ew - fw, unmap ? Mode.ZERO_UNMAP : Mode.ZERO);
      }
    }
  }

  /** Discards the whole clusters {@code [first, end)}. */
  void discard(long first, long end) throws IOException {
    if (md.rawData) {
      zeroRawData(first << md.clusterBits, Math.min(md.size, end << md.clusterBits));
    }
    if (md.version == 2 && backing != null) {
      writeZeroBytes(first << md.clusterBits, Math.min(md.size, end << md.clusterBits));
    } else {
      rewriteEntries(first, end - first, Mode.DISCARD);
    }
  }

  /**
   * With data_file_raw the raw file must go on reading as the guest disk does, so zeroed and
   * discarded bytes are zeroed in it too before the entries change, as QEMU does. Bytes past the
   * raw file's end read as zero already.
   */
  private void zeroRawData(long from, long to) throws IOException {
    long end = Math.min(to, md.data.size());
    for (long p = from; p < end; ) {
      int n = (int) Math.min(ClusterReader.ZEROS.capacity(), end - p);
      md.data.write(ClusterReader.ZEROS.duplicate().limit(n), p);
      p += n;
    }
  }

  private void writeZeroBytes(long from, long to) throws IOException {
    for (long p = from; p < to; ) {
      int n = (int) Math.min(ClusterReader.ZEROS.capacity(), to - p);
      allocator.write(p, ClusterReader.ZEROS.duplicate().limit(n));
      p += n;
    }
  }

  /** Rewrites the L2 entries of whole clusters, then frees what they no longer point to. */
  private void rewriteEntries(long first, long count, Mode mode) throws IOException {
    ClusterMap map = md.map;
    long l2Entries = md.l2Entries;
    md.lock.lock();
    try {
      long g = first;
      long end = first + count;
      while (g < end) {
        long l1i = g / l2Entries;
        int idx = (int) (g % l2Entries);
        long chunk = Math.min(end - g, l2Entries - idx);
        if (map.l2OffsetAt(l1i) == 0 && newEntry(0, mode) == 0) {
          g += chunk;
          continue;
        }
        boolean changes = false;
        if (map.l2OffsetAt(l1i) != 0) {
          L2Cache.Table t = md.l2.get(map.l2OffsetAt(l1i));
          for (int i = 0; i < chunk && !changes; i++) {
            long e = map.checkL2(t.e[idx + i], g + i);
            changes = newEntry(e, mode) != e;
          }
        } else {
          changes = true;
        }
        if (changes) {
          L2Cache.Table t = md.l2.get(map.ensureWritableL2(l1i));
          for (int i = 0; i < chunk; i++) {
            long e = map.checkL2(t.e[idx + i], g + i);
            long ne = newEntry(e, mode);
            if (ne != e) {
              t.set(idx + i, ne);
              boolean keepsHost = (e & COMPRESSED) == 0 && (ne & OFFSET_MASK) == (e & OFFSET_MASK);
              if (md.holdsRefcounts(e) && !keepsHost) {
                md.frees.freeLater(e);
              }
            }
          }
        }
        g += chunk;
      }
      md.frees.apply();
    } finally {
      md.lock.unlock();
    }
  }

  /** The entry that makes a cluster with entry {@code e} read as zero in {@code mode}. */
  private long newEntry(long e, Mode mode) {
    int k = md.kindOf(e);
    if (mode == Mode.DISCARD) {
      // with a data file QEMU leaves the zero flag, never an unallocated entry
      return backing != null || md.externalData ? ZERO_FLAG : 0;
    }
    if (md.version == 2) {
      return 0; // no backing file here (v2 over a backing file writes zero bytes instead)
    }
    if (mode == Mode.ZERO && allocator.isCopiedNormal(e)) {
      return e | ZERO_FLAG; // keep the allocation (QEMU's ZERO_ALLOC without may-unmap)
    }
    if (mode == Mode.ZERO && k == ClusterMap.ZERO && (e & OFFSET_MASK) != 0 && (e & COPIED) != 0) {
      return e;
    }
    if (k == ClusterMap.ZERO && (e & OFFSET_MASK) == 0) {
      return e;
    }
    if (k == ClusterMap.UNALLOCATED && backing == null) {
      return e;
    }
    return ZERO_FLAG;
  }
}
