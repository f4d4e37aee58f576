package dev.blockbackup.engine;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.WriteFlag;
import dev.blockbackup.formats.Zeros;
import java.nio.ByteBuffer;
import java.util.List;

/**
 * How {@link BlockCopy} moves the bytes of one claimed run (QEMU's block-copy methods): block status
 * of the source, then write-zeroes for a zero run, or a read and a write of the data, in which
 * clusters whose content is all zeros are written as write-zeroes too, so the target stays sparse,
 * and data clusters are written compressed when asked. Failures say whether the read or the write
 * failed. Holds no state but one buffer per thread.
 */
final class BlockCopyMethod {

  private final BlockDevice source;
  private final BlockDevice target;
  private final int clusterSize;
  private final boolean compress;
  private final boolean discardSource;
  private final ThreadLocal<ByteBuffer> buffers;

  BlockCopyMethod(BlockDevice source, BlockDevice target, int clusterSize, int chunk, boolean compress,
      boolean discardSource) {
    this.source = source;
    this.target = target;
    this.clusterSize = clusterSize;
    this.compress = compress;
    this.discardSource = discardSource;
    this.buffers = ThreadLocal.withInitial(() -> ByteBuffer.allocateDirect(chunk));
  }

  /** The source's block status at {@code off}, or null when it is unknown. */
  Extent firstExtent(long off, long n) {
    try {
      List<Extent> ext = source.blockStatus(off, n);
      return ext.isEmpty() ? null : ext.get(0);
    } catch (BlockIOException e) {
      return null; // an error here only costs us the shortcut: copy as data
    }
  }

  /** Reads [off, off+n) of the source, at most one chunk, and writes it to the target. */
  void readAndWrite(long off, long n) throws BlockCopyException {
    ByteBuffer buf = buffers.get();
    buf.clear().limit((int) n);
    try {
      source.read(off, buf);
    } catch (BlockIOException ex) {
      throw new BlockCopyException(ex, true);
    }
    buf.flip();
    writeData(off, buf);
  }

  /** After a successful copy: discards [off, off+n) from the source if asked. */
  void discardCopied(long off, long n) {
    if (discardSource) {
      try {
        source.discard(off, n);
      } catch (BlockIOException ignored) {
        // discard-source only frees space; the copy itself succeeded
      }
    }
  }

  /** Writes {@code buf} at {@code off}, turning runs of all-zero clusters into write-zeroes. */
  private void writeData(long off, ByteBuffer buf) throws BlockCopyException {
    int total = buf.remaining();
    int pos = 0;
    while (pos < total) {
      int step = Math.min(clusterSize, total - pos);
      boolean zero = Zeros.isZero(buf, pos, step);
      int runEnd = pos + step;
      while (runEnd < total) {
        int s = Math.min(clusterSize, total - runEnd);
        if (Zeros.isZero(buf, runEnd, s) != zero) {
          break;
        }
        runEnd += s;
      }
      if (zero) {
        writeZeroes(off + pos, runEnd - pos);
      } else {
        ByteBuffer slice = buf.duplicate();
        slice.position(pos).limit(runEnd);
        try {
          if (compress) {
            writeCompressed(off + pos, slice);
          } else {
            target.write(off + pos, slice);
          }
        } catch (BlockIOException ex) {
          throw new BlockCopyException(ex, false);
        }
      }
      pos = runEnd;
    }
  }

  private void writeCompressed(long off, ByteBuffer data) throws BlockIOException {
    int tc = target.alignment();
    int pos = data.position();
    while (pos < data.limit()) {
      int n = Math.min(tc, data.limit() - pos);
      ByteBuffer one = data.duplicate();
      one.position(pos).limit(pos + n);
      target.writeCompressed(off + (pos - data.position()), one);
      pos += n;
    }
  }

  void writeZeroes(long off, long n) throws BlockCopyException {
    try {
      target.writeZeroes(off, n, WriteFlag.MAY_UNMAP);
    } catch (BlockIOException ex) {
      throw new BlockCopyException(ex, false);
    }
  }
}
