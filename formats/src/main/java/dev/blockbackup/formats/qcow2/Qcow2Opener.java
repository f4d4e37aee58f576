package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.ImageFormat;
import dev.blockbackup.formats.ImageFormatException;
import dev.blockbackup.formats.ImageLock;
import dev.blockbackup.formats.RawImage;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Set;

/**
 * Opens a qcow2 image: reads and validates the header, the L1 table and the refcount table,
 * opens the backing chain (read-only, bounded in depth, refusing loops), and on a read-write open
 * repairs a dirty image, marks its persistent bitmaps in use and clears the autoclear bits of
 * features we do not maintain before anything else is written.
 */
final class Qcow2Opener {

  /** How deep a backing chain may be before we call it hostile. */
  static final int MAX_CHAIN_DEPTH = 64;
  /** QEMU's default maximum L2 cache on Linux. */
  static final long MAX_L2_CACHE_BYTES = 32L << 20;

  private Qcow2Opener() {}

  /**
   * Opens {@code path}; {@code chain} holds the images above it (loop detection), {@code l2Tables}
   * bounds the L2 cache when positive, and {@code withBacking} false leaves the backing chain closed.
   */
  static Qcow2Image open(Path path, boolean readOnly, CacheMode cacheMode, Set<Path> chain, int depth,
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
      return openFile(path, raf, readOnly, cacheMode, chain, depth, l2Tables, withBacking);
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

  private static Qcow2Image openFile(Path path, RandomAccessFile raf, boolean readOnly, CacheMode cacheMode,
      Set<Path> chain, int depth, int l2Tables, boolean withBacking) throws IOException {
    String where = path.toString();
    HostFile file = new HostFile(raf.getChannel(), cacheMode);
    long fileSize = file.size();
    ByteBuffer fixed = ByteBuffer.allocate(Qcow2Header.V3_HEADER_LENGTH);
    file.read(fixed, 0);
    Qcow2Header header = Qcow2Header.parse(fixed, fileSize, where);
    int clusterSize = 1 << header.clusterBits;
    ByteBuffer c0 = ByteBuffer.allocate((int) Math.min(clusterSize, fileSize));
    file.read(c0, 0);
    header.parseExtensions(c0, where);
    long size = header.size & ~511L;

    long reftableBytes = header.refcountTableClusters * clusterSize;
    long l1Bytes = header.l1Size * 8;
    checkInFile(where, "refcount table", header.refcountTableOffset, fileSize);
    if (l1Bytes > 0) {
      checkInFile(where, "L1 table", header.l1TableOffset, fileSize);
    }
    if (header.nbSnapshots > 0) {
      checkInFile(where, "snapshot table", header.snapshotsOffset, fileSize);
    }
    checkNoOverlap(where, "header", 0, clusterSize, "refcount table", header.refcountTableOffset, reftableBytes);
    if (l1Bytes > 0) {
      long l1Span = Qcow2Header.ceilDiv(l1Bytes, clusterSize) * clusterSize;
      checkNoOverlap(where, "header", 0, clusterSize, "L1 table", header.l1TableOffset, l1Span);
      checkNoOverlap(where, "refcount table", header.refcountTableOffset, reftableBytes, "L1 table",
          header.l1TableOffset, l1Span);
    }
    if (!readOnly && (header.incompatible & Qcow2Header.INCOMPAT_CORRUPT) != 0) {
      throw new ImageFormatException(where + ": the image is marked corrupt (incompatible bit 1); it can only be opened"
          + " read-only (repair it with qemu-img check -r all)");
    }

    long[] l1 = new long[(int) header.l1Size];
    if (l1Bytes > 0) {
      ByteBuffer b = ByteBuffer.allocate((int) l1Bytes);
      file.read(b, header.l1TableOffset);
      b.flip();
      b.asLongBuffer().get(l1);
    }
    long[] reftable = new long[(int) (reftableBytes / 8)];
    ByteBuffer rb = ByteBuffer.allocate((int) reftableBytes);
    file.read(rb, header.refcountTableOffset);
    rb.flip();
    rb.asLongBuffer().get(reftable);
    RefcountTable refcounts = new RefcountTable(file, where, header.clusterBits, header.refcountOrder,
        header.refcountTableOffset, reftable);

    // QEMU's default: the L2 cache maps the whole disk, but holds at most 32 MiB.
    long wholeDisk = Qcow2Header.ceilDiv(Qcow2Header.ceilDiv(size, clusterSize) * 8, clusterSize) * clusterSize;
    int capacity = (int) Math.max(2, Math.min(MAX_L2_CACHE_BYTES, wholeDisk) / clusterSize);
    if (l2Tables > 0) {
      capacity = Math.min(capacity, l2Tables);
    }
    L2Cache l2 = new L2Cache(file, clusterSize, capacity, () -> {
      refcounts.flush();
      file.sync();
    });
    if (!readOnly) {
      file.checkOverlaps(OverlapCheck.of(where, file, header, l1, reftable));
    }

    // the data file and the backing chain first: an image whose data file or chain cannot be
    // opened is not touched
    // (not for inspect, which does no I/O: qemu-img info describes an image whose data file is missing)
    RandomAccessFile dataRaf = header.hasDataFile() && withBacking ? openDataFile(path, header.dataFile, readOnly) : null;
    Qcow2Metadata md;
    Qcow2Bitmaps bitmaps;
    BlockDevice backing;
    try {
      HostFile data = dataRaf == null ? null : new HostFile(dataRaf.getChannel(), cacheMode);
      if (data != null) {
        file.syncDataFirst(data);
      }
      md = new Qcow2Metadata(where, file, data, header, l1, refcounts, l2);
      bitmaps = Qcow2Bitmaps.load(md, c0, readOnly);
      backing = header.backingFile == null || !withBacking ? null : openBacking(path, header, chain, depth);
    } catch (IOException | RuntimeException e) {
      closeQuietly(dataRaf, e);
      throw e;
    }
    try {
      if (!readOnly && (header.incompatible & Qcow2Header.INCOMPAT_DIRTY) != 0) {
        // QEMU repairs a dirty image (lazy refcounts left unwritten) on a read-write open
        new RefcountRebuild(file, where, header, l1, refcounts, bitmaps).run();
      }
      if (!readOnly) {
        // before the first write: bitmaps in use, and the autoclear bits of features we do not
        // maintain cleared (data_file_raw we keep: our writes keep the raw data file a valid image)
        bitmaps.openReadWrite();
      }
    } catch (IOException | RuntimeException e) {
      closeQuietly(dataRaf, e);
      if (backing != null) {
        try {
          backing.close();
        } catch (BlockIOException suppressed) {
          e.addSuppressed(suppressed);
        }
      }
      throw e;
    }
    boolean dirty = readOnly && (header.incompatible & Qcow2Header.INCOMPAT_DIRTY) != 0;
    return new Qcow2Image(path, raf, dataRaf, readOnly, md, backing, dirty, bitmaps);
  }

  /**
   * Opens and locks the external data file {@code name} (as stored in the header: relative names
   * are resolved against the image's directory, as QEMU resolves them), read-only with the image.
   */
  private static RandomAccessFile openDataFile(Path path, String name, boolean readOnly) throws IOException {
    String where = path.toString();
    Path p = resolve(path, name, "data file");
    if (!Files.exists(p)) {
      throw new BlockIOException(BlockError.EINVAL, where + ": cannot open data file " + p + ": no such file");
    }
    if (Files.isDirectory(p)) {
      throw new BlockIOException(BlockError.EINVAL, where + ": cannot open data file " + p + ": it is a directory");
    }
    if (Files.isSameFile(p, path)) {
      throw new ImageFormatException(where + ": the data file " + p + " is the image itself");
    }
    try {
      return ImageLock.openFile(p, readOnly);
    } catch (BlockIOException e) {
      throw new BlockIOException(e.error(), where + ": cannot open data file " + p + ": " + e.getMessage(), e);
    } catch (IOException e) {
      throw BlockIOException.fromHost(where + ": cannot open data file " + p, e);
    }
  }

  /** {@code name} from the header as a path, relative names against the image's directory. */
  private static Path resolve(Path path, String name, String what) throws ImageFormatException {
    Path p;
    try {
      p = Paths.get(name);
    } catch (RuntimeException e) {
      throw new ImageFormatException(path + ": " + what + " name '" + name + "' is not a valid path");
    }
    if (!p.isAbsolute()) {
      Path dir = path.toAbsolutePath().getParent();
      p = dir == null ? p : dir.resolve(p);
    }
    return p;
  }

  private static void closeQuietly(RandomAccessFile f, Exception failure) {
    if (f != null) {
      try {
        f.close();
      } catch (IOException suppressed) {
        failure.addSuppressed(suppressed);
      }
    }
  }

  private static void checkInFile(String where, String what, long offset, long fileSize) throws ImageFormatException {
    if (offset >= fileSize) {
      throw new ImageFormatException(where + ": " + what + " at 0x" + Long.toHexString(offset)
          + " lies beyond the end of the file (" + fileSize + " bytes)");
    }
  }

  private static void checkNoOverlap(String where, String a, long aOff, long aLen, String b, long bOff, long bLen)
      throws ImageFormatException {
    if (aOff < bOff + bLen && bOff < aOff + aLen) {
      throw new ImageFormatException(where + ": the " + a + " [0x" + Long.toHexString(aOff) + ", +" + aLen
          + ") overlaps the " + b + " [0x" + Long.toHexString(bOff) + ", +" + bLen + ")");
    }
  }

  /** Opens the backing file named in {@code header}, read-only, relative to the image's directory. */
  private static BlockDevice openBacking(Path path, Qcow2Header header, Set<Path> chain, int depth)
      throws IOException {
    String where = path.toString();
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
      return format == ImageFormat.QCOW2
          ? open(p, true, CacheMode.WRITEBACK, chain, depth + 1, 0, true)
          : RawImage.open(p, true);
    } catch (ImageFormatException e) {
      // no cause: the inner message names the inner image already, and a deep chain would print
      // every level's message once per level
      throw new ImageFormatException(where + ": in its backing chain: " + e.getMessage());
    } catch (BlockIOException e) {
      throw new BlockIOException(e.error(), where + ": cannot open backing file " + p + ": " + e.getMessage(), e);
    }
  }
}
