package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.RangeLock;
import dev.blockbackup.formats.WriteFlag;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;

/**
 * A qcow2 image (v2 and v3), read and written the way QEMU 7.2 does, so that qemu-img check finds
 * it clean and qemu-img compare finds it equal.
 *
 * <p>The L1 table and the refcount table are held whole in RAM; L2 tables and refcount blocks go
 * through write-back caches sized like QEMU's defaults ({@link Qcow2Metadata}). Metadata changes
 * happen under one lock; data I/O happens outside it. Crash ordering follows QEMU: a refcount is
 * on disk before any L2 entry that points to its cluster, a removed pointer is on disk before the
 * refcount decrease ({@link ClusterFrees}), and a new L2 table is on disk before the L1 entry that
 * points to it. A crash may leak clusters, never corrupt. Lazy refcounts are never used.
 *
 * <p>Overlapping requests never fail because they overlap: each completes as if the overlapping
 * ones ran in some serial order ({@link TrackedRequests}), and requests that do not overlap run in
 * parallel.
 *
 * <p>API CONTRACT:
 * <ul>
 *   <li>{@link #blockStatus}: data cluster and compressed cluster: data, allocated. Zero flag:
 *       zero, allocated. Unallocated without backing: zero, not allocated. Unallocated with a
 *       backing file: the backing file's data/zero flags for that range (zero beyond its end),
 *       not allocated.
 *   <li>{@link #discard}: every cluster lying wholly inside the range reads as zero afterwards
 *       (the image's last cluster counts as whole when the range reaches the end of the image);
 *       every other byte keeps its content. Backing data is never exposed (zero flag in v3).
 *   <li>{@link #writeZeroes}: the range reads as zero. Whole clusters use the zero flag (v3) or
 *       deallocation (no backing file); with MAY_UNMAP their host clusters are freed.
 *       NO_FALLBACK fails with ENOTSUP when zero bytes would have to be written.
 * </ul>
 *
 * <p>Refused at open ({@link Qcow2Opener}, ImageFormatException): what QEMU refuses, plus zstd
 * compression, extended L2 entries and encryption. An external data file (incompatible bit 2, its
 * name in the header, relative to the image) holds the data clusters at their guest offsets and no
 * refcounts; with data_file_raw (autoclear bit 1, kept on a read-write open) write-zeroes and
 * discards zero its bytes too, so it stays a valid raw image of the disk. Images with the corrupt
 * bit open read-only only. An image with the dirty bit (lazy refcounts left unwritten by a crash)
 * opens read-only as it is; a read-write open first rebuilds its refcounts, as QEMU does.
 *
 * <p>Persistent dirty bitmaps ({@link Qcow2Bitmap}) are kept as QEMU keeps them: loaded at open,
 * marked in use on disk by a read-write open before the first write, marked by every write,
 * write-zeroes, discard and compressed write (tried or done), and stored on close. A read-write
 * open clears only the autoclear bits of features other than bitmaps and data_file_raw.
 */
public final class Qcow2Image implements BlockDevice {

  static final long COPIED = 1L << 63;
  static final long COMPRESSED = 1L << 62;
  static final long ZERO_FLAG = 1L;
  static final long OFFSET_MASK = 0x00FFFFFFFFFFFE00L;
  static final long L1E_RESERVED = 0x7F000000000001FFL;
  static final long L2E_RESERVED = 0x3F000000000001FEL;

  private final Path path;
  private final String where;
  private final RandomAccessFile raf;
  /** The external data file, or null. */
  private final RandomAccessFile dataRaf;
  private final boolean readOnly;
  private final Qcow2Metadata md;
  private final BlockDevice backing;
  /** The requests in flight, and whether the image is closed. */
  private final TrackedRequests requests;
  private final Qcow2BlockStatus status;
  /** The dirty bit as it is on disk now (a read-write open rebuilds the refcounts and clears it). */
  private final boolean dirty;
  /** The persistent dirty bitmaps: marked by every mutating call, stored on close. */
  private final Qcow2Bitmaps bitmaps;

  Qcow2Image(Path path, RandomAccessFile raf, RandomAccessFile dataRaf, boolean readOnly, Qcow2Metadata md,
      BlockDevice backing, boolean dirty, Qcow2Bitmaps bitmaps) {
    this.bitmaps = bitmaps;
    this.path = path;
    this.where = path.toString();
    this.raf = raf;
    this.dataRaf = dataRaf;
    this.readOnly = readOnly;
    this.md = md;
    this.backing = backing;
    this.dirty = dirty;
    this.requests = new TrackedRequests(md, backing);
    this.status = new Qcow2BlockStatus(md, backing);
  }

  /** Creates (or overwrites) {@code path} as a new v3 image and opens it read-write. */
  public static Qcow2Image create(Path path, Qcow2CreateOptions options) throws BlockIOException {
    return create(path, options, CacheMode.WRITEBACK);
  }

  /** As {@link #create(Path, Qcow2CreateOptions)}, with the given cache mode. */
  public static Qcow2Image create(Path path, Qcow2CreateOptions options, CacheMode cacheMode) throws BlockIOException {
    if (options == null) {
      throw new BlockIOException(BlockError.EINVAL, "no create options");
    }
    ImageCreator.write(path, options, cacheMode);
    return open(path, false, cacheMode);
  }

  /**
   * Opens {@code path}, and its backing chain read-only. Refuses malformed images and unknown
   * incompatible features with an {@link dev.blockbackup.formats.ImageFormatException}; an image
   * with the corrupt bit opens read-only only.
   */
  public static Qcow2Image open(Path path, boolean readOnly) throws BlockIOException {
    return open(path, readOnly, CacheMode.WRITEBACK);
  }

  /** As {@link #open(Path, boolean)}, with the given cache mode (backing files are only read). */
  public static Qcow2Image open(Path path, boolean readOnly, CacheMode cacheMode) throws BlockIOException {
    return Qcow2Opener.open(path, readOnly, cacheMode, new HashSet<>(), 0, 0, true);
  }

  /**
   * What the header of {@code path} says, read without opening its backing chain, which need not
   * exist: {@code qemu-img info} opens images the same way (BDRV_O_NO_BACKING). The image is
   * validated as by {@link #open} and not changed.
   */
  public static Qcow2Info inspect(Path path) throws BlockIOException {
    try (Qcow2Image img = Qcow2Opener.open(path, true, CacheMode.WRITEBACK, new HashSet<>(), 0, 0, false)) {
      return img.info();
    }
  }

  /**
   * The persistent bitmaps of the image at {@code path}, read as {@link #inspect} reads the header:
   * read-only, without the backing chain (qemu-img info lists them so).
   */
  public static List<Qcow2Bitmap> inspectBitmaps(Path path) throws BlockIOException {
    try (Qcow2Image img = Qcow2Opener.open(path, true, CacheMode.WRITEBACK, new HashSet<>(), 0, 0, false)) {
      return img.bitmaps();
    }
  }

  /** Opens with an L2 cache of at most {@code l2Tables} tables, so tests can exercise eviction. */
  static Qcow2Image openWithSmallCache(Path path, boolean readOnly, int l2Tables) throws BlockIOException {
    return Qcow2Opener.open(path, readOnly, CacheMode.WRITEBACK, new HashSet<>(), 0, l2Tables, true);
  }

  public Qcow2Info info() {
    Qcow2Header header = md.header;
    md.lock.lock();
    try {
      long inUse = requests.isClosed() ? 0 : md.refcounts.countInUse();
      return new Qcow2Info(md.version, md.size, md.clusterSize, header.backingFile, header.backingFormat,
          dirty,
          (header.incompatible & Qcow2Header.INCOMPAT_CORRUPT) != 0 || md.file.isCorrupt(),
          (header.compatible & Qcow2Header.COMPAT_LAZY_REFCOUNTS) != 0,
          1 << header.refcountOrder, header.compressionType == 0 ? "zlib" : "zstd",
          (header.incompatible & Qcow2Header.INCOMPAT_EXTL2) != 0, inUse,
          header.hasDataFile() ? header.dataFile : null, header.dataFileRaw());
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    } finally {
      md.lock.unlock();
    }
  }

  /** The backing file, opened read-only, or null. */
  public BlockDevice backing() {
    return backing;
  }

  public Path path() {
    return path;
  }

  @Override
  public long size() {
    return md.size;
  }

  /** The cluster size. */
  @Override
  public int alignment() {
    return md.clusterSize;
  }

  @Override
  public boolean isReadOnly() {
    return readOnly;
  }

  @Override
  public void read(long offset, ByteBuffer dst) throws BlockIOException {
    checkOpen();
    BlockIOException.checkRange(offset, dst.remaining(), md.size);
    requests.read(offset, dst);
  }

  @Override
  public void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
    checkWritable();
    int length = src.remaining();
    BlockIOException.checkRange(offset, length, md.size);
    bitmaps.mark(offset, length);
    requests.write(offset, src, flags);
  }

  @Override
  public boolean supportsCompressedWrites() {
    return !readOnly && !md.externalData;
  }

  /**
   * Writes one whole cluster at cluster-aligned {@code offset} compressed with deflate, into a
   * guest cluster that holds no host cluster: unallocated, or a plain zero cluster (as QEMU
   * accepts); a cluster holding data, or a preallocated zero cluster, fails with EIO as in QEMU.
   * {@code cluster} holds exactly one cluster, or less for the image's last partial cluster. When
   * the data does not compress to under one cluster it is written as a normal cluster.
   */
  @Override
  public void writeCompressed(long offset, ByteBuffer cluster) throws BlockIOException {
    checkWritable();
    if (md.externalData) {
      // compressed clusters cannot live in an external data file (QEMU answers ENOTSUP too)
      throw new BlockIOException(BlockError.ENOTSUP, where + ": compressed writes are not possible with an"
          + " external data file");
    }
    int clusterSize = md.clusterSize;
    if ((offset & (clusterSize - 1)) != 0) {
      throw new BlockIOException(BlockError.EINVAL, "compressed write at " + offset
          + " is not aligned to the cluster size " + clusterSize);
    }
    BlockIOException.checkRange(offset, cluster.remaining(), md.size);
    bitmaps.mark(offset, cluster.remaining());
    int expect = (int) Math.min(clusterSize, md.size - offset);
    if (cluster.remaining() != expect) {
      throw new BlockIOException(BlockError.EINVAL, "compressed write of " + cluster.remaining() + " bytes at "
          + offset + ": it must be exactly one cluster (" + expect + " bytes here)");
    }
    requests.writeCompressed(offset, cluster, expect);
  }

  @Override
  public void writeZeroes(long offset, long length, WriteFlag... flags) throws BlockIOException {
    checkWritable();
    BlockIOException.checkRange(offset, length, md.size);
    bitmaps.mark(offset, length);
    if (length == 0) {
      return;
    }
    requests.writeZeroes(offset, length, flags);
  }

  /**
   * Discards whole clusters only; the rest of the range keeps its content. Discarded clusters read
   * as zero: the zero flag over a backing file, unallocated otherwise. A v2 image over a backing
   * file cannot say "zero", so there the clusters are written with zeros.
   */
  @Override
  public void discard(long offset, long length) throws BlockIOException {
    checkWritable();
    BlockIOException.checkRange(offset, length, md.size);
    bitmaps.mark(offset, length);
    long first = md.clusterAtOrAfter(offset);
    long end = md.wholeClustersEnd(offset + length);
    if (length == 0 || first >= end) {
      return;
    }
    requests.discard(offset, first, end);
  }

  @Override
  public void flush() throws BlockIOException {
    checkOpen();
    if (readOnly) {
      return;
    }
    try {
      requests.flushMetadata();
    } catch (IOException e) {
      throw failure("flush", 0, e);
    }
  }

  @Override
  public List<Extent> blockStatus(long offset, long length) throws BlockIOException {
    checkOpen();
    BlockIOException.checkRange(offset, length, md.size);
    if (length == 0) {
      return new ArrayList<>();
    }
    try {
      return status.of(offset, length);
    } catch (IOException e) {
      throw failure("block status", offset, e);
    }
  }

  /** Waits for the requests in flight, flushes, and closes the image and its backing chain. */
  @Override
  public void close() throws BlockIOException {
    if (requests.isClosed()) {
      return;
    }
    RangeLock.Held everything = requests.holdAll();
    try {
      if (requests.isClosed()) {
        return;
      }
      if (!readOnly) {
        requests.flushMetadata();
        bitmaps.store(); // QEMU stores persistent bitmaps when it inactivates the image
        requests.flushMetadata();
      }
    } catch (IOException e) {
      throw failure("flush on close", 0, e);
    } finally {
      if (!requests.isClosed()) {
        requests.setClosed();
        try {
          raf.close();
        } catch (IOException ignored) {
          // flushed above; a failing close of the descriptor loses nothing
        }
        if (dataRaf != null) {
          try {
            dataRaf.close();
          } catch (IOException ignored) {
            // flushed above (the image file's sync syncs the data file first)
          }
        }
        if (backing != null) {
          try {
            backing.close();
          } catch (BlockIOException ignored) {
            // read-only: nothing to lose
          }
        }
      }
      everything.close();
    }
  }

  /**
   * The persistent dirty bitmaps, in directory order, new ones last (QEMU's dirty-bitmaps of the
   * node). Each is live: see {@link Qcow2Bitmap}.
   */
  public List<Qcow2Bitmap> bitmaps() {
    return bitmaps.list();
  }

  /** The bitmap named {@code name}, or null. */
  public Qcow2Bitmap findBitmap(String name) {
    return bitmaps.find(name);
  }

  /**
   * Adds a persistent bitmap, all clean, as QEMU's block-dirty-bitmap-add with persistent=true: it
   * is stored when the image is closed. Refused (EINVAL) for an empty name, a name of more than
   * 1023 bytes, a name in use, a granularity that is not a power of two in [512, 2^30], a bitmap
   * whose data would pass QEMU's 512 MiB, more than 65535 bitmaps; ENOTSUP on a v2 image, EPERM
   * on a read-only one.
   */
  public Qcow2Bitmap addBitmap(String name, int granularity, boolean enabled) throws BlockIOException {
    checkOpen();
    return bitmaps.add(name, granularity, enabled);
  }

  /** Removes a bitmap from the image at once (block-dirty-bitmap-remove); EINVAL when there is none. */
  public void removeBitmap(String name) throws BlockIOException {
    checkOpen();
    try {
      bitmaps.remove(name);
    } catch (BlockIOException e) {
      throw e;
    } catch (IOException e) {
      throw failure("bitmap remove", 0, e);
    }
  }

  /**
   * Starts or stops recording writes in a bitmap (block-dirty-bitmap-enable / -disable); stored as
   * the auto flag on close. An inconsistent bitmap cannot be enabled (EINVAL).
   */
  public void setBitmapEnabled(String name, boolean enabled) throws BlockIOException {
    checkOpen();
    bitmaps.setEnabled(name, enabled);
  }

  private void checkOpen() throws BlockIOException {
    requests.checkOpen();
  }

  private void checkWritable() throws BlockIOException {
    checkOpen();
    if (readOnly) {
      throw new BlockIOException(BlockError.EPERM, where + " is open read-only");
    }
  }

  private BlockIOException failure(String what, long offset, IOException e) {
    return requests.failure(what, offset, e);
  }
}
