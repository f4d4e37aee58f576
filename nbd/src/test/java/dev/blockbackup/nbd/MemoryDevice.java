package dev.blockbackup.nbd;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.WriteFlag;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;

/**
 * A disk in a byte array for protocol tests: block status reports 4 KiB blocks of zeros as holes,
 * and {@link #failWith} makes every request fail with a chosen error.
 */
final class MemoryDevice implements BlockDevice {

  static final int BLOCK = 4096;

  final byte[] bytes;
  volatile BlockError failWith;
  volatile boolean closed;
  int flushes;
  /** While set and not counted down, writes wait for it (they hold no lock meanwhile). */
  volatile java.util.concurrent.CountDownLatch writeGate;
  /** Writes waiting at {@link #writeGate}. */
  final java.util.concurrent.atomic.AtomicInteger gatedWrites = new java.util.concurrent.atomic.AtomicInteger();

  MemoryDevice(int size) {
    bytes = new byte[size];
  }

  private void check(long offset, long length) throws BlockIOException {
    if (failWith != null) {
      throw new BlockIOException(failWith, "injected " + failWith);
    }
    BlockIOException.checkRange(offset, length, bytes.length);
  }

  @Override
  public long size() {
    return bytes.length;
  }

  @Override
  public int alignment() {
    return BLOCK;
  }

  @Override
  public boolean isReadOnly() {
    return false;
  }

  @Override
  public synchronized void read(long offset, ByteBuffer dst) throws BlockIOException {
    check(offset, dst.remaining());
    dst.put(bytes, (int) offset, dst.remaining());
  }

  @Override
  public void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
    java.util.concurrent.CountDownLatch gate = writeGate;
    if (gate != null) {
      gatedWrites.incrementAndGet();
      try {
        gate.await();
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw new BlockIOException(BlockError.EIO, "interrupted at the write gate");
      } finally {
        gatedWrites.decrementAndGet();
      }
    }
    synchronized (this) {
      check(offset, src.remaining());
      src.get(bytes, (int) offset, src.remaining());
    }
  }

  @Override
  public synchronized void writeZeroes(long offset, long length, WriteFlag... flags) throws BlockIOException {
    check(offset, length);
    java.util.Arrays.fill(bytes, (int) offset, (int) (offset + length), (byte) 0);
  }

  @Override
  public void discard(long offset, long length) throws BlockIOException {
    writeZeroes(offset, length);
  }

  @Override
  public synchronized void flush() throws BlockIOException {
    check(0, 0);
    flushes++;
  }

  @Override
  public synchronized List<Extent> blockStatus(long offset, long length) throws BlockIOException {
    check(offset, length);
    List<Extent> out = new ArrayList<>();
    long pos = offset;
    long end = offset + length;
    while (pos < end) {
      long next = Math.min(end, (pos / BLOCK + 1) * BLOCK);
      boolean zero = true;
      for (long i = pos; i < next && zero; i++) {
        zero = bytes[(int) i] == 0;
      }
      Extent e = zero ? Extent.zero(pos, next - pos, false) : Extent.data(pos, next - pos);
      if (!out.isEmpty() && out.get(out.size() - 1).mergeableWith(e)) {
        out.set(out.size() - 1, out.get(out.size() - 1).merge(e));
      } else {
        out.add(e);
      }
      pos = next;
    }
    return out;
  }

  @Override
  public void close() {
    closed = true;
  }
}
