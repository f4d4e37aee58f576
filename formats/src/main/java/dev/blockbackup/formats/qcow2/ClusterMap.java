package dev.blockbackup.formats.qcow2;

import static dev.blockbackup.formats.qcow2.Qcow2Image.COMPRESSED;
import static dev.blockbackup.formats.qcow2.Qcow2Image.COPIED;
import static dev.blockbackup.formats.qcow2.Qcow2Image.L1E_RESERVED;
import static dev.blockbackup.formats.qcow2.Qcow2Image.L2E_RESERVED;
import static dev.blockbackup.formats.qcow2.Qcow2Image.OFFSET_MASK;
import static dev.blockbackup.formats.qcow2.Qcow2Image.ZERO_FLAG;

import dev.blockbackup.formats.ImageFormatException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.function.LongConsumer;

/**
 * The guest-to-host mapping of an image: the L1 table (whole in RAM) and the L2 tables (through
 * the L2 cache). It validates every entry it hands out, so corrupt metadata fails the request with
 * an ImageFormatException instead of sending I/O somewhere wrong, and it makes L2 tables writable
 * (allocating new ones, or copying tables shared with snapshots). Used under the image's metadata
 * lock.
 */
final class ClusterMap {

  /** How a guest cluster reads. */
  static final int UNALLOCATED = 0;
  static final int ZERO = 1;
  static final int NORMAL = 2;
  static final int COMPRESSED_KIND = 3;

  private final String where;
  private final HostFile file;
  private final int version;
  private final int clusterBits;
  private final int clusterSize;
  private final long l2Entries;
  private final long l1Offset;
  private final long[] l1;
  private final L2Cache l2;
  private final RefcountTable refcounts;
  /** Takes references to drop once the new mapping is durable (old shared L2 tables). */
  private final LongConsumer freeLater;
  /** Whether data clusters live in an external data file, where host offset 0 is a data cluster. */
  private final boolean externalData;

  ClusterMap(String where, HostFile file, int version, int clusterBits, long l1Offset, long[] l1, L2Cache l2,
      RefcountTable refcounts, LongConsumer freeLater, boolean externalData) {
    this.externalData = externalData;
    this.where = where;
    this.file = file;
    this.version = version;
    this.clusterBits = clusterBits;
    this.clusterSize = 1 << clusterBits;
    this.l2Entries = clusterSize / 8;
    this.l1Offset = l1Offset;
    this.l1 = l1;
    this.l2 = l2;
    this.refcounts = refcounts;
    this.freeLater = freeLater;
  }

  /**
   * Classifies the run of guest clusters from {@code gci} (at most {@code max}) that read the same
   * way: {@code run[0]} the kind, {@code run[1]} the host offset of the first cluster (NORMAL) or
   * the entry (COMPRESSED, always a run of one). Returns its length in clusters.
   */
  long lookupRun(long gci, long max, long[] run) throws IOException {
    int kind = -1;
    long first = 0;
    long n = 0;
    outer:
    while (n < max) {
      long g = gci + n;
      long l1i = g / l2Entries;
      int idx = (int) (g % l2Entries);
      long l2off = l2OffsetAt(l1i);
      if (l2off == 0) {
        if (kind == -1) {
          kind = UNALLOCATED;
        } else if (kind != UNALLOCATED) {
          break;
        }
        n += Math.min(max - n, l2Entries - idx);
        continue;
      }
      L2Cache.Table t = l2.get(l2off);
      while (idx < l2Entries && n < max) {
        long e = checkL2(t.e[idx], g);
        int k = kindOf(e, externalData);
        if (kind == -1) {
          kind = k;
          first = k == COMPRESSED_KIND ? e : e & OFFSET_MASK;
          if (k == COMPRESSED_KIND) {
            n = 1;
            break outer;
          }
        } else if (k != kind || k == COMPRESSED_KIND
            || (k == NORMAL && (e & OFFSET_MASK) != first + (n << clusterBits))) {
          break outer;
        }
        n++;
        idx++;
        g++;
      }
    }
    run[0] = kind;
    run[1] = first;
    return n;
  }

  static int kindOf(long e) {
    return kindOf(e, false);
  }

  /**
   * How a cluster with L2 entry {@code e} reads. With an external data file, host offset 0 is a
   * data cluster like any other (guest cluster 0 of a raw data file), so there an entry with only
   * the COPIED flag set is NORMAL, as in QEMU.
   */
  static int kindOf(long e, boolean externalData) {
    if ((e & COMPRESSED) != 0) {
      return COMPRESSED_KIND;
    }
    if ((e & ZERO_FLAG) != 0) {
      return ZERO;
    }
    if ((e & OFFSET_MASK) != 0 || (externalData && (e & COPIED) != 0)) {
      return NORMAL;
    }
    return UNALLOCATED;
  }

  /** The L2 table offset for L1 index {@code l1i}, or 0; refuses corrupt entries. */
  long l2OffsetAt(long l1i) throws ImageFormatException {
    long e = l1[(int) l1i];
    if (e == 0) {
      return 0;
    }
    if ((e & L1E_RESERVED) != 0) {
      throw new ImageFormatException(where + ": L1 entry " + l1i + " (0x" + Long.toHexString(e) + ") has reserved bits set");
    }
    long off = e & OFFSET_MASK;
    if ((off & (clusterSize - 1)) != 0 || (off != 0 && off >= file.size())) {
      throw new ImageFormatException(where + ": L1 entry " + l1i + " points to an L2 table at 0x" + Long.toHexString(off)
          + " that is unaligned or lies past the end of the file (" + file.size() + " bytes)");
    }
    if (overlapsMetadata(off)) {
      throw new ImageFormatException(where + ": L1 entry " + l1i + " points to an L2 table at 0x" + Long.toHexString(off)
          + " inside the L1 or refcount table");
    }
    return off;
  }

  /** Whether host cluster offset {@code off} lies inside the active L1 table or the refcount table. */
  boolean overlapsMetadata(long off) {
    return (off >= l1Offset && off - l1Offset < (long) l1.length * 8) || refcounts.inReftable(off);
  }

  /** Refuses an L2 entry QEMU would call corrupt; returns it. */
  long checkL2(long e, long gci) throws ImageFormatException {
    if ((e & COMPRESSED) != 0) {
      long coff = CompressedCluster.hostOffset(e, clusterBits);
      if (coff >= file.size()) {
        throw new ImageFormatException(where + ": compressed L2 entry for guest offset " + (gci << clusterBits)
            + " points to 0x" + Long.toHexString(coff) + ", past the end of the file (" + file.size() + " bytes)");
      }
      return e;
    }
    if ((e & L2E_RESERVED) != 0) {
      throw new ImageFormatException(where + ": L2 entry for guest offset " + (gci << clusterBits) + " (0x"
          + Long.toHexString(e) + ") has reserved bits set");
    }
    if ((e & ZERO_FLAG) != 0 && version == 2) {
      throw new ImageFormatException(where + ": L2 entry for guest offset " + (gci << clusterBits)
          + " has the zero flag, which a v2 image cannot have");
    }
    long off = e & OFFSET_MASK;
    if (off != 0) {
      if ((off & (clusterSize - 1)) != 0) {
        throw new ImageFormatException(where + ": L2 entry for guest offset " + (gci << clusterBits)
            + " points to unaligned host offset 0x" + Long.toHexString(off));
      }
      if (externalData) {
        // the data file's clusters are not the image file's: neither its end nor its tables apply
        return e;
      }
      if ((e & ZERO_FLAG) == 0 && off >= file.size()) {
        throw new ImageFormatException(where + ": L2 entry for guest offset " + (gci << clusterBits)
            + " points to host offset 0x" + Long.toHexString(off) + ", past the end of the file (" + file.size() + " bytes)");
      }
      if (overlapsMetadata(off)) {
        // writing there in place would destroy the table (QEMU's overlap check would mark the image corrupt)
        throw new ImageFormatException(where + ": L2 entry for guest offset " + (gci << clusterBits)
            + " points to host offset 0x" + Long.toHexString(off) + " inside the L1 or refcount table");
      }
    }
    return e;
  }

  /** The validated L2 entry of guest cluster {@code gci} (0 when it has no L2 table). */
  long entryAt(long gci) throws IOException {
    long l2off = l2OffsetAt(gci / l2Entries);
    if (l2off == 0) {
      return 0;
    }
    return checkL2(l2.get(l2off).e[(int) (gci % l2Entries)], gci);
  }

  /** Sets the L2 entry of guest cluster {@code gci}, whose table {@link #ensureWritableL2} made writable. */
  void setEntry(long gci, long value) throws IOException {
    long l2off = l1[(int) (gci / l2Entries)] & OFFSET_MASK;
    l2.get(l2off).set((int) (gci % l2Entries), value);
  }

  /**
   * Makes the L2 table of L1 index {@code l1i} one we may modify: allocates a zeroed one, or copies
   * a shared one (snapshots). The new table and its refcount are synced before the L1 entry is
   * written; the old shared table loses its reference once the new L1 entry is durable.
   */
  long ensureWritableL2(long l1i) throws IOException {
    long l1e = l1[(int) l1i];
    long old = l2OffsetAt(l1i);
    if (old != 0 && (l1e & COPIED) != 0) {
      return old;
    }
    long[] content = new long[(int) l2Entries];
    if (old != 0) {
      System.arraycopy(l2.get(old).e, 0, content, 0, content.length);
    }
    long newOff = refcounts.allocate(1) << clusterBits;
    ByteBuffer b = ByteBuffer.allocate(clusterSize);
    b.asLongBuffer().put(content);
    file.writeMetadata(OverlapCheck.Kind.ACTIVE_L2, b, newOff);
    refcounts.flush();
    file.sync();
    long entry = newOff | COPIED;
    l1[(int) l1i] = entry;
    file.writeMetadata(OverlapCheck.Kind.ACTIVE_L1, ByteBuffer.allocate(8).putLong(0, entry), l1Offset + l1i * 8);
    l2.put(newOff, content);
    file.overlaps().add(OverlapCheck.Kind.ACTIVE_L2, newOff, clusterSize);
    if (old != 0) {
      // a shared table stays a snapshot's (inactive) L2 table, which the cached check does not cover
      file.overlaps().remove(OverlapCheck.Kind.ACTIVE_L2, old, clusterSize);
      freeLater.accept(old);
    }
    return newOff;
  }
}
