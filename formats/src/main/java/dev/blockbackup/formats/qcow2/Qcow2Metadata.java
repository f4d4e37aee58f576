package dev.blockbackup.formats.qcow2;

import java.io.IOException;
import java.util.concurrent.locks.ReentrantLock;

/**
 * The metadata of one open image and the one lock that guards it: the geometry from the header,
 * the guest-to-host mapping (L1 in RAM, L2 tables through their cache), the refcounts, the
 * deferred frees and the cursor that packs compressed streams. Every read or change of the
 * mutable parts happens under {@link #lock}; data I/O never does.
 */
final class Qcow2Metadata {

  /** The image's path, for messages. */
  final String where;
  final HostFile file;
  /** Where data clusters are read and written: {@link #file}, or the external data file. */
  final HostFile data;
  /**
   * Whether data clusters live in an external data file (incompatible bit 2): there a data cluster's
   * host offset is its guest offset, it holds no refcount in this image, and compressed clusters and
   * internal snapshots do not exist.
   */
  final boolean externalData;
  /** data_file_raw (autoclear bit 1): the data file stays a valid raw image of the guest disk. */
  final boolean rawData;
  final Qcow2Header header;
  /** 2 or 3. */
  final int version;
  final int clusterBits;
  final int clusterSize;
  /** Entries per L2 table. */
  final long l2Entries;
  /** The guest size in bytes (a multiple of 512). */
  final long size;
  final RefcountTable refcounts;
  final L2Cache l2;
  /** Where compressed streams are packed; told when a host cluster is freed. */
  final CompressedPacker packer;
  /** Refcount decreases held back until the removed pointers are durable. */
  final ClusterFrees frees;
  /** Guest-to-host mapping: the L1 table and the L2 tables through the cache. */
  final ClusterMap map;
  /** Guards the L1 table, the L2 cache, the refcounts, the pending frees and the packing cursor. */
  final ReentrantLock lock = new ReentrantLock();

  Qcow2Metadata(String where, HostFile file, Qcow2Header header, long[] l1, RefcountTable refcounts, L2Cache l2) {
    this(where, file, null, header, l1, refcounts, l2);
  }

  /**
   * {@code data} is the external data file, or null when data clusters live in {@code file} (or
   * when an inspect left the header's data file closed).
   */
  Qcow2Metadata(String where, HostFile file, HostFile data, Qcow2Header header, long[] l1, RefcountTable refcounts,
      L2Cache l2) {
    this.where = where;
    this.file = file;
    // without the data file (an inspect, which does no I/O) data reads would go to the image file
    this.data = data == null ? file : data;
    this.externalData = header.hasDataFile();
    this.rawData = header.dataFileRaw();
    this.header = header;
    this.version = header.version;
    this.clusterBits = header.clusterBits;
    this.clusterSize = 1 << clusterBits;
    this.l2Entries = clusterSize / 8;
    this.size = header.size & ~511L;
    this.refcounts = refcounts;
    this.l2 = l2;
    this.packer = new CompressedPacker(refcounts, clusterBits);
    this.frees = new ClusterFrees(file, refcounts, l2, clusterBits, packer);
    this.map = new ClusterMap(where, file, version, clusterBits, header.l1TableOffset, l1, l2, refcounts,
        frees::freeLater, externalData);
  }

  /** How a guest cluster with L2 entry {@code e} reads in this image ({@link ClusterMap#kindOf(long, boolean)}). */
  int kindOf(long e) {
    return ClusterMap.kindOf(e, externalData);
  }

  /**
   * Whether the host clusters under data entry {@code e} hold refcounts in this image, to be
   * dropped when the entry stops pointing to them: never for an external data file's clusters.
   */
  boolean holdsRefcounts(long e) {
    return !externalData && ClusterFrees.holdsHostClusters(e);
  }

  /** The first guest cluster at or after byte {@code offset}. */
  long clusterAtOrAfter(long offset) {
    return Qcow2Header.ceilDiv(offset, clusterSize);
  }

  /**
   * The end of the whole clusters of a range ending at {@code end}: the image's last cluster counts
   * as whole when the range reaches the end of the image.
   */
  long wholeClustersEnd(long end) {
    return end == size ? Qcow2Header.ceilDiv(size, clusterSize) : end >>> clusterBits;
  }

  /**
   * {@link ClusterMap#lookupRun} under the metadata lock, for a reader that then does its data I/O
   * (or builds its answer) outside it.
   */
  long lookupRun(long gci, long max, long[] run) throws IOException {
    lock.lock();
    try {
      return map.lookupRun(gci, max, run);
    } finally {
      lock.unlock();
    }
  }

  /** A change of the metadata, made under {@link #lock}. */
  interface Change {
    void run() throws IOException;
  }

  /**
   * Undoes an allocation after the data write into it failed with {@code failure}: nothing points
   * to the new clusters yet, so {@code undo} gives them back at once, under the lock. Its own
   * failure only leaks them, and is added to {@code failure}, which the caller throws.
   */
  void undoAfter(Exception failure, Change undo) {
    lock.lock();
    try {
      undo.run();
    } catch (IOException suppressed) {
      failure.addSuppressed(suppressed);
    } finally {
      lock.unlock();
    }
  }
}
