package dev.blockbackup.formats;

import java.nio.ByteBuffer;

/**
 * The base of every filter that must see each change before it reaches the device below
 * (copy-before-write, dirty tracking): every call of the contract that can change data is final
 * here and passes through {@link #beforeWrite} first, so a filter states what it does once, for all
 * of them, and cannot forget one. QEMU gets the same from its block layer: every write, zero,
 * discard and compressed write of a filter node goes through bdrv_co_write_req_prepare.
 *
 * <p>Reads, flush, block status and the queries are forwarded as {@link ForwardingBlockDevice} does
 * and may be overridden. A call that would fail anyway (out of range, read-only device, compressed
 * writes unsupported) fails before the hook, so the hook only sees changes that are about to be made.
 *
 * <p>A call added to {@link BlockDevice} later that changes data must be added here as a final
 * method calling the hook (the forwarding base would otherwise pass it by); engine's contract test
 * enumerates the interface by reflection and fails for a changing call that is not final here.
 */
public abstract class InterceptingBlockDevice extends ForwardingBlockDevice {

  /** What kind of change a call makes: the hook may treat them alike or not. */
  public enum Change {
    WRITE,
    WRITE_ZEROES,
    DISCARD,
    WRITE_COMPRESSED
  }

  protected InterceptingBlockDevice(BlockDevice delegate) {
    super(delegate);
  }

  /**
   * Runs before {@code [offset, offset+length)} (inside the device, non-empty or empty) is changed
   * by a call of {@code kind}. Throwing fails the call and leaves the device below untouched.
   */
  protected abstract void beforeWrite(long offset, long length, Change kind) throws BlockIOException;

  // ---------------------------------------------------------------- changes: final, through the hook

  @Override
  public final void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
    prepare(offset, src.remaining(), Change.WRITE);
    delegate().write(offset, src, flags);
  }

  @Override
  public final void writeZeroes(long offset, long length, WriteFlag... flags) throws BlockIOException {
    prepare(offset, length, Change.WRITE_ZEROES);
    delegate().writeZeroes(offset, length, flags);
  }

  @Override
  public final void discard(long offset, long length) throws BlockIOException {
    prepare(offset, length, Change.DISCARD);
    delegate().discard(offset, length);
  }

  @Override
  public final void writeCompressed(long offset, ByteBuffer cluster) throws BlockIOException {
    if (!delegate().supportsCompressedWrites()) {
      throw new BlockIOException(BlockError.ENOTSUP, "compressed writes are not supported by this device");
    }
    prepare(offset, cluster.remaining(), Change.WRITE_COMPRESSED);
    delegate().writeCompressed(offset, cluster);
  }

  private void prepare(long offset, long length, Change kind) throws BlockIOException {
    BlockIOException.checkRange(offset, length, delegate().size());
    if (delegate().isReadOnly()) {
      throw new BlockIOException(BlockError.EPERM, "the device is read-only");
    }
    beforeWrite(offset, length, kind);
  }
}
