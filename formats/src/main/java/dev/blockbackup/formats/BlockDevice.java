package dev.blockbackup.formats;

import java.io.Closeable;
import java.nio.ByteBuffer;
import java.util.List;

/**
 * A virtual disk: a fixed number of bytes that can be read, written, zeroed, discarded and asked
 * which of its ranges hold data. Drivers (raw, qcow2, NBD client) implement it, and so do filters
 * (copy-before-write, dirty tracking, rate limit, error injection, snapshot view), which wrap another
 * device the way QEMU stacks filter nodes over a BlockDriverState.
 *
 * <p>Every call blocks until done and may be made from any thread, concurrently with any other call
 * on any range. What overlapping requests in flight at once leave behind is up to the device. The
 * qcow2 driver orders them with a {@link RangeLock}: each completes as if the overlapping ones ran
 * in some serial order. The raw driver adds no order of its own: a request goes to the kernel as one
 * or more pread, pwrite or fallocate calls, and nothing holds across those calls, so overlapping
 * requests there leave each byte as one of them (or the old data) left it, and a read may see part
 * of a write in flight, as on a disk. The engine orders overlapping requests where it needs an
 * order.
 *
 * <p>Offsets and lengths are in bytes. A request must lie inside {@code [0, size())}; otherwise it
 * fails with {@link BlockError#EINVAL} and changes nothing. A write to a read-only device fails with
 * {@link BlockError#EPERM}. A closed device fails every call with {@link BlockError#ESHUTDOWN}.
 */
public interface BlockDevice extends Closeable {

  /** The virtual size in bytes. */
  long size();

  /**
   * The unit this device allocates in, in bytes (a power of two): the cluster size of a qcow2
   * image, the page size for raw files. Requests need not be aligned to it; aligned ones are the
   * cheapest. A backup job picks its own cluster size from its target's alignment.
   */
  int alignment();

  boolean isReadOnly();

  /** Fills {@code dst} from its position to its limit with the bytes at {@code offset}. */
  void read(long offset, ByteBuffer dst) throws BlockIOException;

  /**
   * Writes the bytes of {@code src} from its position to its limit at {@code offset}. With {@link
   * WriteFlag#FUA} the data is durable when the call returns.
   */
  void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException;

  /**
   * Makes {@code [offset, offset+length)} read as zeros. With {@link WriteFlag#MAY_UNMAP} the
   * device may deallocate the range; with {@link WriteFlag#NO_FALLBACK} it fails with {@link
   * BlockError#ENOTSUP} rather than write buffers of zeros (NBD_CMD_FLAG_FAST_ZERO).
   */
  void writeZeroes(long offset, long length, WriteFlag... flags) throws BlockIOException;

  /**
   * Tells the device the range is no longer needed. Afterwards each byte of it reads either as
   * before or as zero; each driver documents which. Never exposes data of a backing file.
   */
  void discard(long offset, long length) throws BlockIOException;

  /** Makes every completed write durable. */
  void flush() throws BlockIOException;

  /**
   * Reads as {@link #read} does, but only if that needs no wait for the disk (the bytes are in the
   * host's page cache): for a caller on a thread that must not block, such as an NBD server's
   * event loop, which then answers at once instead of handing the read to a worker. Returns false,
   * with {@code dst}'s position as it was (its bytes past it may have changed), when it would wait
   * or cannot tell; the caller then calls {@link #read}. By default it always can't.
   */
  default boolean readNoWait(long offset, ByteBuffer dst) throws BlockIOException {
    return false;
  }

  /**
   * Whether {@link #writeCompressed} works here (QEMU's bdrv_co_pwritev_compressed support): a
   * backup with compress=true refuses a target without it.
   */
  default boolean supportsCompressedWrites() {
    return false;
  }

  /**
   * Writes one whole cluster (from {@link #alignment()}-aligned {@code offset}, exactly one cluster
   * long, or less for the last partial cluster) compressed, into a cluster that holds no data in
   * this layer yet.
   *
   * @throws BlockIOException ENOTSUP where {@link #supportsCompressedWrites()} is false
   */
  default void writeCompressed(long offset, ByteBuffer cluster) throws BlockIOException {
    throw new BlockIOException(BlockError.ENOTSUP, "compressed writes are not supported by this device");
  }

  /**
   * Describes {@code [offset, offset+length)} as contiguous extents, in order, starting at {@code
   * offset}. They cover at least a non-empty prefix of the range and never reach past it; callers
   * that need the whole range ask again from where the answer ended.
   */
  List<Extent> blockStatus(long offset, long length) throws BlockIOException;

  /** Flushes and releases the device. Closing twice is harmless. */
  @Override
  void close() throws BlockIOException;
}
