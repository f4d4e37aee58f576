package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.ImageFormatException;
import java.io.IOException;
import java.nio.ByteBuffer;

/**
 * Rebuilds the refcounts of an image whose dirty bit says they may be stale (a writer used lazy
 * refcounts and did not close cleanly), as QEMU does on a read-write open: count every reference
 * the metadata makes, overwrite the refcounts with the counts, fix the COPIED flags of the active
 * tables to match, sync, and only then clear the dirty bit.
 *
 * <p>References counted: the header cluster, the refcount table and blocks, the active L1 and its
 * L2 tables and data clusters, the snapshot table and each snapshot's L1, L2 and data clusters.
 * the persistent bitmaps' directory, tables and data clusters. An image whose damage needs more than this (a missing
 * refcount block, a pointer past the end of the file) is refused with a pointer to qemu-img check.
 */
final class RefcountRebuild {

  /** We count in an int array, one per host cluster; larger files are left to qemu-img check. */
  private static final long MAX_CLUSTERS = 1L << 28;

  private final HostFile file;
  private final String where;
  private final Qcow2Header header;
  private final long[] l1;
  private final RefcountTable refcounts;
  private final int clusterBits;
  private final int clusterSize;
  private final Qcow2Bitmaps bitmaps;
  private int[] ref;

  RefcountRebuild(HostFile file, String where, Qcow2Header header, long[] l1, RefcountTable refcounts,
      Qcow2Bitmaps bitmaps) {
    this.bitmaps = bitmaps;
    this.file = file;
    this.where = where;
    this.header = header;
    this.l1 = l1;
    this.refcounts = refcounts;
    this.clusterBits = header.clusterBits;
    this.clusterSize = 1 << clusterBits;
  }

  void run() throws IOException {
    long clusters = Qcow2Header.ceilDiv(file.size(), clusterSize);
    if (clusters > MAX_CLUSTERS) {
      throw new ImageFormatException(where + ": the dirty bit is set and the image is too large (" + clusters
          + " clusters) to rebuild its refcounts here; run qemu-img check -r all");
    }
    ref = new int[(int) clusters];
    addRange(0, clusterSize);
    addRange(refcounts.reftableOffset(), (long) refcounts.reftable().length * 8);
    for (long e : refcounts.reftable()) {
      long off = e & RefcountTable.REFT_OFFSET_MASK;
      if (off != 0) {
        addRange(off, clusterSize);
      }
    }
    addRange(header.l1TableOffset, (long) l1.length * 8);
    walkL1(l1);
    countSnapshots();
    bitmaps.forEachRange(this::addRange);

    long missing = refcounts.overwriteAll(ref);
    if (missing >= 0) {
      throw new ImageFormatException(where + ": the dirty bit is set and host cluster " + missing
          + " is used but has no refcount block; run qemu-img check -r all");
    }
    refcounts.flush();
    file.sync();
    fixCopiedFlags();
    file.sync();
    ByteBuffer incompat = ByteBuffer.allocate(8).putLong(0, header.incompatible & ~Qcow2Header.INCOMPAT_DIRTY);
    file.writeMetadata(OverlapCheck.Kind.HEADER, incompat, Qcow2Header.OFF_INCOMPAT);
    file.sync();
  }

  private void add(long cluster) throws ImageFormatException {
    if (cluster < 0 || cluster >= ref.length) {
      throw new ImageFormatException(where + ": the dirty bit is set and metadata points to host cluster " + cluster
          + ", past the end of the file; run qemu-img check -r all");
    }
    if (ref[(int) cluster] < Integer.MAX_VALUE) {
      ref[(int) cluster]++;
    }
  }

  private void addRange(long off, long len) throws ImageFormatException {
    if (len <= 0) {
      return;
    }
    for (long c = off >>> clusterBits; c <= (off + len - 1) >>> clusterBits; c++) {
      add(c);
    }
  }

  private void walkL1(long[] table) throws IOException {
    ByteBuffer buf = ByteBuffer.allocate(clusterSize);
    long[] l2 = new long[clusterSize / 8];
    for (long e : table) {
      long off = e & Qcow2Image.OFFSET_MASK;
      if (off == 0) {
        continue;
      }
      add(off >>> clusterBits);
      readL2(off, buf, l2);
      for (long d : l2) {
        countEntry(d);
      }
    }
  }

  private void readL2(long off, ByteBuffer buf, long[] into) throws IOException {
    buf.clear();
    file.read(buf, off);
    buf.flip();
    buf.asLongBuffer().get(into);
  }

  private void countEntry(long d) throws ImageFormatException {
    if ((d & Qcow2Image.COMPRESSED) != 0) {
      long last = CompressedCluster.lastCluster(d, clusterBits);
      for (long c = CompressedCluster.firstCluster(d, clusterBits); c <= last; c++) {
        add(c);
      }
    } else if ((d & Qcow2Image.OFFSET_MASK) != 0 && !header.hasDataFile()) {
      // an external data file's clusters hold no refcounts here
      add((d & Qcow2Image.OFFSET_MASK) >>> clusterBits);
    }
  }

  private void countSnapshots() throws IOException {
    long n = header.nbSnapshots;
    long pos = header.snapshotsOffset;
    ByteBuffer h = ByteBuffer.allocate(SnapshotEntry.FIXED);
    for (long i = 0; i < n; i++) {
      h.clear();
      file.read(h, pos);
      SnapshotEntry e = SnapshotEntry.parse(h);
      long l1Off = e.l1Offset();
      long l1Size = e.l1Size();
      if (l1Size * 8 > Qcow2Header.MAX_L1_BYTES || e.extraLen() > SnapshotEntry.MAX_EXTRA_DATA
          || (l1Off & (clusterSize - 1)) != 0 || l1Off < 0) {
        throw new ImageFormatException(where + ": snapshot " + i + " has an invalid L1 table or extra data; run qemu-img check");
      }
      long[] table = new long[(int) l1Size];
      ByteBuffer b = ByteBuffer.allocate((int) (l1Size * 8));
      file.read(b, l1Off);
      b.flip();
      b.asLongBuffer().get(table);
      addRange(l1Off, l1Size * 8);
      walkL1(table);
      pos += e.length();
      if (pos - header.snapshotsOffset > SnapshotEntry.MAX_TABLE_BYTES) {
        throw new ImageFormatException(where + ": the snapshot table is larger than QEMU's limit of 64 MiB");
      }
    }
    addRange(header.snapshotsOffset, pos - header.snapshotsOffset);
  }

  /** COPIED must be set exactly when the refcount is 1, in the active L1 and its L2 tables. */
  private void fixCopiedFlags() throws IOException {
    ByteBuffer buf = ByteBuffer.allocate(clusterSize);
    long[] l2 = new long[clusterSize / 8];
    for (int i = 0; i < l1.length; i++) {
      long e = l1[i];
      long off = e & Qcow2Image.OFFSET_MASK;
      if (off == 0) {
        continue;
      }
      long want = ref[(int) (off >>> clusterBits)] == 1 ? e | Qcow2Image.COPIED : e & ~Qcow2Image.COPIED;
      if (want != e) {
        l1[i] = want;
        file.writeMetadata(OverlapCheck.Kind.ACTIVE_L1, ByteBuffer.allocate(8).putLong(0, want),
            header.l1TableOffset + (long) i * 8);
      }
      readL2(off, buf, l2);
      boolean changed = false;
      for (int k = 0; k < l2.length; k++) {
        long d = l2[k];
        long doff = d & Qcow2Image.OFFSET_MASK;
        if ((d & Qcow2Image.COMPRESSED) != 0 || doff == 0) {
          continue;
        }
        long w = ref[(int) (doff >>> clusterBits)] == 1 ? d | Qcow2Image.COPIED : d & ~Qcow2Image.COPIED;
        if (w != d) {
          l2[k] = w;
          changed = true;
        }
      }
      if (changed) {
        buf.clear();
        buf.asLongBuffer().put(l2);
        file.writeMetadata(OverlapCheck.Kind.ACTIVE_L2, buf, off);
      }
    }
  }
}
