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
 * that validating a pointer against it costs no system call. Every write is first checked against
 * the image's metadata regions ({@link OverlapCheck}): one that would overwrite metadata marks the
 * image corrupt and fails instead.
 */
final class HostFile {

  private final FileChannel channel;
  /** The file's length as far as our own writes have grown it. */
  private final AtomicLong end;
  /** Whether syncs reach the disk; cache=unsafe skips them all, crash ordering included. */
  private final boolean syncs;
  /** The metadata no write may land on unless it writes that kind; empty until the image sets it. */
  private volatile OverlapCheck overlaps = new OverlapCheck("", 1);
  /** Set once a write tried to overwrite metadata: the image is marked corrupt, and written no more. */
  private volatile boolean corrupt;
  /** The external data file, synced before this file so data is durable before the mappings to it; or null. */
  private volatile HostFile dataFile;

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

  /** Writes guest data (or compressed data) at {@code pos}: refused if it would land on any metadata. */
  void write(ByteBuffer src, long pos) throws IOException {
    checkOverlap(null, src.remaining(), pos);
    writeUnchecked(src, pos);
  }

  /**
   * Writes metadata of {@code kind} at {@code pos}: refused if it would land on metadata of another
   * kind (QEMU's overlap check with the writer's own kind ignored).
   */
  void writeMetadata(OverlapCheck.Kind kind, ByteBuffer src, long pos) throws IOException {
    checkOverlap(kind, src.remaining(), pos);
    writeUnchecked(src, pos);
  }

  /** The metadata regions writes are checked against; metadata writers keep them up to date. */
  OverlapCheck overlaps() {
    return overlaps;
  }

  /** Starts checking every write against {@code check} (read-write images, once their tables are known). */
  void checkOverlaps(OverlapCheck check) {
    this.overlaps = check;
  }

  /** Whether a write tried to overwrite metadata, so the image is written no more. */
  boolean isCorrupt() {
    return corrupt;
  }

  private void checkOverlap(OverlapCheck.Kind kind, int len, long pos) throws IOException {
    if (corrupt) {
      throw new ImageFormatException(overlaps.where() + ": the image has been marked corrupt; no more writes"
          + " (repair it with qemu-img check -r all)");
    }
    OverlapCheck.Hit hit = overlaps.find(pos, len, kind);
    if (hit != null) {
      markCorrupt();
      throw new ImageFormatException(overlaps.message(hit, pos, len));
    }
  }

  /**
   * Sets the corrupt bit on disk, as QEMU's qcow2_signal_corruption does, and refuses every later
   * write: whatever made a write point at metadata may point other writes there too. A v2 header
   * has no feature bits, so a v2 image is only refused from now on.
   */
  private synchronized void markCorrupt() throws IOException {
    if (corrupt) {
      return;
    }
    corrupt = true;
    ByteBuffer version = ByteBuffer.allocate(4);
    read(version, 4);
    if (version.getInt(0) < 3) {
      return;
    }
    ByteBuffer incompat = ByteBuffer.allocate(8);
    read(incompat, Qcow2Header.OFF_INCOMPAT);
    incompat.putLong(0, incompat.getLong(0) | Qcow2Header.INCOMPAT_CORRUPT).clear();
    writeUnchecked(incompat, Qcow2Header.OFF_INCOMPAT);
    channel.force(false);
  }

  private void writeUnchecked(ByteBuffer src, long pos) throws IOException {
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

  /** Syncs {@code data} (the image's external data file) first whenever this file is synced. */
  void syncDataFirst(HostFile data) {
    this.dataFile = data;
  }

  void sync() throws IOException {
    HostFile data = dataFile;
    if (data != null) {
      data.sync();
    }
    if (syncs) {
      channel.force(false);
    }
  }

  void close() throws IOException {
    channel.close();
  }
}
