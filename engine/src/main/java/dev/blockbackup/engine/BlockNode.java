package dev.blockbackup.engine;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.WriteFlag;
import java.nio.ByteBuffer;
import java.util.List;
import java.util.Objects;
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
 * <p>Dirty bitmaps attach here in the bitmaps issue.
 */
public final class BlockNode implements BlockDevice {

  private final String name;
  private final BlockDevice base;
  /** The top of this node's filter chain: {@link #base} or a filter above it. */
  private volatile BlockDevice top;

  private final ReentrantLock lock = new ReentrantLock();
  private final Condition changed = lock.newCondition();
  private int inFlight;
  private int drainCount;
  /** Why the node cannot take another job (QEMU's op blocker reason), or null. */
  private String blocker;

  private BlockNode(String name, BlockDevice base) {
    this.name = Objects.requireNonNull(name, "name");
    if (name.isEmpty()) {
      throw new IllegalArgumentException("a node needs a non-empty name");
    }
    this.base = Objects.requireNonNull(base, "device");
    this.top = base;
  }

  /** A node called {@code name} (QEMU's node-name) over {@code device}. */
  public static BlockNode of(String name, BlockDevice device) {
    return new BlockNode(name, device);
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

  /** Requests admitted and not yet finished. */
  public int inFlight() {
    lock.lock();
    try {
      return inFlight;
    } finally {
      lock.unlock();
    }
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
      while (inFlight > 0) {
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
    lock.lock();
    try {
      return drainCount > 0;
    } finally {
      lock.unlock();
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
    lock.lock();
    try {
      while (drainCount > 0) {
        changed.awaitUninterruptibly();
      }
      inFlight++;
      return top;
    } finally {
      lock.unlock();
    }
  }

  private void leave() {
    lock.lock();
    try {
      if (--inFlight == 0) {
        changed.signalAll();
      }
    } finally {
      lock.unlock();
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
