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
 * <p>The view lives exactly as long as its filter (snapshot-access cannot outlive its
 * copy-before-write filter): once the job is concluded or has removed the filter, reads, block
 * status and discard fail with ESHUTDOWN, and the removal waits for reads already in flight, so the
 * view never shows the present as the past.
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
    try (CopyBeforeWrite.SnapshotRead r = cbw.beginSnapshotRead(offset, end)) {
      cbw.checkAccess(offset, end);
      long pos = offset;
      while (pos < end) {
        CopyBeforeWrite.Run run = cbw.run(pos, end);
        int n = (int) run.length();
        ByteBuffer part = dst.duplicate();
        part.limit(part.position() + n);
        (run.onTarget() ? target : source).read(pos, part);
        dst.position(dst.position() + n);
        pos += n;
      }
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
    try (CopyBeforeWrite.SnapshotRead r = cbw.beginSnapshotRead(offset, end)) {
      cbw.checkAccess(offset, end);
      CopyBeforeWrite.Run run = cbw.run(offset, end);
      List<Extent> ext = (run.onTarget() ? target : source).blockStatus(offset, run.length());
      List<Extent> out = new ArrayList<>(ext.size());
      for (Extent e : ext) {
        out.add(run.onTarget() ? new Extent(e.offset(), e.length(), e.data(), e.zero(), true) : e);
      }
      return out;
    }
  }

  /** The view owns nothing: closing it leaves the job, source and target as they are. */
  @Override
  public void close() {}
}
