package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.ImageFormatException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.util.concurrent.atomic.AtomicLong;

/**
 * The file under a qcow2 image: positional I/O on one channel (safe for concurrent callers), reads
 * past the end of the file return zeros as in QEMU, and the end of the file is tracked in memory so
 * that validating a pointer against it costs no system call.
 */
final class HostFile {

  private final FileChannel channel;
  /** The file's length as far as our own writes have grown it. */
  private final AtomicLong end;
  /** Whether syncs reach the disk; cache=unsafe skips them all, crash ordering included. */
  private final boolean syncs;

  HostFile(FileChannel channel, CacheMode cacheMode) throws IOException {
    this.channel = channel;
    this.end = new AtomicLong(channel.size());
    this.syncs = cacheMode != CacheMode.UNSAFE;
  }

  long size() {
    return end.get();
  }

  /** Fills {@code dst} from {@code pos}; what lies past the end of the file reads as zeros. */
  void read(ByteBuffer dst, long pos) throws IOException {
    checkPosition(pos);
    long p = pos;
    while (dst.hasRemaining()) {
      int n = channel.read(dst, p);
      if (n < 0) {
        while (dst.hasRemaining()) {
          dst.put((byte) 0);
        }
        return;
      }
      p += n;
    }
  }

  void write(ByteBuffer src, long pos) throws IOException {
    checkPosition(pos);
    long p = pos;
    while (src.hasRemaining()) {
      p += channel.write(src, p);
    }
    long written = p;
    end.accumulateAndGet(written, Math::max);
  }

  /** A last line of defence: a negative offset can only come from corrupt metadata. */
  private static void checkPosition(long pos) throws ImageFormatException {
    if (pos < 0) {
      throw new ImageFormatException("corrupt metadata: negative host offset " + pos);
    }
  }

  void sync() throws IOException {
    if (syncs) {
      channel.force(false);
    }
  }

  void close() throws IOException {
    channel.close();
  }
}
