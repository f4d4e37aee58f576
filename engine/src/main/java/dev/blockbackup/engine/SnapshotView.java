package dev.blockbackup.engine;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.WriteFlag;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;

/**
 * QEMU's snapshot-access node: a read-only view of the source as it was when its copy-before-write
 * filter was inserted. Clusters already copied are read from the target; the rest from the live
 * source, while the read holds back the guest writes that would change them (they wait until the
 * read ends, after their copy). A pull-mode backup exports this over NBD.
 *
 * <p>Reads fail with EACCES once the snapshot is broken (on-cbw-error=break-snapshot) and in ranges
 * discarded through this view. Discard here means "the reader is done with this range": it stops
 * copy-before-write for it and frees its copy on the target. Writes fail with EPERM.
 */
public final class SnapshotView implements BlockDevice {

  private final CopyBeforeWrite cbw;
  private final BlockDevice source;
  private final BlockDevice target;

  SnapshotView(CopyBeforeWrite cbw) {
    this.cbw = cbw;
    this.source = cbw.blockCopy().source();
    this.target = cbw.blockCopy().target();
  }

  /** A view of the point in time {@code cbw} keeps. */
  public static SnapshotView of(CopyBeforeWrite cbw) {
    return new SnapshotView(cbw);
  }

  @Override
  public long size() {
    return source.size();
  }

  @Override
  public int alignment() {
    return cbw.clusterSize();
  }

  @Override
  public boolean isReadOnly() {
    return true;
  }

  @Override
  public void read(long offset, ByteBuffer dst) throws BlockIOException {
    long end = offset + dst.remaining();
    BlockIOException.checkRange(offset, dst.remaining(), size());
    cbw.checkAccess(offset, end);
    boolean[] fromTarget = new boolean[1];
    long pos = offset;
    while (pos < end) {
      long n = cbw.beginSnapshotRead(pos, end, fromTarget);
      ByteBuffer part = dst.duplicate();
      part.limit(part.position() + (int) n);
      if (fromTarget[0]) {
        target.read(pos, part);
      } else {
        try {
          source.read(pos, part);
        } finally {
          cbw.endFrozenRead(pos, pos + n);
        }
      }
      dst.position(dst.position() + (int) n);
      pos += n;
    }
    // A copy that broke the snapshot while we read may have let a guest write through.
    cbw.checkAccess(offset, offset);
  }

  @Override
  public void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
    throw readOnly();
  }

  @Override
  public void writeZeroes(long offset, long length, WriteFlag... flags) throws BlockIOException {
    throw readOnly();
  }

  private static BlockIOException readOnly() {
    return new BlockIOException(BlockError.EPERM, "the snapshot view is read-only");
  }

  @Override
  public void discard(long offset, long length) throws BlockIOException {
    BlockIOException.checkRange(offset, length, size());
    cbw.discardSnapshot(offset, length);
  }

  @Override
  public void flush() {
    // nothing is ever written through the view
  }

  /**
   * Block status as the reader sees it: copied runs as the target reports them (always allocated),
   * the rest as the source does.
   */
  @Override
  public List<Extent> blockStatus(long offset, long length) throws BlockIOException {
    BlockIOException.checkRange(offset, length, size());
    long end = offset + length;
    cbw.checkAccess(offset, end);
    boolean[] fromTarget = new boolean[1];
    long n = cbw.beginSnapshotRead(offset, end, fromTarget);
    List<Extent> out = new ArrayList<>();
    try {
      List<Extent> ext = (fromTarget[0] ? target : source).blockStatus(offset, n);
      for (Extent e : ext) {
        out.add(fromTarget[0] ? new Extent(e.offset(), e.length(), e.data(), e.zero(), true) : e);
      }
    } finally {
      if (!fromTarget[0]) {
        cbw.endFrozenRead(offset, offset + n);
      }
    }
    return out;
  }

  /** The view owns nothing: closing it leaves the job, source and target as they are. */
  @Override
  public void close() {}
}
