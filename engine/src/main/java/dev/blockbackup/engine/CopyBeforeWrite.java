package dev.blockbackup.engine;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.formats.InterceptingBlockDevice;
import dev.blockbackup.formats.RangeLock;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.atomic.LongAdder;

/**
 * QEMU's copy-before-write filter: sits above the source, and before any call changes clusters
 * that have not been copied yet (write, write-zeroes, discard, compressed write: every change, as
 * {@link InterceptingBlockDevice} funnels them all through one hook), copies their old content to
 * the target. Reads and flushes pass straight through. Copy-before-write is never rate limited.
 *
 * <p>When the copy fails (or takes longer than cbw-timeout), {@link OnCbwError#break_guest_write}
 * fails the guest's request and changes nothing; {@link OnCbwError#break_snapshot} lets it and every
 * later request through uncopied, and marks the snapshot broken: {@link SnapshotView} reads then fail
 * with EACCES and the backup job fails.
 *
 * <p>The filter lives until its job removes it ({@link #shutDown}); the snapshot it keeps ends then,
 * and {@link SnapshotView} reads fail with ESHUTDOWN.
 *
 * <p>Only the job's node hands guest requests to the filter: the class is not reachable from
 * outside the engine, so no caller can write past the node's drain.
 */
final class CopyBeforeWrite extends InterceptingBlockDevice {

  private final BlockCopy bcs;
  private final OnCbwError onCbwError;
  private final long timeoutNanos;
  private final Runnable onBroken;
  /** The copies under cbw-timeout, on a bounded pool; null without a timeout. */
  private final TimedCopies timedCopies;

  /**
   * Snapshot reads of the live source in flight (QEMU's frozen_read_reqs): a read holds its range
   * shared, a guest write about to change the source takes it exclusive for an instant, so it waits
   * for the reads that began before it; the filter's removal takes the whole device.
   */
  private final RangeLock frozenReads = new RangeLock();
  /**
   * Snapshot reads in flight, counted before they hold their range: a guest write that finds none
   * skips the range lock (see {@link #beforeWrite} for why that is safe).
   */
  private final AtomicInteger snapshotReaders = new AtomicInteger();
  /** Clusters a snapshot reader may still read (QEMU's access bitmap); discard removes them. */
  private final DirtyBitmap access;
  /** The first copy failure under break-snapshot, or null while the snapshot is intact. */
  private final AtomicReference<BlockIOException> snapshotError = new AtomicReference<>();
  /** Bytes the guest's writes had copied to the target before they went ahead. */
  private final LongAdder copied = new LongAdder();
  /** Set once when the job removes the filter: the snapshot is gone. */
  private volatile boolean shutDown;

  CopyBeforeWrite(String name, BlockDevice source, BlockCopy bcs, OnCbwError onCbwError, long timeoutNanos,
      Runnable onBroken) {
    super(source);
    this.bcs = bcs;
    this.onCbwError = onCbwError;
    this.timeoutNanos = timeoutNanos;
    this.onBroken = onBroken;
    this.timedCopies = timeoutNanos > 0 ? new TimedCopies(name) : null;
    this.access = bcs.copyBitmap().copy();
  }

  /** The first copy failure under break-snapshot, or null while the snapshot is intact. */
  BlockIOException snapshotError() {
    return snapshotError.get();
  }

  /** Bytes copied to the target by copy-before-write so far (the rest the background copier did). */
  long copiedBytes() {
    return copied.sum();
  }

  OnCbwError onCbwError() {
    return onCbwError;
  }

  BlockCopy blockCopy() {
    return bcs;
  }

  /** The job cluster size: copy-before-write works in these units. */
  int clusterSize() {
    return bcs.clusterSize();
  }

  /**
   * The guest write path (every guest request that changes data while the job runs): copy what is
   * not copied yet, mark the range done, and wait for snapshot reads of the source over it.
   *
   * <p>Without snapshot reads that costs no lock of this filter: the done bitmap's own monitor
   * orders it against readers. A reader counts itself in {@link #snapshotReaders} before it looks
   * at the done bitmap (under that monitor); the write marks the bitmap done before it reads the
   * count. If the reader's look came after the mark, it reads the target; if it came before, the
   * reader's count happened before the write's read of it, so the write sees a reader and takes the
   * range lock, which waits for it.
   */
  @Override
  protected void beforeWrite(long offset, long length, Change kind) throws BlockIOException {
    if (length == 0 || snapshotError.get() != null) {
      return;
    }
    try {
      if (timedCopies != null) {
        timedCopies.run(() -> copied.add(bcs.copyRange(offset, length)), timeoutNanos,
            "[" + offset + ", +" + length + ")");
      } else {
        copied.add(bcs.copyRange(offset, length));
      }
    } catch (BlockIOException e) {
      if (onCbwError == OnCbwError.break_guest_write) {
        throw e;
      }
      breakSnapshot(e);
      return;
    }
    // QEMU's done bitmap: once copy-before-write succeeded, the snapshot reads the clusters it
    // covered from the target, also those it had nothing to copy for (sync=top's clusters the top
    // layer does not allocate, whose point-in-time content the target's backing file holds).
    bcs.copiedBitmap().set(offset, length); // rounds outward to whole clusters
    if (snapshotReaders.get() > 0) {
      frozenReads.acquire(offset, length, RangeLock.Mode.EXCLUSIVE).close();
    }
  }

  private void breakSnapshot(BlockIOException e) {
    if (snapshotError.compareAndSet(null, e) && onBroken != null) {
      onBroken.run();
    }
  }

  /**
   * The job removes the filter (bdrv_cbw_drop), with its node drained: from now on the snapshot is
   * gone. Returns once every snapshot read that began before has ended, so none can return what a
   * guest writes once the filter is off the node.
   */
  void shutDown() {
    shutDown = true;
    frozenReads.acquire(0, size(), RangeLock.Mode.EXCLUSIVE).close();
    if (timedCopies != null) {
      timedCopies.shutdown();
    }
  }

  // ---------------------------------------------------------------- snapshot access (package)

  /** A snapshot read in flight: holds its range against guest writes until closed. */
  final class SnapshotRead implements AutoCloseable {
    private final RangeLock.Held held;
    private boolean closed;

    private SnapshotRead(RangeLock.Held held) {
      this.held = held;
    }

    @Override
    public void close() {
      if (!closed) {
        closed = true;
        held.close();
        snapshotReaders.decrementAndGet();
      }
    }
  }

  /** Where a run of the snapshot lives: {@code length} bytes from the target, or from the source. */
  record Run(long length, boolean onTarget) {}

  /**
   * Begins a snapshot read of [start, end): holds the range against guest writes until the returned
   * handle is closed. Fails with ESHUTDOWN once the filter is removed.
   */
  SnapshotRead beginSnapshotRead(long start, long end) throws BlockIOException {
    snapshotReaders.incrementAndGet();
    RangeLock.Held held = frozenReads.acquire(start, end - start, RangeLock.Mode.SHARED);
    SnapshotRead read = new SnapshotRead(held);
    if (shutDown) {
      read.close();
      throw ended();
    }
    return read;
  }

  /**
   * The run from {@code start} (at most to {@code end}) that is all on the target or all on the
   * source. Call inside a {@link SnapshotRead} covering it.
   */
  Run run(long start, long end) {
    DirtyBitmap copied = bcs.copiedBitmap();
    boolean onTarget = copied.isDirty(start);
    long next = onTarget ? copied.nextClean(start, end) : copied.nextDirty(start, end);
    long stop = next < 0 ? end : next;
    return new Run(stop - start, onTarget);
  }

  /** Fails with EACCES when the snapshot is broken or [start, end) is not all readable. */
  void checkAccess(long start, long end) throws BlockIOException {
    BlockIOException broken = snapshotError.get();
    if (broken != null) {
      throw new BlockIOException(BlockError.EACCES, "the snapshot is broken: copy-before-write failed: "
          + broken.getMessage());
    }
    if (end > start && access.nextClean(start, end) >= 0) {
      throw new BlockIOException(BlockError.EACCES, "[" + start + ", " + end
          + ") is not readable in the snapshot (discarded, or outside its bitmap)");
    }
  }

  private static BlockIOException ended() {
    return new BlockIOException(BlockError.ESHUTDOWN,
        "the snapshot has ended: its backup job removed the copy-before-write filter");
  }

  /**
   * Snapshot discard (QEMU's cbw_co_pdiscard_snapshot): the clusters wholly inside the range are no
   * longer readable and no longer need copying; their copies on the target are discarded.
   */
  void discardSnapshot(long offset, long length) throws BlockIOException {
    int c = bcs.clusterSize();
    long start = (offset + c - 1) / c * c;
    long end = offset + length == size() ? size() : (offset + length) / c * c;
    // held like a read, so that the filter's removal waits for the target's discard to end
    try (SnapshotRead r = beginSnapshotRead(offset, offset + length)) {
      if (end <= start) {
        return;
      }
      access.reset(start, end - start);
      bcs.resetRange(start, end - start);
      try {
        bcs.target().discard(start, end - start);
      } catch (BlockIOException e) {
        if (e.error() != BlockError.ENOTSUP) {
          throw e;
        }
      }
    }
  }
}
