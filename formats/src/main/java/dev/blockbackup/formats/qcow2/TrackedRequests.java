package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.RangeLock;
import dev.blockbackup.formats.WriteFlag;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.AsynchronousCloseException;
import java.nio.channels.ClosedChannelException;

/**
 * The guest requests of one {@link Qcow2Image} in flight (QEMU's tracked requests), and what each
 * does while it holds its bytes.
 *
 * <p>Overlapping requests are ordered by one {@link RangeLock} on guest bytes, QEMU's tracked
 * requests, and never fail because they overlap: each completes as if the overlapping ones ran in
 * some serial order. Reads hold their bytes shared. A write holds its bytes exclusively when every
 * cluster under it is writable in place (the fast path: no mapping changes), and otherwise, like
 * compressed writes, write-zeroes and discards, the whole clusters it touches, since it may
 * allocate, copy or free them. So a read never sees a host cluster that is being freed or reused,
 * two writers never allocate one guest cluster, and requests that do not overlap run in parallel.
 *
 * <p>Closing is the last request: it holds every byte, so a request that waited for it finds the
 * image closed once it holds its own bytes, and fails with ESHUTDOWN.
 */
final class TrackedRequests {

  private final Qcow2Metadata md;
  private final String where;
  private final ClusterReader reader;
  private final ClusterAllocator allocator;
  private final CompressedClusters compressed;
  private final ZeroAndDiscard zeroes;
  /** Guest byte ranges held by requests in flight. */
  private final RangeLock ranges = new RangeLock();
  private volatile boolean closed;

  TrackedRequests(Qcow2Metadata md, BlockDevice backing) {
    this.md = md;
    this.where = md.where;
    this.reader = new ClusterReader(md, backing);
    this.allocator = new ClusterAllocator(md, reader);
    this.compressed = new CompressedClusters(md);
    this.zeroes = new ZeroAndDiscard(md, backing, allocator);
  }

  /** Reads {@code dst.remaining()} bytes at {@code offset}, a range checked by the caller. */
  void read(long offset, ByteBuffer dst) throws BlockIOException {
    try (RangeLock.Held held = ranges.acquire(offset, dst.remaining(), RangeLock.Mode.SHARED)) {
      checkOpen(); // close may have run while we waited
      reader.read(offset, dst);
    } catch (IOException e) {
      throw failure("read", offset, e);
    }
  }

  /** Writes {@code src} at {@code offset}, a range checked (and marked in the bitmaps) by the caller. */
  void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
    int length = src.remaining();
    long clustersStart = offset & -md.clusterSize;
    long clustersEnd = Qcow2Header.ceilDiv(offset + length, md.clusterSize) * md.clusterSize;
    try {
      boolean done = false;
      if (clustersStart != offset || clustersEnd != offset + length) {
        // a write inside clusters it may overwrite in place holds only its own bytes, so that
        // writes to different sectors of one cluster run in parallel
        try (RangeLock.Held held = ranges.acquire(offset, length, RangeLock.Mode.EXCLUSIVE)) {
          checkOpen();
          if (length == 0 || allocator.allInPlace(offset, length)) {
            writeHeld(offset, src, flags);
            done = true;
          }
        }
      }
      if (!done) {
        try (RangeLock.Held held = ranges.acquire(clustersStart, clustersEnd - clustersStart, RangeLock.Mode.EXCLUSIVE)) {
          checkOpen();
          writeHeld(offset, src, flags);
        }
      }
    } catch (IOException e) {
      throw failure("write", offset, e);
    }
  }

  private void writeHeld(long offset, ByteBuffer src, WriteFlag... flags) throws IOException {
    allocator.write(offset, src);
    src.position(src.limit()); // consumed, as a channel write (and RawImage) leaves it
    if (WriteFlag.isSet(flags, WriteFlag.FUA)) {
      flushMetadata();
    }
  }

  /** Writes one checked, aligned cluster of {@code expect} bytes compressed (see {@link Qcow2Image#writeCompressed}). */
  void writeCompressed(long offset, ByteBuffer cluster, int expect) throws BlockIOException {
    int clusterSize = md.clusterSize;
    try (RangeLock.Held held = ranges.acquire(offset, clusterSize, RangeLock.Mode.EXCLUSIVE)) {
      checkOpen();
      if (!compressed.write(offset >>> md.clusterBits, cluster, expect)) {
        allocator.write(offset, cluster.duplicate());
      }
      cluster.position(cluster.limit()); // consumed, like write
    } catch (IOException e) {
      throw failure("compressed write", offset, e);
    }
  }

  /** Zeroes a checked, non-empty range (see {@link Qcow2Image#writeZeroes}). */
  void writeZeroes(long offset, long length, WriteFlag... flags) throws BlockIOException {
    long clustersStart = offset & -md.clusterSize;
    long clustersEnd = Qcow2Header.ceilDiv(offset + length, md.clusterSize) * md.clusterSize;
    try (RangeLock.Held held = ranges.acquire(clustersStart, clustersEnd - clustersStart, RangeLock.Mode.EXCLUSIVE)) {
      checkOpen();
      zeroes.writeZeroes(offset, length, WriteFlag.isSet(flags, WriteFlag.NO_FALLBACK),
          WriteFlag.isSet(flags, WriteFlag.MAY_UNMAP));
      if (WriteFlag.isSet(flags, WriteFlag.FUA)) {
        flushMetadata();
      }
    } catch (IOException e) {
      throw failure("write zeroes", offset, e);
    }
  }

  /**
   * Discards the whole clusters [{@code first}, {@code end}), a non-empty run found by the caller
   * for a request at {@code offset} (see {@link Qcow2Image#discard}).
   */
  void discard(long offset, long first, long end) throws BlockIOException {
    int clusterBits = md.clusterBits;
    try (RangeLock.Held held = ranges.acquire(first << clusterBits, (end - first) << clusterBits,
        RangeLock.Mode.EXCLUSIVE)) {
      checkOpen();
      zeroes.discard(first, end);
    } catch (IOException e) {
      throw failure("discard", offset, e);
    }
  }

  /** Everything written so far becomes durable, in crash-safe order. */
  void flushMetadata() throws IOException {
    md.lock.lock();
    try {
      md.frees.flush();
    } finally {
      md.lock.unlock();
    }
  }

  /** Holds every guest byte, waiting for the requests in flight: close holds it while it closes. */
  RangeLock.Held holdAll() {
    return ranges.acquire(0, Long.MAX_VALUE, RangeLock.Mode.EXCLUSIVE);
  }

  boolean isClosed() {
    return closed;
  }

  /** From now on every request fails with ESHUTDOWN. */
  void setClosed() {
    closed = true;
  }

  void checkOpen() throws BlockIOException {
    if (closed) {
      throw new BlockIOException(BlockError.ESHUTDOWN, where + " is closed");
    }
  }

  BlockIOException failure(String what, long offset, IOException e) {
    if (e instanceof ClosedChannelException || e instanceof AsynchronousCloseException) {
      return new BlockIOException(BlockError.ESHUTDOWN, where + " is closed", e);
    }
    return BlockIOException.fromHost(what + " at " + offset + " in " + where, e);
  }
}
