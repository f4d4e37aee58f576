package dev.blockbackup.formats.qcow2;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.Map;
import java.util.concurrent.ConcurrentSkipListMap;

/**
 * Where an image's metadata lies, so that no write lands on it by mistake: QEMU's metadata overlap
 * check in its default {@code overlap-check=cached} mode (the header, the active L1 table and the
 * L2 tables it points to, the refcount table and its blocks, the snapshot table and the snapshots'
 * L1 tables; not the snapshots' L2 tables, which would have to be read from disk), and the
 * persistent bitmaps' directory, tables and data clusters ({@link Qcow2BitmapList} adds them). A data write is
 * checked against every kind; a metadata writer names the kind it writes, which is not checked.
 * {@link HostFile} asks before every write, and a hit marks the image corrupt.
 *
 * <p>Regions are kept in sorted maps keyed by start (the kind in the low bits, so that two kinds may
 * share a cluster in a broken image), so a lookup costs O(log n) whatever the number of L2 tables.
 * Reads need no lock; changes are made under the image's metadata lock as the metadata moves.
 */
final class OverlapCheck {

  /** The kinds of metadata, named as QEMU's messages name them. */
  enum Kind {
    HEADER("qcow2_header"),
    ACTIVE_L1("active L1 table"),
    ACTIVE_L2("active L2 table"),
    REFCOUNT_TABLE("refcount table"),
    REFCOUNT_BLOCK("refcount block"),
    SNAPSHOT_TABLE("snapshot table"),
    INACTIVE_L1("inactive L1 table"),
    BITMAP_DIRECTORY("bitmap directory"),
    /** Not in QEMU's overlap check, which knows only the directory; ours protects all bitmap metadata. */
    BITMAP_TABLE("bitmap table"),
    BITMAP_DATA("bitmap data");

    final String label;

    Kind(String label) {
      this.label = label;
    }
  }

  /** A write that would overwrite metadata: the region it hits. */
  record Hit(Kind kind, long start, long end) {}

  /** Metadata regions past this cannot be written through an L2 entry (offsets are 56 bits). */
  private static final long MAX_OFFSET = RefcountTable.MAX_HOST_OFFSET;
  private static final int KIND_BITS = 4;
  private static final Kind[] KINDS = Kind.values();

  /** One cluster or less: L2 tables, refcount blocks, the header. */
  private final Regions small = new Regions();
  /** Several clusters: the L1 tables, the refcount table, the snapshot table. */
  private final Regions large = new Regions();

  /** A set of regions of bounded length; a lookup scans only starts within that length. */
  private static final class Regions {
    /** start << KIND_BITS | kind -> end and how many tables claim it (a broken image may repeat one). */
    final ConcurrentSkipListMap<Long, long[]> map = new ConcurrentSkipListMap<>();
    /** The longest region ever added. */
    volatile long maxLength = 1;

    Hit find(long pos, long end, Kind ignore) {
      long from = Math.max(0, pos - maxLength + 1) << KIND_BITS;
      long to = Math.min(end, MAX_OFFSET) << KIND_BITS;
      for (Map.Entry<Long, long[]> e = map.ceilingEntry(from); e != null && e.getKey() < to;
          e = map.higherEntry(e.getKey())) {
        Kind kind = KINDS[(int) (e.getKey() & ((1 << KIND_BITS) - 1))];
        long start = e.getKey() >>> KIND_BITS;
        long regionEnd = e.getValue()[0];
        if (kind != ignore && regionEnd > pos) {
          return new Hit(kind, start, regionEnd);
        }
      }
      return null;
    }

    void add(Kind kind, long start, long length) {
      if (length > maxLength) {
        maxLength = length;
      }
      map.compute(key(kind, start), (k, v) -> v == null
          ? new long[] {start + length, 1}
          : new long[] {Math.max(v[0], start + length), v[1] + 1});
    }

    void remove(Kind kind, long start) {
      map.computeIfPresent(key(kind, start), (k, v) -> v[1] <= 1 ? null : new long[] {v[0], v[1] - 1});
    }

    private static long key(Kind kind, long start) {
      return start << KIND_BITS | kind.ordinal();
    }
  }

  private final String where;
  private final int clusterSize;

  OverlapCheck(String where, int clusterSize) {
    this.where = where;
    this.clusterSize = clusterSize;
  }

  /**
   * The regions of an image as its header and tables describe them; the snapshot table is read
   * from {@code file}, leniently (an entry that makes no sense ends the walk: it is not ours to
   * judge here, and the regions found so far are still protected).
   */
  static OverlapCheck of(String where, HostFile file, Qcow2Header header, long[] l1, long[] reftable) throws IOException {
    int cs = 1 << header.clusterBits;
    OverlapCheck c = new OverlapCheck(where, cs);
    c.add(Kind.HEADER, 0, cs);
    c.add(Kind.ACTIVE_L1, header.l1TableOffset, (long) l1.length * 8);
    for (long e : l1) {
      c.add(Kind.ACTIVE_L2, e & Qcow2Image.OFFSET_MASK, cs);
    }
    c.add(Kind.REFCOUNT_TABLE, header.refcountTableOffset, header.refcountTableClusters * cs);
    for (long e : reftable) {
      c.add(Kind.REFCOUNT_BLOCK, e & RefcountTable.REFT_OFFSET_MASK, cs);
    }
    c.addSnapshots(file, header);
    return c;
  }

  private void addSnapshots(HostFile file, Qcow2Header header) throws IOException {
    long pos = header.snapshotsOffset;
    ByteBuffer h = ByteBuffer.allocate(SnapshotEntry.FIXED);
    for (long i = 0; i < header.nbSnapshots; i++) {
      h.clear();
      file.read(h, pos);
      SnapshotEntry e = SnapshotEntry.parse(h);
      if (e.l1Size() * 8 > Qcow2Header.MAX_L1_BYTES || e.extraLen() > SnapshotEntry.MAX_EXTRA_DATA) {
        break;
      }
      add(Kind.INACTIVE_L1, e.l1Offset(), e.l1Size() * 8);
      pos += e.length();
    }
    add(Kind.SNAPSHOT_TABLE, header.snapshotsOffset, pos - header.snapshotsOffset);
  }

  /** Protects {@code [start, start + length)} as metadata of {@code kind}. */
  void add(Kind kind, long start, long length) {
    if (start <= 0 && kind != Kind.HEADER || start < 0 || length <= 0 || start >= MAX_OFFSET) {
      return; // no table there (offset 0 means none), or out of any write's reach
    }
    (length <= clusterSize ? small : large).add(kind, start, length);
  }

  /** Stops protecting a region that {@link #add} protected, once it is no longer metadata. */
  void remove(Kind kind, long start, long length) {
    if (start <= 0 || length <= 0 || start >= MAX_OFFSET) {
      return;
    }
    (length <= clusterSize ? small : large).remove(kind, start);
  }

  /** The metadata, other than {@code ignore} (null for data), that {@code [pos, pos + len)} overlaps. */
  Hit find(long pos, long len, Kind ignore) {
    if (len <= 0 || pos >= MAX_OFFSET) {
      return null;
    }
    long end = pos + len;
    Hit hit = small.find(pos, end, ignore);
    return hit != null ? hit : large.find(pos, end, ignore);
  }

  /** QEMU's words for a refused write, so that users and scripts recognise it. */
  String message(Hit hit, long pos, long len) {
    return where + ": Preventing invalid write on metadata (overlaps with " + hit.kind().label + " [0x"
        + Long.toHexString(hit.start()) + ", 0x" + Long.toHexString(hit.end()) + ")): write of " + len + " bytes at 0x"
        + Long.toHexString(pos) + "; image marked as corrupt";
  }

  String where() {
    return where;
  }
}
