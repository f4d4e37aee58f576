package dev.blockbackup.engine;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.ForwardingBlockDevice;
import dev.blockbackup.formats.WriteFlag;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.locks.Condition;
import java.util.concurrent.locks.ReentrantLock;

/**
 * QEMU's copy-before-write filter: sits above the source, and before a write, write-zeroes or
 * discard changes clusters that have not been copied yet, copies their old content to the target.
 * Reads and flushes pass straight through. Copy-before-write is never rate limited.
 *
 * <p>When the copy fails (or takes longer than cbw-timeout), {@link OnCbwError#break_guest_write}
 * fails the guest's request and changes nothing; {@link OnCbwError#break_snapshot} lets it and every
 * later request through uncopied, and marks the snapshot broken: {@link SnapshotView} reads then fail
 * with EACCES and the backup job fails.
 */
public final class CopyBeforeWrite extends ForwardingBlockDevice {

  /** Threads that run copies under a cbw-timeout; a timed-out copy keeps running, as in QEMU. */
  private static final ExecutorService TIMED_COPIES = Executors.newCachedThreadPool(r -> {
    Thread t = new Thread(r, "cbw-timed-copy");
    t.setDaemon(true);
    return t;
  });

  private final BlockCopy bcs;
  private final OnCbwError onCbwError;
  private final long timeoutNanos;
  private final Runnable onBroken;

  private final ReentrantLock lock = new ReentrantLock();
  private final Condition readsEnded = lock.newCondition();
  /** Snapshot reads of the live source in flight: [start, end) pairs (QEMU's frozen_read_reqs). */
  private final List<long[]> frozenReads = new ArrayList<>();
  /** Clusters a snapshot reader may still read (QEMU's access bitmap); discard removes them. */
  private final dev.blockbackup.formats.DirtyBitmap access;
  private volatile BlockIOException snapshotError;

  CopyBeforeWrite(BlockDevice source, BlockCopy bcs, OnCbwError onCbwError, long timeoutNanos, Runnable onBroken) {
    super(source);
    this.bcs = bcs;
    this.onCbwError = onCbwError;
    this.timeoutNanos = timeoutNanos;
    this.onBroken = onBroken;
    this.access = bcs.copyBitmap().copy();
  }

  /** The first copy failure under break-snapshot, or null while the snapshot is intact. */
  public BlockIOException snapshotError() {
    return snapshotError;
  }

  public OnCbwError onCbwError() {
    return onCbwError;
  }

  BlockCopy blockCopy() {
    return bcs;
  }

  /** The job cluster size: copy-before-write works in these units. */
  public int clusterSize() {
    return bcs.clusterSize();
  }

  @Override
  public void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
    BlockIOException.checkRange(offset, src.remaining(), size());
    copyBeforeWrite(offset, src.remaining());
    super.write(offset, src, flags);
  }

  @Override
  public void writeZeroes(long offset, long length, WriteFlag... flags) throws BlockIOException {
    BlockIOException.checkRange(offset, length, size());
    copyBeforeWrite(offset, length);
    super.writeZeroes(offset, length, flags);
  }

  @Override
  public void discard(long offset, long length) throws BlockIOException {
    BlockIOException.checkRange(offset, length, size());
    copyBeforeWrite(offset, length);
    super.discard(offset, length);
  }

  private void copyBeforeWrite(long offset, long length) throws BlockIOException {
    if (length == 0 || snapshotError != null) {
      return;
    }
    try {
      if (timeoutNanos > 0) {
        copyWithTimeout(offset, length);
      } else {
        bcs.copyRange(offset, length);
      }
    } catch (BlockIOException e) {
      if (onCbwError == OnCbwError.break_guest_write) {
        throw e;
      }
      breakSnapshot(e);
      return;
    }
    markDoneAndAwaitReads(offset, length);
  }

  /**
   * QEMU's done bitmap: once copy-before-write succeeded, the snapshot reads the clusters it
   * covered from the target, also those it had nothing to copy for (sync=top's clusters the top
   * layer does not allocate, whose point-in-time content the target's backing file holds): the
   * source is about to hold the guest's data there. Then the guest write waits for snapshot reads
   * of the source still in flight over its range. One lock section for both: this runs on every
   * guest write while a backup runs.
   */
  private void markDoneAndAwaitReads(long offset, long length) {
    long end = offset + length;
    lock.lock();
    try {
      bcs.copiedBitmap().set(offset, length); // rounds outward to whole clusters
      while (overlapsFrozen(offset, end)) {
        readsEnded.awaitUninterruptibly();
      }
    } finally {
      lock.unlock();
    }
  }

  private void copyWithTimeout(long offset, long length) throws BlockIOException {
    Future<Void> f = TIMED_COPIES.submit(() -> {
      bcs.copyRange(offset, length);
      return null;
    });
    try {
      f.get(timeoutNanos, TimeUnit.NANOSECONDS);
    } catch (TimeoutException e) {
      throw new BlockIOException(BlockError.ETIMEDOUT, "copy-before-write of [" + offset + ", +" + length
          + ") took longer than cbw-timeout");
    } catch (ExecutionException e) {
      if (e.getCause() instanceof BlockIOException b) {
        throw b;
      }
      throw new BlockIOException(BlockError.EIO, "copy-before-write failed: " + e.getCause(), e.getCause());
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new BlockIOException(BlockError.ECANCELED, "interrupted while copying before write");
    }
  }

  private void breakSnapshot(BlockIOException e) {
    boolean first;
    lock.lock();
    try {
      first = snapshotError == null;
      if (first) {
        snapshotError = e;
      }
      readsEnded.signalAll();
    } finally {
      lock.unlock();
    }
    if (first && onBroken != null) {
      onBroken.run();
    }
  }

  private boolean overlapsFrozen(long start, long end) {
    for (long[] r : frozenReads) {
      if (r[0] < end && start < r[1]) {
        return true;
      }
    }
    return false;
  }

  // ---------------------------------------------------------------- snapshot access (package)

  /** Fails with EACCES when the snapshot is broken or [start, end) is not all readable. */
  void checkAccess(long start, long end) throws BlockIOException {
    BlockIOException broken = snapshotError;
    if (broken != null) {
      throw new BlockIOException(BlockError.EACCES, "the snapshot is broken: copy-before-write failed: "
          + broken.getMessage());
    }
    if (end > start && access.nextClean(start, end) >= 0) {
      throw new BlockIOException(BlockError.EACCES, "[" + start + ", " + end
          + ") is not readable in the snapshot (discarded, or outside its bitmap)");
    }
  }

  /**
   * For a snapshot read at {@code start}: returns the length of the run from {@code start} (at most
   * to {@code end}) that is all on the target (when {@code fromTarget[0]} comes back true) or all on
   * the source; a source run is registered as a frozen read, which {@link #endFrozenRead} ends.
   */
  long beginSnapshotRead(long start, long end, boolean[] fromTarget) {
    lock.lock();
    try {
      var copied = bcs.copiedBitmap();
      boolean onTarget = copied.isDirty(start);
      long next = onTarget ? copied.nextClean(start, end) : copied.nextDirty(start, end);
      long stop = next < 0 ? end : next;
      fromTarget[0] = onTarget;
      if (!onTarget) {
        frozenReads.add(new long[] {start, stop});
      }
      return stop - start;
    } finally {
      lock.unlock();
    }
  }

  void endFrozenRead(long start, long end) {
    lock.lock();
    try {
      frozenReads.removeIf(r -> r[0] == start && r[1] == end);
      readsEnded.signalAll();
    } finally {
      lock.unlock();
    }
  }

  /**
   * Snapshot discard (QEMU's cbw_co_pdiscard_snapshot): the clusters wholly inside the range are no
   * longer readable and no longer need copying; their copies on the target are discarded.
   */
  void discardSnapshot(long offset, long length) throws BlockIOException {
    int c = bcs.clusterSize();
    long start = (offset + c - 1) / c * c;
    long end = offset + length == size() ? size() : (offset + length) / c * c;
    if (end <= start) {
      return;
    }
    lock.lock();
    try {
      access.reset(start, end - start);
      bcs.resetRange(start, end - start);
    } finally {
      lock.unlock();
    }
    try {
      bcs.target().discard(start, end - start);
    } catch (BlockIOException e) {
      if (e.error() != BlockError.ENOTSUP) {
        throw e;
      }
    }
  }
}
