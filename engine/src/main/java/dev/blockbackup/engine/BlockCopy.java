package dev.blockbackup.engine;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.RangeLock;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.ReentrantLock;

/**
 * QEMU's block-copy state: the copy bitmap (one bit per job cluster, set = still to copy) and the
 * table of copies in flight, shared by the copy-before-write filter and the background copier.
 *
 * <p>A copier claims a run of dirty clusters by clearing their bits and holding the run exclusive
 * in the in-flight {@link RangeLock}, both under one lock, so two copiers never copy the same
 * cluster. Whoever finds only in-flight clusters in its range waits for those copies (a shared hold
 * of its range waits for exactly the overlapping copies) and looks again; a failed copy puts its
 * bits back before it lets go of its range, so a waiter then copies them itself. That is how each
 * cluster is copied exactly once by whoever reaches it first, and a guest write that meets a
 * background copy waits for it only.
 *
 * <p>Per copy, block status picks the method ({@link BlockCopyMethod}): an unallocated run in top
 * mode is skipped, a zero run is written as write-zeroes, data is read and written. The background copier,
 * walking in order, zeroes a run that block status reports as zero through {@link #copyZeroes}, a
 * whole dirty run per request, so an empty disk costs its metadata rather than a copy per chunk.
 */
final class BlockCopy {

  /** Background chunk without x-perf max-chunk: max(cluster, 1 MiB), as QEMU's read/write method. */
  static final long DEFAULT_CHUNK = 1 << 20;

  /**
   * The longest run {@link #copyZeroes} zeroes in one task: long enough that an empty 2 PiB disk is
   * 32 Ki tasks, short enough to bound how long a guest write waits behind one zeroing on a target
   * that zeroes slowly.
   */
  static final long MAX_ZERO_TASK = 64L << 30;

  /**
   * What the job learns from copies: progress, and how much is left (which skipped work shrinks).
   * Both are called under this class's lock, so a copy that ends is counted either as in flight
   * (remaining) or as copied, never both or neither, whichever thread asks.
   */
  interface Progress {
    void copied(long bytes);

    /** progress_set_remaining: {@code bytes} are still to copy (dirty or in flight). */
    void remaining(long bytes);
  }

  /**
   * A run of clusters being copied: [offset, offset + length), length shrinking at most. It holds
   * its whole first extent in the in-flight lock until it ends, so a shrunk-off tail is claimed
   * again only once this copy is over.
   */
  static final class Task {
    final long offset;
    /** Guarded by the BlockCopy lock. */
    long length;
    private final RangeLock.Held held;

    Task(long offset, long length, RangeLock.Held held) {
      this.offset = offset;
      this.length = length;
      this.held = held;
    }

    long end() {
      return offset + length;
    }
  }

  private final BlockDevice source;
  private final BlockDevice target;
  private final long len;
  private final int clusterSize;
  private final int chunkCap;
  private final Progress progress;

  private final ReentrantLock lock = new ReentrantLock();
  /** Dirty = still to be copied. Guarded by itself (DirtyBitmap locks) and changed under lock. */
  private final DirtyBitmap copyBitmap;
  /** Clusters whose point-in-time data is on the target (QEMU's CBW done bitmap, plus background). */
  private final DirtyBitmap copied;
  /** The copies in flight (QEMU's block-copy tasks), each holding its range exclusive. */
  private final RangeLock inFlight = new RangeLock();
  /** Bytes of the copies in flight; guarded by lock. */
  private long inFlightBytes;
  /** sync=top: skip what the source's top layer does not allocate (until its scan is done). */
  private volatile boolean skipUnallocated;

  /** Moves the bytes of each claimed run. */
  private final BlockCopyMethod method;

  BlockCopy(BlockDevice source, BlockDevice target, int clusterSize, long maxChunk, boolean compress,
      boolean discardSource, Progress progress) {
    this.source = source;
    this.target = target;
    this.len = source.size();
    this.clusterSize = clusterSize;
    long chunk = compress ? clusterSize : Math.max(clusterSize, DEFAULT_CHUNK);
    if (maxChunk > 0) {
      chunk = Math.min(chunk, maxChunk);
    }
    this.chunkCap = (int) (chunk / clusterSize * clusterSize);
    this.progress = progress;
    this.copyBitmap = new DirtyBitmap(len, clusterSize);
    this.copied = new DirtyBitmap(len, clusterSize);
    copyBitmap.setAll(); // everything needs copying until the job narrows it (QEMU's block_copy_state_new)
    this.method = new BlockCopyMethod(source, target, clusterSize, chunkCap, compress, discardSource);
  }

  int clusterSize() {
    return clusterSize;
  }

  long size() {
    return len;
  }

  BlockDevice source() {
    return source;
  }

  BlockDevice target() {
    return target;
  }

  /** The copy bitmap; change it only through this class once copies may run. */
  DirtyBitmap copyBitmap() {
    return copyBitmap;
  }

  /** Clusters whose point-in-time content is on the target. */
  boolean isCopied(long offset) {
    return copied.isDirty(offset);
  }

  DirtyBitmap copiedBitmap() {
    return copied;
  }

  void setSkipUnallocated(boolean skip) {
    skipUnallocated = skip;
  }

  /** Bytes still to copy: dirty plus in flight (QEMU recomputes "remaining" this way). */
  long remainingBytes() {
    lock.lock();
    try {
      return remainingLocked();
    } finally {
      lock.unlock();
    }
  }

  private long remainingLocked() {
    return copyBitmap.count() + inFlightBytes;
  }

  /** Reports {@link #remainingBytes} to the job under the lock, so no copy ends between count and report. */
  void updateRemaining() {
    lock.lock();
    try {
      progress.remaining(remainingLocked());
    } finally {
      lock.unlock();
    }
  }

  /** Marks [offset, offset+length), aligned to clusters (or ending at the size), clean: not needed. */
  void resetRange(long offset, long length) {
    lock.lock();
    try {
      copyBitmap.reset(offset, length);
    } finally {
      lock.unlock();
    }
  }

  // ---------------------------------------------------------------- claiming

  /**
   * Claims the first dirty run in [from, end) that no copy holds, at most one chunk: its bits are
   * cleared and it is held as in flight. Null when nothing in the range is dirty and free.
   */
  Task claim(long from, long end) {
    lock.lock();
    try {
      return claimLocked(from, end).task();
    } finally {
      lock.unlock();
    }
  }

  /** Waits until no copy that overlaps [from, end) and is in flight now is still in flight. */
  void awaitIdle(long from, long end) {
    inFlight.acquire(from, end - from, RangeLock.Mode.SHARED).close();
  }

  /** Gives the tail of a task back: [offset+keep, end) is dirty again and no longer counted. */
  private void shrink(Task t, long keep) {
    if (keep >= t.length) {
      return;
    }
    lock.lock();
    try {
      copyBitmap.set(t.offset + keep, t.length - keep);
      inFlightBytes -= t.length - keep;
      t.length = keep;
    } finally {
      lock.unlock();
    }
  }

  /**
   * Ends a task; a successful one counts {@code done} bytes as copied as it leaves the table, a
   * failed one makes its clusters dirty again first, so whoever waited for it copies them.
   */
  private void finish(Task t, boolean ok, long done) {
    lock.lock();
    try {
      if (!ok) {
        copyBitmap.set(t.offset, t.length);
      } else if (done > 0) {
        progress.copied(done);
      }
      inFlightBytes -= t.length;
    } finally {
      lock.unlock();
    }
    t.held.close();
  }

  // ---------------------------------------------------------------- copying

  /**
   * The copy-before-write call (block_copy): copies every dirty cluster that [offset,
   * offset+length) touches and returns once the range is clean and no overlapping copy is in
   * flight. Not rate limited. Fails only for its own failed copies; a failed copy of someone else
   * leaves its clusters dirty, and this call copies them itself.
   *
   * @return the bytes this call copied itself (copies by others it waited for not counted)
   */
  long copyRange(long offset, long length) throws BlockIOException {
    long copiedHere = 0;
    if (length <= 0) {
      return 0;
    }
    long start = offset / clusterSize * clusterSize;
    long end = Math.min(len, roundUp(offset + length));
    while (true) {
      Claim c;
      boolean busy;
      lock.lock();
      try {
        c = claimLocked(start, end);
        // nothing dirty left here: done unless a copy over the range is still in flight
        busy = c.task() == null && c.held() == null && inFlightBytes > 0 && copyInFlight(start, end - start);
      } finally {
        lock.unlock();
      }
      if (c.task() != null) {
        copiedHere += run(c.task());
      } else if (c.held() != null) {
        // dirty clusters a copy still holds (the tail it gave back): wait for that copy
        inFlight.acquire(c.held().offset(), c.held().length(), RangeLock.Mode.EXCLUSIVE).close();
      } else if (busy) {
        inFlight.acquire(start, end - start, RangeLock.Mode.SHARED).close();
      } else {
        return copiedHere;
      }
    }
  }

  /**
   * Copies the dirty clusters of [start, end) (cluster-aligned, or ending at the size), which the
   * caller found reading as zero in the source's block status, as write-zeroes on the target: one
   * claimed task and one request per dirty run of up to {@link #MAX_ZERO_TASK}, since zeroing costs
   * the target its metadata, not its length. Trusting a status taken before the claim is sound: a
   * cluster still dirty when claimed has not been written since the point in time, as every write
   * to a dirty cluster goes through copy-before-write, which claims it first.
   *
   * @return {@code end}, or the start of the first dirty run a copy in flight still holds (the tail
   *     it gave back), where this call stopped
   * @throws BlockCopyException when the target fails; the run's clusters are dirty again
   */
  long copyZeroes(long start, long end) throws BlockCopyException {
    long from = start;
    while (from < end) {
      Task t;
      lock.lock();
      try {
        DirtyBitmap.Area a = copyBitmap.nextDirtyArea(from, end, MAX_ZERO_TASK);
        if (a == null) {
          return end;
        }
        RangeLock.Held held = tryHold(a.offset(), a.length());
        if (held == null) {
          return a.offset();
        }
        t = new Task(a.offset(), a.length(), held);
        copyBitmap.reset(t.offset, t.length);
        inFlightBytes += t.length;
      } finally {
        lock.unlock();
      }
      boolean ok = false;
      try {
        method.writeZeroes(t.offset, t.length);
        ok = true;
      } finally {
        if (!ok) {
          finish(t, false, 0);
        }
      }
      copiedAndFinished(t);
      from = t.end();
    }
    return end;
  }

  /** The first dirty byte at or after {@code from} (a cluster start when from is one), or -1. */
  long nextDirty(long from) {
    return from >= len ? -1 : copyBitmap.nextDirty(from, len);
  }

  /** What a claim found: a task claimed, or else the first dirty run that a copy holds (or neither). */
  private record Claim(Task task, DirtyBitmap.Area held) {}

  private Claim claimLocked(long from, long end) {
    DirtyBitmap.Area firstHeld = null;
    long pos = from;
    while (pos < end) {
      DirtyBitmap.Area a = copyBitmap.nextDirtyArea(pos, end, chunkCap);
      if (a == null) {
        break;
      }
      long s = a.offset() / clusterSize * clusterSize;
      long e = Math.min(len, Math.min(roundUp(a.end()), s + chunkCap));
      RangeLock.Held held = tryHold(s, e - s);
      if (held != null) {
        copyBitmap.reset(s, e - s);
        inFlightBytes += e - s;
        return new Claim(new Task(s, e - s, held), null);
      }
      if (firstHeld == null) {
        firstHeld = new DirtyBitmap.Area(s, e - s);
      }
      pos = e;
    }
    return new Claim(null, firstHeld);
  }

  /**
   * Whether a copy over [s, s+n) is in flight; never blocks (we hold lock). The cheap look first;
   * it also sees other waiters' shared requests, which are no copies, so an overlap is confirmed
   * by whether a shared request of ours would have to wait.
   */
  private boolean copyInFlight(long s, long n) {
    if (!inFlight.overlapsAny(s, n)) {
      return false;
    }
    RangeLock.Held h = tryHold(s, n, RangeLock.Mode.SHARED);
    if (h == null) {
      return true;
    }
    h.close();
    return false;
  }

  /** Holds [s, s+n) for a copy if nobody holds or waits for it; never blocks (we hold lock). */
  private RangeLock.Held tryHold(long s, long n) {
    return tryHold(s, n, RangeLock.Mode.EXCLUSIVE);
  }

  private RangeLock.Held tryHold(long s, long n, RangeLock.Mode mode) {
    try {
      return inFlight.tryAcquire(s, n, mode, 0, TimeUnit.NANOSECONDS);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt(); // a zero timeout never waits; keep the flag for the caller
      return null;
    }
  }

  /**
   * Copies a claimed task. On success its clusters count as copied; on failure they are dirty
   * again and the exception says whether the read or the write failed.
   *
   * @return the bytes written to the target for it (0 for clusters skipped as unallocated)
   */
  long run(Task t) throws BlockCopyException {
    long copied = -1;
    try {
      copied = copy(t);
    } finally {
      if (copied < 0) {
        finish(t, false, 0);
      }
    }
    return copied;
  }

  /** Returns the bytes copied once the task is finished as a success. */
  private long copy(Task t) throws BlockCopyException {
    long off = t.offset;
    Extent e = method.firstExtent(off, t.length);
    boolean statusKnown = e != null;
    long keep = t.length;
    if (statusKnown && e.end() < t.end()) {
      // Shrink to the extent: whole clusters, at least one (QEMU's block_copy_block_status).
      long aligned = (e.end() - off) / clusterSize * clusterSize;
      if (aligned == 0) {
        statusKnown = false; // less than a cluster of this kind: copy one cluster as data
        aligned = Math.min(clusterSize, t.length);
      }
      keep = aligned;
    }
    shrink(t, keep);
    long n = t.length;
    if (statusKnown && skipUnallocated && !e.allocated()) {
      finish(t, true, 0);
      updateRemaining();
      return 0;
    }
    if (statusKnown && e.zero() && !e.data()) {
      method.writeZeroes(off, n);
    } else {
      method.readAndWrite(off, n);
    }
    copiedAndFinished(t);
    return n;
  }

  /** A task's data is on the target: marks it copied, ends it, and discards it from the source if asked. */
  private void copiedAndFinished(Task t) {
    lock.lock();
    try {
      copied.set(t.offset, t.length);
    } finally {
      lock.unlock();
    }
    finish(t, true, t.length);
    method.discardCopied(t.offset, t.length);
  }

  private long roundUp(long v) {
    long r = (v + clusterSize - 1) / clusterSize * clusterSize;
    return r;
  }
}
