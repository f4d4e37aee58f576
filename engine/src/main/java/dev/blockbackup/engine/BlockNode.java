package dev.blockbackup.engine;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.WriteFlag;
import java.nio.ByteBuffer;
import java.util.List;
import java.util.Objects;
import java.util.Optional;
import java.util.concurrent.locks.Condition;
import java.util.concurrent.locks.ReentrantLock;

/**
 * A named node of the block graph (QEMU's BlockDriverState as its users see it): the device that
 * guests and exports write to. It counts the requests in flight so that {@link #drain()} can stop
 * new ones and wait for the old ones, which is how a backup job inserts its copy-before-write
 * filter at one exact point in time. Filters are inserted above the node's device, so every user
 * of the node goes through them (QEMU's bdrv_replace_node on the parents). Every call of the
 * contract is forwarded, so a node is as capable as its device (compressed writes included).
 *
 * <p>The node's named dirty bitmaps (QEMU's block-dirty-bitmap-* commands) live here. Their
 * tracking is a filter kept directly above the base, below every job filter, so it sees exactly
 * the changes that reach the base through the node. A command that changes bits or recording runs
 * under the node's drain, so it is one instant against the writes in flight.
 */
public final class BlockNode implements BlockDevice {

  private final String name;
  private final BlockDevice base;
  /** The node's dirty bitmaps. */
  private final DirtyBitmaps bitmaps = new DirtyBitmaps(this);
  /** Marks the bitmaps: always directly above {@link #base}. */
  private final DirtyTracking tracking;
  /** The top of this node's filter chain: {@link #base} or a filter above it. */
  private volatile BlockDevice top;

  private final ReentrantLock lock = new ReentrantLock();
  private final Condition changed = lock.newCondition();
  /**
   * Requests admitted and not yet finished. Admission is lock-free: a request counts itself in,
   * then looks at {@link #drainCount}; a drain counts itself in, then waits for this to reach 0.
   * Both are sequentially consistent, so either the request sees the drain and backs out, or the
   * drain sees the request and waits for it (the lock is only for waiting and waking).
   */
  private final java.util.concurrent.atomic.AtomicInteger inFlight = new java.util.concurrent.atomic.AtomicInteger();
  /** Drains in progress; changed under {@link #lock} only. */
  private volatile int drainCount;
  /** Why the node cannot take another job (QEMU's op blocker reason), or null. */
  private String blocker;

  private BlockNode(String name, BlockDevice base) {
    this.name = Objects.requireNonNull(name, "name");
    if (name.isEmpty()) {
      throw new IllegalArgumentException("a node needs a non-empty name");
    }
    this.base = Objects.requireNonNull(base, "device");
    this.tracking = new DirtyTracking(base, bitmaps);
    this.top = tracking;
  }

  /** A node called {@code name} (QEMU's node-name) over {@code device}. */
  public static BlockNode of(String name, BlockDevice device) {
    BlockNode n = new BlockNode(name, device);
    n.bitmaps.attachStoredBitmaps(); // a qcow2 image's persistent bitmaps become the node's
    return n;
  }

  public String name() {
    return name;
  }

  /** The device this node was made over, below every filter. */
  public BlockDevice base() {
    return base;
  }

  /**
   * The device requests go to now: the base or the topmost filter. Engine only: a filter is reached
   * through the node, never beside it, so a drain holds back every request.
   */
  BlockDevice device() {
    return top;
  }

  /**
   * The device requests go to when no job filter is on the node: the dirty tracking above the
   * base. A job's filter wraps this (engine only).
   */
  BlockDevice unfiltered() {
    return tracking;
  }

  /** Requests admitted and not yet finished. */
  public int inFlight() {
    return inFlight.get();
  }

  // ---------------------------------------------------------------- drain

  /**
   * bdrv_drained_begin: from now on new requests wait, and this returns once every request in
   * flight has finished. Drains nest; close the returned handle to end this one.
   */
  public Drained drain() {
    lock.lock();
    try {
      drainCount++;
      while (inFlight.get() > 0) {
        changed.awaitUninterruptibly();
      }
    } finally {
      lock.unlock();
    }
    return new Drained();
  }

  /** One drained section; closing it twice is harmless. */
  public final class Drained implements AutoCloseable {
    private boolean ended;

    private Drained() {}

    @Override
    public void close() {
      lock.lock();
      try {
        if (!ended) {
          ended = true;
          drainCount--;
          changed.signalAll();
        }
      } finally {
        lock.unlock();
      }
    }
  }

  /** Whether a drain is in progress. */
  public boolean isDrained() {
    return drainCount > 0;
  }

  // ---------------------------------------------------------------- dirty bitmaps

  DirtyBitmaps bitmaps() {
    return bitmaps;
  }

  /** block-dirty-bitmap-add with QEMU's defaults: default granularity, not persistent, enabled. */
  public BlockDirtyBitmap addBitmap(String name) {
    return addBitmap(name, null, false, false);
  }

  /**
   * block-dirty-bitmap-add. A null {@code granularity} is QEMU's default: the node's cluster size
   * clamped to [4 KiB, 64 KiB], 64 KiB without one. {@code persistent} needs a format that stores
   * bitmaps; none does yet, so it is refused with QEMU's message.
   *
   * @throws BitmapException with QEMU's message: empty or too long a name, a duplicate, a bad
   *     granularity, persistence the node cannot store
   */
  public BlockDirtyBitmap addBitmap(String name, Integer granularity, boolean persistent, boolean disabled) {
    try (Drained d = drain()) {
      return bitmaps.add(name, granularity, persistent, disabled);
    }
  }

  /** block-dirty-bitmap-remove; refused for a busy or readonly bitmap. */
  public void removeBitmap(String name) {
    try (Drained d = drain()) {
      bitmaps.remove(name);
    }
  }

  /** block-dirty-bitmap-clear; refused for a busy, readonly or inconsistent bitmap. */
  public void clearBitmap(String name) {
    try (Drained d = drain()) {
      bitmaps.clear(name);
    }
  }

  /** block-dirty-bitmap-enable; refused for a busy or inconsistent bitmap. */
  public void enableBitmap(String name) {
    try (Drained d = drain()) {
      bitmaps.setEnabled(name, true);
    }
  }

  /** block-dirty-bitmap-disable; refused for a busy or inconsistent bitmap. */
  public void disableBitmap(String name) {
    try (Drained d = drain()) {
      bitmaps.setEnabled(name, false);
    }
  }

  /**
   * block-dirty-bitmap-merge: sets in {@code target} every bit of each source (of this node or of
   * others). Either all sources are merged or, when one is refused, nothing changes.
   */
  public void mergeBitmaps(String target, List<BlockDirtyBitmapMergeSource> sources) {
    try (Drained d = drain()) {
      bitmaps.merge(target, sources);
    }
  }

  /** The bitmap called {@code name}, if any (bdrv_find_dirty_bitmap). */
  public Optional<BlockDirtyBitmap> findBitmap(String name) {
    return Optional.ofNullable(bitmaps.find(Objects.requireNonNull(name, "name")));
  }

  /** query-block's dirty-bitmaps: newest first, a job's anonymous successors included. */
  public List<BlockDirtyInfo> queryBitmaps() {
    return bitmaps.query();
  }

  /**
   * Marks {@code name} busy for an operation that reads it (an NBD export of the bitmap); the
   * returned handle makes it free again. Refused for a busy or inconsistent bitmap.
   */
  public BitmapUse useBitmap(String name) {
    BlockDirtyBitmap b;
    synchronized (bitmaps) {
      b = bitmaps.lookup(name);
      DirtyBitmaps.check(b, DirtyBitmaps.ALLOW_RO);
      bitmaps.setBusy(b, true);
    }
    return new BitmapUse() {
      private boolean closed;

      @Override
      public void close() {
        synchronized (bitmaps) {
          if (!closed) {
            closed = true;
            bitmaps.setBusy(b, false);
          }
        }
      }
    };
  }

  /** An operation's hold on a bitmap (see {@link #useBitmap}); closing it twice is harmless. */
  public interface BitmapUse extends AutoCloseable {
    @Override
    void close();
  }

  /**
   * The seam for a format that stores bitmaps (qcow2's bitmaps extension): at open it hands in
   * each stored bitmap. It is persistent; stored with its in-use flag it is inconsistent (and
   * disabled); on a read-only image it is readonly.
   */
  public BlockDirtyBitmap attachStoredBitmap(String name, DirtyBitmap bits, boolean enabled, boolean inconsistent,
      boolean readonly) {
    try (Drained d = drain()) {
      return bitmaps.attachStored(name, bits, enabled, inconsistent, readonly);
    }
  }

  // ---------------------------------------------------------------- graph changes (engine only)

  /**
   * Puts {@code filter} on top (it must wrap the current top). The caller holds a drain, so no
   * request sees half a change.
   */
  void insertFilter(BlockDevice below, BlockDevice filter) {
    lock.lock();
    try {
      requireDrained();
      if (top != below) {
        throw new IllegalStateException("node '" + name + "' changed under the filter being inserted");
      }
      top = filter;
    } finally {
      lock.unlock();
    }
  }

  /** Takes {@code filter} off the top again, leaving {@code below} (bdrv_cbw_drop). */
  void removeFilter(BlockDevice filter, BlockDevice below) {
    lock.lock();
    try {
      requireDrained();
      if (top != filter) {
        throw new IllegalStateException("filter is not on top of node '" + name + "'");
      }
      top = below;
    } finally {
      lock.unlock();
    }
  }

  private void requireDrained() {
    if (drainCount == 0) {
      throw new IllegalStateException("node '" + name + "' must be drained to change its graph");
    }
  }

  /**
   * Claims the node for a job (QEMU's op blockers): a second backup of the same node is refused
   * with QEMU's message.
   */
  void block(String reason) {
    lock.lock();
    try {
      if (blocker != null) {
        throw new JobException("Node '" + name + "' is busy: " + blocker);
      }
      blocker = reason;
    } finally {
      lock.unlock();
    }
  }

  void unblock(String reason) {
    lock.lock();
    try {
      if (Objects.equals(blocker, reason)) {
        blocker = null;
      }
    } finally {
      lock.unlock();
    }
  }

  // ---------------------------------------------------------------- requests

  private BlockDevice enter() {
    BlockDevice d = tryEnter();
    if (d != null) {
      return d;
    }
    lock.lock(); // a drain is on: wait for its end
    try {
      while (drainCount > 0) {
        changed.awaitUninterruptibly();
      }
      inFlight.incrementAndGet(); // under the lock: no drain can begin between the look and this
      return top;
    } finally {
      lock.unlock();
    }
  }

  /**
   * Admits a request without the lock and returns the device on top, or backs out and returns
   * null while a drain is on (the common case takes no lock, so requests of many threads do not
   * queue on it).
   */
  private BlockDevice tryEnter() {
    inFlight.incrementAndGet();
    if (drainCount == 0) {
      return top;
    }
    leave(); // back out, so the drain can finish
    return null;
  }

  private void leave() {
    if (inFlight.decrementAndGet() == 0 && drainCount > 0) {
      // a drain may wait for this: wake it under the lock, so the wake cannot fall between its
      // look at inFlight and its wait
      lock.lock();
      try {
        changed.signalAll();
      } finally {
        lock.unlock();
      }
    }
  }

  /** A request made on the device on top, between {@link #enter} and {@link #leave}. */
  private interface Request<T> {
    T on(BlockDevice top) throws BlockIOException;
  }

  /** A request that answers nothing. */
  private interface VoidRequest {
    void on(BlockDevice top) throws BlockIOException;
  }

  /** Makes {@code request} as one request in flight: a drain waits for it, and it for a drain. */
  private <T> T call(Request<T> request) throws BlockIOException {
    BlockDevice d = enter();
    try {
      return request.on(d);
    } finally {
      leave();
    }
  }

  private void run(VoidRequest request) throws BlockIOException {
    call(d -> {
      request.on(d);
      return null;
    });
  }

  @Override
  public long size() {
    return top.size();
  }

  @Override
  public int alignment() {
    return top.alignment();
  }

  @Override
  public boolean isReadOnly() {
    return top.isReadOnly();
  }

  @Override
  public void read(long offset, ByteBuffer dst) throws BlockIOException {
    run(d -> d.read(offset, dst));
  }

  /** As the device on top does; never waits, not even for a drain (then it says it can't). */
  @Override
  public boolean readNoWait(long offset, ByteBuffer dst) throws BlockIOException {
    BlockDevice d = tryEnter();
    if (d == null) {
      return false;
    }
    try {
      return d.readNoWait(offset, dst);
    } finally {
      leave();
    }
  }

  @Override
  public void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
    run(d -> d.write(offset, src, flags));
  }

  @Override
  public void writeZeroes(long offset, long length, WriteFlag... flags) throws BlockIOException {
    run(d -> d.writeZeroes(offset, length, flags));
  }

  @Override
  public void discard(long offset, long length) throws BlockIOException {
    run(d -> d.discard(offset, length));
  }

  @Override
  public boolean supportsCompressedWrites() {
    return top.supportsCompressedWrites();
  }

  @Override
  public void writeCompressed(long offset, ByteBuffer cluster) throws BlockIOException {
    run(d -> d.writeCompressed(offset, cluster));
  }

  @Override
  public void flush() throws BlockIOException {
    run(BlockDevice::flush);
  }

  @Override
  public List<Extent> blockStatus(long offset, long length) throws BlockIOException {
    return call(d -> d.blockStatus(offset, length));
  }

  /** Closes the device below every filter; a node with a job still on it refuses. */
  @Override
  public void close() throws BlockIOException {
    lock.lock();
    try {
      if (blocker != null) {
        throw new BlockIOException(BlockError.EPERM, "node '" + name + "' is in use: " + blocker);
      }
    } finally {
      lock.unlock();
    }
    base.close();
  }

  @Override
  public String toString() {
    return "BlockNode[" + name + "]";
  }
}
