package dev.blockbackup.formats;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.channels.ClosedChannelException;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.List;

/**
 * A raw image: the file's bytes are the disk's bytes. Positional I/O on one {@link FileChannel},
 * which is safe under concurrent callers. Java has no fallocate or SEEK_HOLE, so holes are kept by
 * never writing zeros where the file already reads zero, and the tail of the file is zeroed by
 * truncating it (which frees its blocks) and growing it back.
 */
public final class RawImage implements BlockDevice {

  /** Zeroing scans the range in chunks of this size and writes only the blocks that are not zero. */
  private static final int ZERO_SCAN_CHUNK = 1 << 20;
  /** The unit in which zeroing decides "already zero, skip" or "write zeros". */
  private static final int ZERO_BLOCK = 4096;

  private final Path path;
  private final RandomAccessFile file;
  private final FileChannel channel;
  private final boolean readOnly;
  private final long size;
  /** UNSAFE skips every sync, as QEMU's cache=unsafe. */
  private final CacheMode cacheMode;
  private volatile boolean closed;

  private RawImage(Path path, RandomAccessFile file, boolean readOnly, CacheMode cacheMode) throws IOException {
    this.path = path;
    this.file = file;
    this.channel = file.getChannel();
    this.readOnly = readOnly;
    this.size = channel.size();
    this.cacheMode = cacheMode;
  }

  /** Creates (or truncates) {@code path} as a sparse raw image of {@code size} bytes, open read-write. */
  public static RawImage create(Path path, long size) throws BlockIOException {
    return create(path, size, CacheMode.WRITEBACK);
  }

  /** As {@link #create(Path, long)}, with the given cache mode. */
  public static RawImage create(Path path, long size, CacheMode cacheMode) throws BlockIOException {
    if (size < 0) {
      throw new BlockIOException(BlockError.EINVAL, "image size (" + size + ") must not be negative");
    }
    try {
      RandomAccessFile f = new RandomAccessFile(path.toFile(), "rw");
      try {
        f.setLength(0);
        f.setLength(size);
        return new RawImage(path, f, false, cacheMode);
      } catch (IOException | RuntimeException e) {
        f.close();
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
    if (!Files.exists(path)) {
      throw new BlockIOException(BlockError.EINVAL, "cannot open " + path + ": no such file", new NoSuchFileException(path.toString()));
    }
    if (Files.isDirectory(path)) {
      throw new BlockIOException(BlockError.EINVAL, "cannot open " + path + ": it is a directory");
    }
    try {
      return new RawImage(path, new RandomAccessFile(path.toFile(), readOnly ? "r" : "rw"), readOnly, cacheMode);
    } catch (IOException e) {
      throw BlockIOException.fromHost("cannot open " + path, e);
    }
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
    try {
      if (offset + length == size) {
        // The tail: cut the file and grow it back, which leaves a hole that reads as zero.
        file.setLength(offset);
        file.setLength(size);
      } else if (WriteFlag.isSet(flags, WriteFlag.NO_FALLBACK)) {
        throw new BlockIOException(BlockError.ENOTSUP, "raw files can only zero their tail without writing zeros");
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
   * Raw files keep their data on discard, except at the tail of the file, which becomes a hole:
   * pure Java cannot punch holes elsewhere.
   */
  @Override
  public void discard(long offset, long length) throws BlockIOException {
    checkWritable();
    BlockIOException.checkRange(offset, length, size);
    if (length > 0 && offset + length == size) {
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

  /** Java cannot see a raw file's holes, so all of it is reported as data. */
  @Override
  public List<Extent> blockStatus(long offset, long length) throws BlockIOException {
    checkOpen();
    BlockIOException.checkRange(offset, length, size);
    if (length == 0) {
      return List.of();
    }
    return List.of(Extent.data(offset, length));
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
