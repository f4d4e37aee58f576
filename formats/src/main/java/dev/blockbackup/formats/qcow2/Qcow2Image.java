package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.ImageFormat;
import dev.blockbackup.formats.ImageFormatException;
import dev.blockbackup.formats.ImageLock;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.WriteFlag;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.channels.AsynchronousCloseException;
import java.nio.channels.ClosedChannelException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.locks.Condition;
import java.util.concurrent.locks.ReentrantLock;
import java.util.concurrent.locks.ReentrantReadWriteLock;

/**
 * A qcow2 image (v2 and v3), read and written the way QEMU 7.2 does, so that qemu-img check finds
 * it clean and qemu-img compare finds it equal.
 *
 * <p>The L1 table and the refcount table are held whole in RAM; L2 tables and refcount blocks go
 * through write-back caches sized like QEMU's defaults. Metadata changes happen under one lock;
 * data I/O to clusters that are already allocated happens outside it. Allocating writes mark their
 * guest clusters in flight, so two writers never allocate the same cluster: the second waits and
 * then overwrites in place. Crash ordering follows QEMU: a refcount is on disk before any L2 entry
 * that points to its cluster, a removed pointer is on disk before the refcount decrease, and a new
 * L2 table is on disk before the L1 entry that points to it. A crash may leak clusters, never
 * corrupt. Lazy refcounts are never used.
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
 * <p>Refused at open (ImageFormatException): what QEMU refuses, plus zstd compression, extended L2
 * entries, external data files and encryption. Images with the corrupt bit open read-only only. An
 * image with the dirty bit (lazy refcounts left unwritten by a crash) opens read-only as it is; a
 * read-write open first rebuilds its refcounts, as QEMU does. A read-write open clears every
 * autoclear bit (we maintain no bitmaps), so QEMU drops the bitmaps of an image we wrote.
 *
 * <p>Overlapping requests in flight at once leave unspecified results, as the BlockDevice contract
 * says; a read racing an overwrite of a compressed or snapshot-shared cluster may even fail with EIO
 * if the old cluster is freed and reused under it.
 */
public final class Qcow2Image implements BlockDevice {

  static final long COPIED = 1L << 63;
  static final long COMPRESSED = 1L << 62;
  static final long ZERO_FLAG = 1L;
  static final long OFFSET_MASK = 0x00FFFFFFFFFFFE00L;
  static final long L1E_RESERVED = 0x7F000000000001FFL;
  static final long L2E_RESERVED = 0x3F000000000001FEL;
  /** How deep a backing chain may be before we call it hostile. */
  static final int MAX_CHAIN_DEPTH = 64;
  /** QEMU's default maximum L2 cache on Linux. */
  static final long MAX_L2_CACHE_BYTES = 32L << 20;
  /** Deferred refcount decreases are applied at latest when this many have gathered. */
  private static final int PENDING_FREE_LIMIT = 1024;


  private static final ByteBuffer ZEROS = ByteBuffer.allocateDirect(1 << 20).asReadOnlyBuffer();

  private final Path path;
  private final String where;
  private final RandomAccessFile raf;
  private final HostFile file;
  private final boolean readOnly;
  private final Qcow2Header header;
  private final int version;
  private final int clusterBits;
  private final int clusterSize;
  private final long l2Entries;
  private final long size;
  private final RefcountTable refcounts;
  private final L2Cache l2;
  /** Guest-to-host mapping: the L1 table and the L2 tables through the cache. */
  private final ClusterMap map;
  private final BlockDevice backing;

  /** Guards all metadata: L1, L2 cache, refcounts, the in-flight table, the pending frees. */
  private final ReentrantLock meta = new ReentrantLock();
  /** Signalled whenever an in-flight allocation ends. */
  private final Condition allocDone = meta.newCondition();
  /**
   * Data I/O holds the read side; requests that free clusters (discard, write-zeroes) hold the
   * write side, so no in-place write can land in a cluster that is being freed and reused.
   */
  private final ReentrantReadWriteLock io = new ReentrantReadWriteLock();
  /** Guest cluster ranges [start, end) being allocated by some writer. */
  private final List<long[]> inflight = new ArrayList<>();
  /** L2 entries whose host clusters lose a reference once the new mapping is durable. */
  private long[] pendingFree = new long[64];
  private int pendingCount;
  /** Next free byte in the host cluster that compressed streams are packed into, or 0. */
  private long compressedNext;
  private volatile boolean closed;
  /** The dirty bit as it is on disk now (a read-write open rebuilds the refcounts and clears it). */
  private boolean dirty;

  private Qcow2Image(Path path, RandomAccessFile raf, boolean readOnly, CacheMode cacheMode, Set<Path> chain,
      int depth, int l2Tables, boolean withBacking) throws IOException {
    this.path = path;
    this.where = path.toString();
    this.raf = raf;
    this.readOnly = readOnly;
    this.file = new HostFile(raf.getChannel(), cacheMode);
    long fileSize = file.size();
    ByteBuffer fixed = ByteBuffer.allocate(Qcow2Header.V3_HEADER_LENGTH);
    file.read(fixed, 0);
    this.header = Qcow2Header.parse(fixed, fileSize, where);
    this.version = header.version;
    this.clusterBits = header.clusterBits;
    this.clusterSize = 1 << clusterBits;
    this.l2Entries = clusterSize / 8;
    ByteBuffer c0 = ByteBuffer.allocate((int) Math.min(clusterSize, fileSize));
    file.read(c0, 0);
    header.parseExtensions(c0, where);
    this.size = header.size & ~511L;

    long reftableBytes = header.refcountTableClusters * clusterSize;
    long l1Bytes = header.l1Size * 8;
    if (header.refcountTableOffset >= fileSize) {
      throw new ImageFormatException(where + ": refcount table at 0x" + Long.toHexString(header.refcountTableOffset)
          + " lies beyond the end of the file (" + fileSize + " bytes)");
    }
    if (l1Bytes > 0 && header.l1TableOffset >= fileSize) {
      throw new ImageFormatException(where + ": L1 table at 0x" + Long.toHexString(header.l1TableOffset)
          + " lies beyond the end of the file (" + fileSize + " bytes)");
    }
    if (header.nbSnapshots > 0 && header.snapshotsOffset >= fileSize) {
      throw new ImageFormatException(where + ": snapshot table at 0x" + Long.toHexString(header.snapshotsOffset)
          + " lies beyond the end of the file (" + fileSize + " bytes)");
    }
    checkNoOverlap("header", 0, clusterSize, "refcount table", header.refcountTableOffset, reftableBytes);
    if (l1Bytes > 0) {
      long l1Span = Qcow2Header.ceilDiv(l1Bytes, clusterSize) * clusterSize;
      checkNoOverlap("header", 0, clusterSize, "L1 table", header.l1TableOffset, l1Span);
      checkNoOverlap("refcount table", header.refcountTableOffset, reftableBytes, "L1 table", header.l1TableOffset, l1Span);
    }
    if (!readOnly && (header.incompatible & Qcow2Header.INCOMPAT_CORRUPT) != 0) {
      throw new ImageFormatException(where + ": the image is marked corrupt (incompatible bit 1); it can only be opened"
          + " read-only (repair it with qemu-img check -r all)");
    }

    long l1Offset = header.l1TableOffset;
    long[] l1 = new long[(int) header.l1Size];
    if (l1Bytes > 0) {
      ByteBuffer b = ByteBuffer.allocate((int) l1Bytes);
      file.read(b, l1Offset);
      b.flip();
      b.asLongBuffer().get(l1);
    }
    long[] reftable = new long[(int) (reftableBytes / 8)];
    ByteBuffer rb = ByteBuffer.allocate((int) reftableBytes);
    file.read(rb, header.refcountTableOffset);
    rb.flip();
    rb.asLongBuffer().get(reftable);
    this.refcounts = new RefcountTable(file, where, clusterBits, header.refcountOrder, header.refcountTableOffset, reftable);

    // QEMU's default: the L2 cache maps the whole disk, but holds at most 32 MiB.
    long wholeDisk = Qcow2Header.ceilDiv(Qcow2Header.ceilDiv(size, clusterSize) * 8, clusterSize) * clusterSize;
    int capacity = (int) Math.max(2, Math.min(MAX_L2_CACHE_BYTES, wholeDisk) / clusterSize);
    if (l2Tables > 0) {
      capacity = Math.min(capacity, l2Tables);
    }
    this.l2 = new L2Cache(file, clusterSize, capacity, () -> {
      refcounts.flush();
      file.sync();
    });

    this.map = new ClusterMap(where, file, version, clusterBits, l1Offset, l1, l2, refcounts, this::addPendingFree);
    // the backing chain first: an image whose chain cannot be opened is not touched
    this.backing = header.backingFile == null || !withBacking ? null : openBacking(chain, depth);
    try {
      if (!readOnly && (header.incompatible & Qcow2Header.INCOMPAT_DIRTY) != 0) {
        // QEMU repairs a dirty image (lazy refcounts left unwritten) on a read-write open
        new RefcountRebuild(file, where, header, l1, refcounts).run();
      }
      if (!readOnly && header.autoclear != 0) {
        // We maintain no bitmaps and know no other autoclear feature: clear them before the first write.
        file.write(ByteBuffer.allocate(8), Qcow2Header.OFF_AUTOCLEAR);
        file.sync();
      }
    } catch (IOException | RuntimeException e) {
      if (backing != null) {
        try {
          backing.close();
        } catch (BlockIOException suppressed) {
          e.addSuppressed(suppressed);
        }
      }
      throw e;
    }
    this.dirty = readOnly && (header.incompatible & Qcow2Header.INCOMPAT_DIRTY) != 0;
  }

  private void checkNoOverlap(String a, long aOff, long aLen, String b, long bOff, long bLen) throws ImageFormatException {
    if (aOff < bOff + bLen && bOff < aOff + aLen) {
      throw new ImageFormatException(where + ": the " + a + " [0x" + Long.toHexString(aOff) + ", +" + aLen
          + ") overlaps the " + b + " [0x" + Long.toHexString(bOff) + ", +" + bLen + ")");
    }
  }

  private BlockDevice openBacking(Set<Path> chain, int depth) throws IOException {
    if (depth + 1 >= MAX_CHAIN_DEPTH) {
      throw new ImageFormatException(where + ": the backing chain is deeper than " + MAX_CHAIN_DEPTH);
    }
    String name = header.backingFile;
    Path p;
    try {
      p = Paths.get(name);
    } catch (RuntimeException e) {
      throw new ImageFormatException(where + ": backing file name '" + name + "' is not a valid path");
    }
    if (!p.isAbsolute()) {
      Path dir = path.toAbsolutePath().getParent();
      p = dir == null ? p : dir.resolve(p);
    }
    ImageFormat format;
    String fmt = header.backingFormat;
    try {
      if (fmt == null) {
        format = ImageFormat.probe(p);
      } else if (fmt.equals("qcow2")) {
        format = ImageFormat.QCOW2;
      } else if (fmt.equals("raw")) {
        format = ImageFormat.RAW;
      } else {
        throw new ImageFormatException(where + ": backing format '" + fmt + "' is not supported (raw, qcow2)");
      }
      return format == ImageFormat.QCOW2 ? open(p, true, CacheMode.WRITEBACK, chain, depth + 1, 0, true) : RawImage.open(p, true);
    } catch (ImageFormatException e) {
      // no cause: the inner message names the inner image already, and a deep chain would print
      // every level's message once per level
      throw new ImageFormatException(where + ": in its backing chain: " + e.getMessage());
    } catch (BlockIOException e) {
      throw new BlockIOException(e.error(), where + ": cannot open backing file " + p + ": " + e.getMessage(), e);
    }
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
    return open(path, readOnly, cacheMode, new HashSet<>(), 0, 0, true);
  }

  /**
   * What the header of {@code path} says, read without opening its backing chain, which need not
   * exist: {@code qemu-img info} opens images the same way (BDRV_O_NO_BACKING). The image is
   * validated as by {@link #open} and not changed.
   */
  public static Qcow2Info inspect(Path path) throws BlockIOException {
    try (Qcow2Image img = open(path, true, CacheMode.WRITEBACK, new HashSet<>(), 0, 0, false)) {
      return img.info();
    }
  }

  /** Opens with an L2 cache of at most {@code l2Tables} tables, so tests can exercise eviction. */
  static Qcow2Image openWithSmallCache(Path path, boolean readOnly, int l2Tables) throws BlockIOException {
    return open(path, readOnly, CacheMode.WRITEBACK, new HashSet<>(), 0, l2Tables, true);
  }

  private static Qcow2Image open(Path path, boolean readOnly, CacheMode cacheMode, Set<Path> chain, int depth,
      int l2Tables, boolean withBacking) throws BlockIOException {
    if (!Files.exists(path)) {
      throw new BlockIOException(BlockError.EINVAL, "cannot open " + path + ": no such file");
    }
    if (Files.isDirectory(path)) {
      throw new BlockIOException(BlockError.EINVAL, "cannot open " + path + ": it is a directory");
    }
    RandomAccessFile raf = null;
    try {
      Path real = path.toRealPath();
      if (!chain.add(real)) {
        throw new ImageFormatException("backing file loop: " + real + " is already in the backing chain " + chain);
      }
      raf = ImageLock.openFile(path, readOnly);
      return new Qcow2Image(path, raf, readOnly, cacheMode, chain, depth, l2Tables, withBacking);
    } catch (IOException | RuntimeException e) {
      if (raf != null) {
        try {
          raf.close();
        } catch (IOException ignored) {
          // the open failed already; nothing was written
        }
      }
      if (e instanceof IOException io) {
        throw BlockIOException.fromHost("cannot open " + path, io);
      }
      throw (RuntimeException) e;
    }
  }

  /**
   * Writes one whole cluster at cluster-aligned {@code offset} compressed with deflate, into a
   * guest cluster that holds no host cluster: unallocated, or a plain zero cluster (as QEMU accepts);
   * a cluster holding data, or a preallocated zero cluster, fails with EIO as in QEMU. {@code cluster} holds exactly
   * one cluster, or less for the image's last partial cluster. When the data does not compress to
   * under one cluster it is written as a normal cluster.
   */
  @Override
  public boolean supportsCompressedWrites() {
    return !readOnly;
  }

  @Override
  public void writeCompressed(long offset, ByteBuffer cluster) throws BlockIOException {
    checkWritable();
    if ((offset & (clusterSize - 1)) != 0) {
      throw new BlockIOException(BlockError.EINVAL, "compressed write at " + offset + " is not aligned to the cluster size "
          + clusterSize);
    }
    BlockIOException.checkRange(offset, cluster.remaining(), size);
    int expect = (int) Math.min(clusterSize, size - offset);
    if (cluster.remaining() != expect) {
      throw new BlockIOException(BlockError.EINVAL, "compressed write of " + cluster.remaining() + " bytes at " + offset
          + ": it must be exactly one cluster (" + expect + " bytes here)");
    }
    byte[] in = new byte[clusterSize];
    cluster.duplicate().get(in, 0, expect);
    byte[] out = new byte[clusterSize];
    int clen = CompressedCluster.deflate(in, out);
    boolean fits = clen >= 0;
    long gci = offset >>> clusterBits;
    io.readLock().lock();
    try {
      checkOpen(); // close may have run while we waited for the lock
      long coff;
      long descriptor;
      meta.lock();
      try {
        while (inflightOverlaps(gci, gci + 1)) {
          allocDone.awaitUninterruptibly();
        }
        long e = map.entryAt(gci);
        if ((e & COMPRESSED) != 0 || (e & OFFSET_MASK) != 0) {
          throw new BlockIOException(BlockError.EIO, where + ": guest cluster at " + offset
              + " is already allocated; compressed writes go to unallocated clusters only");
        }
        if (fits) {
          inflight.add(new long[] {gci, gci + 1});
          try {
            map.ensureWritableL2(gci / l2Entries);
            coff = allocBytes(clen);
          } catch (IOException | RuntimeException ex) {
            endInflight(gci);
            throw ex;
          }
          descriptor = CompressedCluster.descriptor(coff, clen, clusterBits);
        } else {
          coff = 0;
          descriptor = 0;
        }
      } finally {
        meta.unlock();
      }
      if (!fits) {
        writeInternal(offset, cluster.duplicate());
        cluster.position(cluster.limit());
        return;
      }
      try {
        file.write(ByteBuffer.wrap(out, 0, clen), coff);
      } catch (IOException | RuntimeException ex) {
        meta.lock();
        try {
          release(descriptor);
          endInflight(gci);
        } catch (IOException suppressed) {
          ex.addSuppressed(suppressed);
        } finally {
          meta.unlock();
        }
        throw ex;
      }
      meta.lock();
      try {
        map.setEntry(gci, descriptor);
        endInflight(gci);
      } finally {
        meta.unlock();
      }
      cluster.position(cluster.limit()); // consumed, like write
    } catch (IOException e) {
      throw failure("compressed write", offset, e);
    } finally {
      io.readLock().unlock();
    }
  }

  /** Places {@code len} (< one cluster) bytes of compressed data, packed after the previous stream. */
  private long allocBytes(int len) throws IOException {
    long cur = compressedNext;
    if (cur != 0 && (cur & (clusterSize - 1)) != 0) {
      long c = cur >>> clusterBits;
      long room = clusterSize - (cur & (clusterSize - 1));
      long rc = refcounts.get(c);
      if (rc > 0 && rc < refcounts.maxRefcount()) {
        if (len <= room) {
          refcounts.add(c, 1);
          compressedNext = cur + len;
          return cur;
        }
        if (refcounts.allocateAt(c + 1)) {
          refcounts.add(c, 1);
          compressedNext = cur + len;
          return cur;
        }
      }
    }
    long off = refcounts.allocate(1) << clusterBits;
    compressedNext = off + len;
    return off;
  }

  public Qcow2Info info() {
    meta.lock();
    try {
      long inUse = closed ? 0 : refcounts.countInUse();
      return new Qcow2Info(version, size, clusterSize, header.backingFile, header.backingFormat,
          dirty,
          (header.incompatible & Qcow2Header.INCOMPAT_CORRUPT) != 0,
          (header.compatible & Qcow2Header.COMPAT_LAZY_REFCOUNTS) != 0,
          1 << header.refcountOrder, header.compressionType == 0 ? "zlib" : "zstd",
          (header.incompatible & Qcow2Header.INCOMPAT_EXTL2) != 0, inUse);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    } finally {
      meta.unlock();
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
    return size;
  }

  /** The cluster size. */
  @Override
  public int alignment() {
    return clusterSize;
  }

  @Override
  public boolean isReadOnly() {
    return readOnly;
  }

  // ---------------------------------------------------------------------------------------------
  // read

  @Override
  public void read(long offset, ByteBuffer dst) throws BlockIOException {
    checkOpen();
    BlockIOException.checkRange(offset, dst.remaining(), size);
    io.readLock().lock();
    try {
      checkOpen(); // close may have run while we waited for the lock
      readInternal(offset, dst);
    } catch (IOException e) {
      throw failure("read", offset, e);
    } finally {
      io.readLock().unlock();
    }
  }

  private void readInternal(long offset, ByteBuffer dst) throws IOException {
    long[] run = new long[2];
    long pos = offset;
    int limit = dst.limit();
    while (dst.position() < limit) {
      long gci = pos >>> clusterBits;
      int inCluster = (int) (pos & (clusterSize - 1));
      long remaining = limit - dst.position();
      long maxClusters = ((inCluster + remaining - 1) >>> clusterBits) + 1;
      long n;
      meta.lock();
      try {
        n = map.lookupRun(gci, maxClusters, run);
      } finally {
        meta.unlock();
      }
      int len = (int) Math.min(remaining, (n << clusterBits) - inCluster);
      ByteBuffer part = dst.slice(dst.position(), len);
      switch ((int) run[0]) {
        case ClusterMap.UNALLOCATED -> readBacking(pos, part);
        case ClusterMap.ZERO -> zeroFill(part);
        case ClusterMap.NORMAL -> file.read(part, run[1] + inCluster);
        default -> {
          ByteBuffer c = ByteBuffer.allocate(clusterSize);
          CompressedCluster.inflate(file, where, run[1], clusterBits, c);
          part.put(c.array(), inCluster, len);
        }
      }
      dst.position(dst.position() + len);
      pos += len;
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

  private static void zeroFill(ByteBuffer b) {
    while (b.hasRemaining()) {
      int n = Math.min(b.remaining(), ZEROS.capacity());
      b.put(ZEROS.duplicate().limit(n));
    }
  }

  // ---------------------------------------------------------------------------------------------
  // write

  @Override
  public void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
    checkWritable();
    BlockIOException.checkRange(offset, src.remaining(), size);
    io.readLock().lock();
    try {
      checkOpen(); // close may have run while we waited for the lock
      writeInternal(offset, src);
      src.position(src.limit()); // consumed, as a channel write (and RawImage) leaves it
      if (WriteFlag.isSet(flags, WriteFlag.FUA)) {
        flushMetadata();
      }
    } catch (IOException e) {
      throw failure("write", offset, e);
    } finally {
      io.readLock().unlock();
    }
  }

  private static boolean isCopiedNormal(long e) {
    return (e & (COPIED | COMPRESSED | ZERO_FLAG)) == COPIED && (e & OFFSET_MASK) != 0;
  }

  private void writeInternal(long offset, ByteBuffer src) throws IOException {
    long end = offset + src.remaining();
    int base = src.position();
    long pos = offset;
    long lastCluster = end == offset ? -1 : (end - 1) >>> clusterBits;
    while (pos < end) {
      long gci = pos >>> clusterBits;
      long maxN = lastCluster - gci + 1;
      long host;
      int n;
      boolean inPlace;
      boolean reuse = false;
      long[] old = null;
      meta.lock();
      try {
        while (true) {
          long e = map.entryAt(gci);
          if (isCopiedNormal(e)) {
            host = e & OFFSET_MASK;
            n = 1;
            while (n < maxN) {
              long e2 = map.entryAt(gci + n);
              if (!isCopiedNormal(e2) || (e2 & OFFSET_MASK) != host + ((long) n << clusterBits)) {
                break;
              }
              n++;
            }
            inPlace = true;
            break;
          }
          if (inflightOverlaps(gci, gci + 1)) {
            allocDone.awaitUninterruptibly();
            continue;
          }
          if ((e & (COPIED | COMPRESSED | ZERO_FLAG)) == (COPIED | ZERO_FLAG) && (e & OFFSET_MASK) != 0) {
            // ZERO_ALLOC: the cluster is ours already; write it in place (zeros around the data),
            // then clear the zero flag, as QEMU does
            map.ensureWritableL2(gci / l2Entries);
            host = e & OFFSET_MASK;
            n = 1;
            old = new long[] {ZERO_FLAG};
            reuse = true;
            inflight.add(new long[] {gci, gci + 1});
            inPlace = false;
            break;
          }
          n = 1;
          while (n < maxN && n < Integer.MAX_VALUE / 2) {
            if (isCopiedNormal(map.entryAt(gci + n)) || inflightOverlaps(gci + n, gci + n + 1)) {
              break;
            }
            n++;
          }
          // L2 tables first, then data: the layout QEMU produces
          for (long l1i = gci / l2Entries; l1i <= (gci + n - 1) / l2Entries; l1i++) {
            map.ensureWritableL2(l1i);
          }
          old = new long[n];
          for (int k = 0; k < n; k++) {
            old[k] = map.entryAt(gci + k);
          }
          host = refcounts.allocate(n) << clusterBits;
          n = refcounts.lastCount;
          inflight.add(new long[] {gci, gci + n});
          inPlace = false;
          break;
        }
      } finally {
        meta.unlock();
      }
      long runStart = gci << clusterBits;
      long wEnd = Math.min(end, runStart + ((long) n << clusterBits));
      int srcOff = base + (int) (pos - offset);
      int len = (int) (wEnd - pos);
      if (inPlace) {
        file.write(src.slice(srcOff, len), host + (pos - runStart));
      } else {
        try {
          writeAllocated(gci, n, host, old, pos, wEnd, src, srcOff);
        } catch (IOException | RuntimeException ex) {
          meta.lock();
          try {
            // nothing points to the new clusters yet: give them back at once
            for (int k = 0; k < n && !reuse; k++) {
              refcounts.add((host >>> clusterBits) + k, -1);
            }
          } catch (IOException suppressed) {
            ex.addSuppressed(suppressed);
          } finally {
            endInflight(gci);
            meta.unlock();
          }
          throw ex;
        }
        meta.lock();
        try {
          for (int k = 0; k < n; k++) {
            map.setEntry(gci + k, (host + ((long) k << clusterBits)) | COPIED);
            if (holdsHostClusters(old[k])) {
              addPendingFree(old[k]);
            }
          }
          endInflight(gci);
          if (pendingCount >= PENDING_FREE_LIMIT) {
            processPendingFrees();
          }
        } finally {
          meta.unlock();
        }
      }
      pos = wEnd;
    }
  }

  /**
   * Fills newly allocated host clusters: the guest bytes, and around them what the clusters held
   * before (backing file, zeros, shared or compressed data) so that partial writes keep the rest.
   */
  private void writeAllocated(long gci, int n, long host, long[] old, long pos, long wEnd, ByteBuffer src, int srcOff)
      throws IOException {
    long runStart = gci << clusterBits;
    long runEnd = runStart + ((long) n << clusterBits);
    long head = pos - runStart;
    long tail = runEnd - wEnd;
    int len = (int) (wEnd - pos);
    if (head == 0 && tail == 0) {
      file.write(src.slice(srcOff, len), host);
      return;
    }
    if (n == 1) {
      ByteBuffer c = ByteBuffer.allocate(clusterSize);
      fillOld(old[0], runStart, c);
      c.put((int) head, src, srcOff, len);
      c.clear();
      file.write(c, host);
      return;
    }
    int firstFull = 0;
    int lastFull = n - 1;
    if (head > 0) {
      ByteBuffer c = ByteBuffer.allocate(clusterSize);
      fillOld(old[0], runStart, c);
      c.put((int) head, src, srcOff, (int) (clusterSize - head));
      c.clear();
      file.write(c, host);
      firstFull = 1;
    }
    if (tail > 0) {
      lastFull = n - 2;
    }
    if (lastFull >= firstFull) {
      long gStart = runStart + ((long) firstFull << clusterBits);
      int mLen = (lastFull - firstFull + 1) << clusterBits;
      file.write(src.slice(srcOff + (int) (gStart - pos), mLen), host + ((long) firstFull << clusterBits));
    }
    if (tail > 0) {
      long tStart = runEnd - clusterSize;
      ByteBuffer c = ByteBuffer.allocate(clusterSize);
      fillOld(old[n - 1], tStart, c);
      c.put(0, src, srcOff + (int) (tStart - pos), (int) (wEnd - tStart));
      c.clear();
      file.write(c, host + ((long) (n - 1) << clusterBits));
    }
  }

  /** Fills {@code c} (one cluster) with what guest cluster at {@code guestStart} read as under entry {@code e}. */
  private void fillOld(long e, long guestStart, ByteBuffer c) throws IOException {
    switch (ClusterMap.kindOf(e)) {
      case ClusterMap.UNALLOCATED -> {
        int inImage = (int) Math.min(clusterSize, size - guestStart);
        readBacking(guestStart, c.slice(0, inImage));
      }
      case ClusterMap.ZERO -> {
        // a fresh heap buffer is zero already
      }
      case ClusterMap.NORMAL -> file.read(c.duplicate(), e & OFFSET_MASK);
      default -> CompressedCluster.inflate(file, where, e, clusterBits, c);
    }
  }

  private static boolean holdsHostClusters(long e) {
    return (e & COMPRESSED) != 0 || (e & OFFSET_MASK) != 0;
  }

  private boolean inflightOverlaps(long start, long end) {
    for (long[] r : inflight) {
      if (r[0] < end && start < r[1]) {
        return true;
      }
    }
    return false;
  }

  private void endInflight(long gci) {
    for (int i = 0; i < inflight.size(); i++) {
      if (inflight.get(i)[0] == gci) {
        inflight.remove(i);
        break;
      }
    }
    allocDone.signalAll();
  }

  private void addPendingFree(long entry) {
    if (pendingCount == pendingFree.length) {
      pendingFree = java.util.Arrays.copyOf(pendingFree, pendingCount * 2);
    }
    pendingFree[pendingCount++] = entry;
  }

  /** Makes the pointer removals durable, then applies the refcount decreases they allow. */
  private void processPendingFrees() throws IOException {
    if (pendingCount == 0) {
      return;
    }
    writeL2Ordered();
    file.sync();
    for (int i = 0; i < pendingCount; i++) {
      release(pendingFree[i]);
    }
    pendingCount = 0;
  }

  /** Drops the references that L2 entry {@code e} held. */
  private void release(long e) throws IOException {
    if ((e & COMPRESSED) != 0) {
      long last = CompressedCluster.lastCluster(e, clusterBits);
      for (long c = CompressedCluster.firstCluster(e, clusterBits); c <= last; c++) {
        decrease(c);
      }
    } else if ((e & OFFSET_MASK) != 0) {
      decrease((e & OFFSET_MASK) >>> clusterBits);
    }
  }

  private void decrease(long ci) throws IOException {
    refcounts.add(ci, -1);
    if (compressedNext != 0 && (compressedNext - 1) >>> clusterBits == ci && refcounts.get(ci) == 0) {
      compressedNext = 0;
    }
  }

  /** Refcount blocks, sync (R1, and COW data before mappings), then dirty L2 tables. */
  private void writeL2Ordered() throws IOException {
    refcounts.flush();
    if (l2.hasDirty()) {
      file.sync();
      l2.flush();
    }
  }

  /** Everything written so far becomes durable, in crash-safe order. Caller holds nothing. */
  private void flushMetadata() throws IOException {
    meta.lock();
    try {
      processPendingFrees();
      writeL2Ordered();
      refcounts.flush();
      file.sync();
    } finally {
      meta.unlock();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // zeroes, discard

  private enum ZeroMode { DISCARD, ZERO, ZERO_UNMAP }

  @Override
  public void writeZeroes(long offset, long length, WriteFlag... flags) throws BlockIOException {
    checkWritable();
    BlockIOException.checkRange(offset, length, size);
    if (length == 0) {
      return;
    }
    boolean noFallback = WriteFlag.isSet(flags, WriteFlag.NO_FALLBACK);
    boolean unmap = WriteFlag.isSet(flags, WriteFlag.MAY_UNMAP);
    long end = offset + length;
    long fw = Qcow2Header.ceilDiv(offset, clusterSize);
    long ew = end == size ? Qcow2Header.ceilDiv(size, clusterSize) : end >>> clusterBits;
    boolean v2Backing = version == 2 && backing != null;
    io.writeLock().lock();
    try {
      checkOpen();
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
      meta.lock();
      try {
        for (long[] p : pieces) {
          int k = ClusterMap.kindOf(map.entryAt(p[0] >>> clusterBits));
          if (!(k == ClusterMap.ZERO || (k == ClusterMap.UNALLOCATED && backing == null))) {
            toWrite.add(p);
          }
        }
      } finally {
        meta.unlock();
      }
      if (noFallback && (!toWrite.isEmpty() || (v2Backing && fw < ew))) {
        throw new BlockIOException(BlockError.ENOTSUP, where + ": zeroing [" + offset + ", +" + length
            + ") would need zero bytes written (partial clusters or a v2 image over a backing file)");
      }
      for (long[] p : toWrite) {
        writeZeroBytes(p[0], p[1]);
      }
      if (fw < ew) {
        if (v2Backing) {
          writeZeroBytes(fw << clusterBits, Math.min(size, ew << clusterBits));
        } else {
          zeroClusters(fw, ew - fw, unmap ? ZeroMode.ZERO_UNMAP : ZeroMode.ZERO);
        }
      }
      if (WriteFlag.isSet(flags, WriteFlag.FUA)) {
        flushMetadata();
      }
    } catch (IOException e) {
      throw failure("write zeroes", offset, e);
    } finally {
      io.writeLock().unlock();
    }
  }

  private void writeZeroBytes(long from, long to) throws IOException {
    for (long p = from; p < to; ) {
      int n = (int) Math.min(ZEROS.capacity(), to - p);
      writeInternal(p, ZEROS.duplicate().limit(n));
      p += n;
    }
  }

  /**
   * Discards whole clusters only; the rest of the range keeps its content. Discarded clusters read
   * as zero: the zero flag over a backing file, unallocated otherwise. A v2 image over a backing
   * file cannot say "zero", so there the clusters are written with zeros.
   */
  @Override
  public void discard(long offset, long length) throws BlockIOException {
    checkWritable();
    BlockIOException.checkRange(offset, length, size);
    long end = offset + length;
    long fw = Qcow2Header.ceilDiv(offset, clusterSize);
    long ew = end == size ? Qcow2Header.ceilDiv(size, clusterSize) : end >>> clusterBits;
    if (length == 0 || fw >= ew) {
      return;
    }
    io.writeLock().lock();
    try {
      checkOpen();
      if (version == 2 && backing != null) {
        writeZeroBytes(fw << clusterBits, Math.min(size, ew << clusterBits));
      } else {
        zeroClusters(fw, ew - fw, ZeroMode.DISCARD);
      }
    } catch (IOException e) {
      throw failure("discard", offset, e);
    } finally {
      io.writeLock().unlock();
    }
  }

  /** Rewrites the L2 entries of whole clusters, then frees what they no longer point to (R3). */
  private void zeroClusters(long first, long count, ZeroMode mode) throws IOException {
    meta.lock();
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
          L2Cache.Table t = l2.get(map.l2OffsetAt(l1i));
          for (int i = 0; i < chunk && !changes; i++) {
            long e = map.checkL2(t.e[idx + i], g + i);
            changes = newEntry(e, mode) != e;
          }
        } else {
          changes = true;
        }
        if (changes) {
          long l2off = map.ensureWritableL2(l1i);
          L2Cache.Table t = l2.get(l2off);
          for (int i = 0; i < chunk; i++) {
            long e = map.checkL2(t.e[idx + i], g + i);
            long ne = newEntry(e, mode);
            if (ne != e) {
              t.set(idx + i, ne);
              boolean keepsHost = (e & COMPRESSED) == 0 && (ne & OFFSET_MASK) == (e & OFFSET_MASK);
              if (holdsHostClusters(e) && !keepsHost) {
                addPendingFree(e);
              }
            }
          }
        }
        g += chunk;
      }
      processPendingFrees();
    } finally {
      meta.unlock();
    }
  }

  private long newEntry(long e, ZeroMode mode) {
    int k = ClusterMap.kindOf(e);
    if (mode == ZeroMode.DISCARD) {
      return backing != null ? ZERO_FLAG : 0;
    }
    if (version == 2) {
      return 0; // no backing file here (v2 over a backing file writes zero bytes instead)
    }
    if (mode == ZeroMode.ZERO && isCopiedNormal(e)) {
      return e | ZERO_FLAG; // keep the allocation (QEMU's ZERO_ALLOC without may-unmap)
    }
    if (mode == ZeroMode.ZERO && k == ClusterMap.ZERO && (e & OFFSET_MASK) != 0 && (e & COPIED) != 0) {
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

  @Override
  public void flush() throws BlockIOException {
    checkOpen();
    if (readOnly) {
      return;
    }
    try {
      flushMetadata();
    } catch (IOException e) {
      throw failure("flush", 0, e);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // block status

  /** The most extents one call reports; callers ask again from where the answer ended. */
  private static final int MAX_EXTENTS = 4096;

  @Override
  public List<Extent> blockStatus(long offset, long length) throws BlockIOException {
    checkOpen();
    BlockIOException.checkRange(offset, length, size);
    List<Extent> out = new ArrayList<>();
    if (length == 0) {
      return out;
    }
    long end = offset + length;
    long[] run = new long[2];
    long pos = offset;
    try {
      while (pos < end && out.size() < MAX_EXTENTS) {
        long gci = pos >>> clusterBits;
        int inCluster = (int) (pos & (clusterSize - 1));
        long maxClusters = ((inCluster + (end - pos) - 1) >>> clusterBits) + 1;
        long n;
        meta.lock();
        try {
          n = map.lookupRun(gci, maxClusters, run);
        } finally {
          meta.unlock();
        }
        long runEnd = Math.min(end, (gci + n) << clusterBits);
        switch ((int) run[0]) {
          case ClusterMap.NORMAL, ClusterMap.COMPRESSED_KIND -> add(out, Extent.data(pos, runEnd - pos));
          case ClusterMap.ZERO -> add(out, Extent.zero(pos, runEnd - pos, true));
          default -> {
            if (backing == null) {
              add(out, Extent.zero(pos, runEnd - pos, false));
            } else {
              long bsize = backing.size();
              long bEnd = Math.min(runEnd, bsize);
              if (pos < bEnd) {
                long reached = pos;
                for (Extent x : backing.blockStatus(pos, bEnd - pos)) {
                  add(out, new Extent(x.offset(), x.length(), x.data(), x.zero(), false));
                  reached = x.end();
                }
                if (reached < bEnd) {
                  return out; // the backing file answered a prefix: so do we
                }
              }
              if (Math.max(pos, bEnd) < runEnd) {
                long z = Math.max(pos, bEnd);
                add(out, Extent.zero(z, runEnd - z, false));
              }
            }
          }
        }
        pos = runEnd;
      }
    } catch (IOException e) {
      throw failure("block status", offset, e);
    }
    return out;
  }

  private static void add(List<Extent> out, Extent e) {
    if (!out.isEmpty() && out.get(out.size() - 1).mergeableWith(e)) {
      out.set(out.size() - 1, out.get(out.size() - 1).merge(e));
    } else {
      out.add(e);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // close, errors

  @Override
  public void close() throws BlockIOException {
    if (closed) {
      return;
    }
    io.writeLock().lock();
    try {
      if (closed) {
        return;
      }
      if (!readOnly) {
        flushMetadata();
      }
    } catch (IOException e) {
      throw failure("flush on close", 0, e);
    } finally {
      if (!closed) {
        closed = true;
        try {
          raf.close();
        } catch (IOException ignored) {
          // flushed above; a failing close of the descriptor loses nothing
        }
        if (backing != null) {
          try {
            backing.close();
          } catch (BlockIOException ignored) {
            // read-only: nothing to lose
          }
        }
      }
      io.writeLock().unlock();
    }
  }

  private void checkOpen() throws BlockIOException {
    if (closed) {
      throw new BlockIOException(BlockError.ESHUTDOWN, where + " is closed");
    }
  }

  private void checkWritable() throws BlockIOException {
    checkOpen();
    if (readOnly) {
      throw new BlockIOException(BlockError.EPERM, where + " is open read-only");
    }
  }

  private BlockIOException failure(String what, long offset, IOException e) {
    if (e instanceof ClosedChannelException || e instanceof AsynchronousCloseException) {
      return new BlockIOException(BlockError.ESHUTDOWN, where + " is closed", e);
    }
    return BlockIOException.fromHost(what + " at " + offset + " in " + where, e);
  }
}
