package dev.blockbackup.formats;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.channels.ClosedChannelException;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * A raw image: the file's bytes are the disk's bytes. Positional I/O on one {@link FileChannel},
 * which is safe under concurrent callers.
 *
 * <p>Holes, as QEMU's file-posix has them, come through a {@link SparseFile} beside the channel:
 * block status reports the file's holes as zero (lseek SEEK_DATA/SEEK_HOLE), discard and
 * write-zeroes with MAY_UNMAP punch holes, write-zeroes without it zeroes the range in place
 * (fallocate ZERO_RANGE), and NO_FALLBACK (NBD's FAST_ZERO) succeeds exactly when one of those
 * did. Where native access is not there (another OS, no JNA) or the file system lacks a call, the
 * pure-Java behaviour stands in for it: everything is data, discard keeps the data, zeros are
 * written only over blocks that do not read as zero already, the tail is zeroed by truncating the
 * file and growing it back, and NO_FALLBACK fails with ENOTSUP except at the tail.
 */
public final class RawImage implements BlockDevice {

  /** Zeroing scans the range in chunks of this size and writes only the blocks that are not zero. */
  private static final int ZERO_SCAN_CHUNK = 1 << 20;
  /** The unit in which zeroing decides "already zero, skip" or "write zeros". */
  private static final int ZERO_BLOCK = 4096;
  /** Block status answers at most this many extents per call, each one lseek pair. */
  private static final int MAX_EXTENTS = 1024;

  private final Path path;
  private final RandomAccessFile file;
  private final FileChannel channel;
  /** The descriptor that sees and makes holes; null where the pure-Java behaviour stands in. */
  private final SparseFile holes;
  private final boolean readOnly;
  private final long size;
  /** UNSAFE skips every sync, as QEMU's cache=unsafe. */
  private final CacheMode cacheMode;
  private volatile boolean closed;
  /**
   * The file held no hole when opened and nothing since can have punched one: block status is
   * then "data" without asking the kernel, which saves an NBD read two lseeks. Only our own
   * zeroing and discards make holes while we hold the image's lock, and they clear it first; a
   * hole made some other way is reported as data, which is never wrong, only less precise.
   */
  private volatile boolean allData;

  private RawImage(Path path, RandomAccessFile file, SparseFile holes, boolean readOnly, CacheMode cacheMode)
      throws IOException {
    this.path = path;
    this.file = file;
    this.holes = holes;
    this.channel = file.getChannel();
    this.readOnly = readOnly;
    this.size = channel.size();
    this.cacheMode = cacheMode;
    // a new file is one hole; an opened one is all data if its first hole is its end
    this.allData = holes != null && size > 0 && holes.nextHole(0) == size;
  }

  /**
   * Starts binding native access (JNA loading its library and the C library's calls, which takes
   * tens of milliseconds) on a background thread, so that a short-lived command's first open does
   * not wait for all of it. Harmless to call more than once, or never.
   */
  public static void preloadNativeAccess() {
    Thread t = new Thread(SparseFile::available, "raw-native-access");
    t.setDaemon(true);
    t.start();
  }

  /** Creates (or truncates) {@code path} as a sparse raw image of {@code size} bytes, open read-write. */
  public static RawImage create(Path path, long size) throws BlockIOException {
    return create(path, size, CacheMode.WRITEBACK);
  }

  /** As {@link #create(Path, long)}, with the given cache mode. */
  public static RawImage create(Path path, long size, CacheMode cacheMode) throws BlockIOException {
    return create(path, size, cacheMode, true);
  }

  /** As {@link #create(Path, long, CacheMode)}; {@code nativeHoles} false forces the pure-Java behaviour. */
  static RawImage create(Path path, long size, CacheMode cacheMode, boolean nativeHoles) throws BlockIOException {
    if (size < 0) {
      throw new BlockIOException(BlockError.EINVAL, "image size (" + size + ") must not be negative");
    }
    try {
      SparseFile holes = nativeHoles ? SparseFile.open(path, true, true) : null;
      RandomAccessFile f = openBeside(holes, path, false);
      try {
        f.setLength(0);
        f.setLength(size);
        return new RawImage(path, f, holes, false, cacheMode);
      } catch (IOException | RuntimeException e) {
        f.close();
        closeQuietly(holes);
        throw e;
      }
    } catch (IOException e) {
      throw BlockIOException.fromHost("cannot create " + path, e);
    }
  }

  /** Opens an existing file as a raw image. */
  public static RawImage open(Path path, boolean readOnly) throws BlockIOException {
    return open(path, readOnly, CacheMode.WRITEBACK);
  }

  /** As {@link #open(Path, boolean)}, with the given cache mode. */
  public static RawImage open(Path path, boolean readOnly, CacheMode cacheMode) throws BlockIOException {
    return open(path, readOnly, cacheMode, true);
  }

  /** As {@link #open(Path, boolean, CacheMode)}; {@code nativeHoles} false forces the pure-Java behaviour. */
  static RawImage open(Path path, boolean readOnly, CacheMode cacheMode, boolean nativeHoles) throws BlockIOException {
    if (!Files.exists(path)) {
      throw new BlockIOException(BlockError.EINVAL, "cannot open " + path + ": no such file", new NoSuchFileException(path.toString()));
    }
    if (Files.isDirectory(path)) {
      throw new BlockIOException(BlockError.EINVAL, "cannot open " + path + ": it is a directory");
    }
    try {
      SparseFile holes = nativeHoles ? SparseFile.open(path, !readOnly, false) : null;
      return new RawImage(path, openBeside(holes, path, readOnly), holes, readOnly, cacheMode);
    } catch (IOException e) {
      throw BlockIOException.fromHost("cannot open " + path, e);
    }
  }

  /**
   * The file for Java's I/O: the inode {@code holes} holds (through /proc/self/fd), so that both
   * descriptors name one file, or {@code path} where there is no native descriptor.
   */
  private static RandomAccessFile openBeside(SparseFile holes, Path path, boolean readOnly) throws IOException {
    if (holes == null) {
      return ImageLock.openFile(path, readOnly);
    }
    try {
      return ImageLock.openFile(path, holes.procPath(), readOnly);
    } catch (IOException | RuntimeException e) {
      holes.close();
      throw e;
    }
  }


  private static void closeQuietly(SparseFile holes) {
    if (holes != null) {
      holes.close();
    }
  }

  /** Whether this image sees and makes holes natively (false: the pure-Java behaviour). */
  boolean hasNativeHoles() {
    return holes != null;
  }

  public Path path() {
    return path;
  }

  @Override
  public long size() {
    return size;
  }

  @Override
  public int alignment() {
    return ZERO_BLOCK;
  }

  @Override
  public boolean isReadOnly() {
    return readOnly;
  }

  @Override
  public void read(long offset, ByteBuffer dst) throws BlockIOException {
    checkOpen();
    BlockIOException.checkRange(offset, dst.remaining(), size);
    try {
      long pos = offset;
      while (dst.hasRemaining()) {
        int n = channel.read(dst, pos);
        if (n < 0) {
          // Someone shrank the file under us: what is gone reads as zero, as past EOF in QEMU.
          while (dst.hasRemaining()) {
            dst.put((byte) 0);
          }
          break;
        }
        pos += n;
      }
    } catch (IOException e) {
      throw failure("read", offset, e);
    }
  }

  @Override
  public boolean readNoWait(long offset, ByteBuffer dst) throws BlockIOException {
    checkOpen();
    BlockIOException.checkRange(offset, dst.remaining(), size);
    return holes != null && holes.readNoWait(offset, dst);
  }

  @Override
  public void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
    checkWritable();
    BlockIOException.checkRange(offset, src.remaining(), size);
    try {
      long pos = offset;
      while (src.hasRemaining()) {
        pos += channel.write(src, pos);
      }
      if (WriteFlag.isSet(flags, WriteFlag.FUA)) {
        sync();
      }
    } catch (IOException e) {
      throw failure("write", offset, e);
    }
  }

  @Override
  public void writeZeroes(long offset, long length, WriteFlag... flags) throws BlockIOException {
    checkWritable();
    BlockIOException.checkRange(offset, length, size);
    if (length == 0) {
      return;
    }
    allData = false; // every way below may leave a hole or an unwritten extent
    try {
      if (zeroNatively(offset, length, WriteFlag.isSet(flags, WriteFlag.MAY_UNMAP))) {
        // done without writing: a hole, or an unwritten extent that reads as zero
      } else if (offset + length == size) {
        // The tail: cut the file and grow it back, which leaves a hole that reads as zero.
        file.setLength(offset);
        file.setLength(size);
      } else if (WriteFlag.isSet(flags, WriteFlag.NO_FALLBACK)) {
        throw new BlockIOException(BlockError.ENOTSUP, "zeroing " + path + " here would write zeros: the file system cannot punch holes or zero ranges");
      } else {
        zeroByWriting(offset, length);
      }
      if (WriteFlag.isSet(flags, WriteFlag.FUA)) {
        sync();
      }
    } catch (IOException e) {
      throw failure("write zeroes", offset, e);
    }
  }

  /**
   * Zeroes the range through fallocate, as QEMU's file-posix does: with MAY_UNMAP a punched hole
   * (or else a zeroed range); without it ZERO_RANGE, which keeps the blocks allocated, or else a
   * punched hole allocated again. Returns false where the file system can do neither.
   */
  private boolean zeroNatively(long offset, long length, boolean mayUnmap) throws IOException {
    if (holes == null) {
      return false;
    }
    if (mayUnmap) {
      return holes.punchHole(offset, length) || holes.zeroRange(offset, length);
    }
    if (holes.zeroRange(offset, length)) {
      return true;
    }
    if (holes.punchHole(offset, length)) {
      // The range already reads as zero; allocating it again is what NO_HOLE asks, and an
      // allocation that fails for want of support leaves it a hole, which still reads as zero.
      holes.allocate(offset, length);
      return true;
    }
    return false;
  }

  /** Writes zeros over the blocks of the range that are not zero already, so holes stay holes. */
  private void zeroByWriting(long offset, long length) throws IOException {
    ByteBuffer chunk = ByteBuffer.allocate((int) Math.min(ZERO_SCAN_CHUNK, length));
    ByteBuffer zeros = ByteBuffer.allocate(Math.min(ZERO_BLOCK, chunk.capacity()));
    long pos = offset;
    long end = offset + length;
    while (pos < end) {
      int n = (int) Math.min(chunk.capacity(), end - pos);
      chunk.clear().limit(n);
      while (chunk.hasRemaining() && channel.read(chunk, pos + chunk.position()) >= 0) {
        // keep reading until the chunk is full or the file ends
      }
      int filled = chunk.position();
      for (int i = 0; i < n; i += ZERO_BLOCK) {
        int len = Math.min(ZERO_BLOCK, n - i);
        if (i < filled && !Zeros.isZero(chunk, i, Math.min(len, filled - i))) {
          ByteBuffer z = zeros.duplicate();
          z.clear().limit(len);
          long at = pos + i;
          while (z.hasRemaining()) {
            at += channel.write(z, at);
          }
        }
      }
      pos += n;
    }
  }

  /**
   * Punches a hole, so the range reads as zero. Where the file system cannot punch holes the data
   * stays, except at the tail of the file, which becomes a hole by truncation.
   */
  @Override
  public void discard(long offset, long length) throws BlockIOException {
    checkWritable();
    BlockIOException.checkRange(offset, length, size);
    if (length == 0) {
      return;
    }
    allData = false;
    try {
      if (holes != null && holes.punchHole(offset, length)) {
        return;
      }
    } catch (IOException e) {
      throw failure("discard", offset, e);
    }
    if (offset + length == size) {
      writeZeroes(offset, length, WriteFlag.MAY_UNMAP);
    }
  }

  @Override
  public void flush() throws BlockIOException {
    checkOpen();
    if (readOnly) {
      return;
    }
    try {
      sync();
    } catch (IOException e) {
      throw failure("flush", 0, e);
    }
  }

  /**
   * The file's holes as zero and the rest as data, both allocated in this layer, as qemu-img map
   * shows a raw file ("present": a raw file has no backing file). One lseek pair per extent, so an
   * empty file of any size answers in one call. Where holes cannot be seen, all of it is data.
   */
  @Override
  public List<Extent> blockStatus(long offset, long length) throws BlockIOException {
    checkOpen();
    BlockIOException.checkRange(offset, length, size);
    if (length == 0) {
      return List.of();
    }
    if (holes == null || allData) {
      return List.of(Extent.data(offset, length));
    }
    try {
      return seekExtents(offset, offset + length);
    } catch (IOException e) {
      throw failure("block status", offset, e);
    }
  }

  private List<Extent> seekExtents(long offset, long end) throws IOException {
    List<Extent> out = new ArrayList<>();
    long pos = offset;
    while (pos < end && out.size() < MAX_EXTENTS) {
      long data = holes.nextData(pos);
      if (data == -2) {
        break; // this file system cannot tell: what is left is data
      }
      if (data == -1 || data > pos) {
        // a hole up to the next data, or up to the end of the file and past it (reads as zero)
        long holeEnd = data == -1 ? end : Math.min(data, end);
        out.add(Extent.zero(pos, holeEnd - pos, true));
        pos = holeEnd;
        continue;
      }
      long hole = holes.nextHole(pos);
      if (hole == -2) {
        break;
      }
      if (hole == -1) {
        // the file shrank between the two calls: past its end it reads as zero
        out.add(Extent.zero(pos, end - pos, true));
        pos = end;
      } else if (hole <= pos) {
        // the data became a hole between the two calls: say data for one block and ask again
        long next = Math.min(end, (pos / ZERO_BLOCK + 1) * ZERO_BLOCK);
        out.add(Extent.data(pos, next - pos));
        pos = next;
      } else {
        long dataEnd = Math.min(hole, end);
        out.add(Extent.data(pos, dataEnd - pos));
        pos = dataEnd;
      }
    }
    if (out.isEmpty()) {
      out.add(Extent.data(offset, end - offset));
    } else if (pos < end && out.size() < MAX_EXTENTS) {
      out.add(Extent.data(pos, end - pos));
    }
    return merged(out);
  }

  /** Joins neighbours of one kind (the races above may leave two data extents side by side). */
  private static List<Extent> merged(List<Extent> in) {
    List<Extent> out = new ArrayList<>(in.size());
    for (Extent e : in) {
      int last = out.size() - 1;
      if (last >= 0 && out.get(last).mergeableWith(e)) {
        out.set(last, out.get(last).merge(e));
      } else {
        out.add(e);
      }
    }
    return out;
  }

  @Override
  public void close() throws BlockIOException {
    if (closed) {
      return;
    }
    try {
      if (!readOnly) {
        sync();
      }
    } catch (IOException e) {
      throw failure("flush on close", 0, e);
    } finally {
      closed = true;
      try {
        file.close();
      } catch (IOException e) {
        // the data was already flushed; a failing close of a descriptor loses nothing
      }
      closeQuietly(holes);
    }
  }

  private void sync() throws IOException {
    if (cacheMode != CacheMode.UNSAFE) {
      channel.force(false);
    }
  }

  private void checkOpen() throws BlockIOException {
    if (closed) {
      throw new BlockIOException(BlockError.ESHUTDOWN, path + " is closed");
    }
  }

  private void checkWritable() throws BlockIOException {
    checkOpen();
    if (readOnly) {
      throw new BlockIOException(BlockError.EPERM, path + " is open read-only");
    }
  }

  private BlockIOException failure(String what, long offset, IOException e) {
    if (e instanceof ClosedChannelException) {
      return new BlockIOException(BlockError.ESHUTDOWN, path + " is closed", e);
    }
    return BlockIOException.fromHost(what + " at " + offset + " in " + path, e);
  }
}
