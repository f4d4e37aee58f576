package dev.blockbackup.testkit;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.ForwardingBlockDevice;
import java.nio.ByteBuffer;
import java.util.List;
import java.util.concurrent.atomic.AtomicLong;

/**
 * A real device seen through a counter of the calls that cost in proportion to what a copier walks:
 * block status and reads. Tests that a copy's work follows the data, not the virtual size, compare
 * these counts for two sizes.
 */
public final class CountingDevice extends ForwardingBlockDevice {

  public final AtomicLong blockStatusCalls = new AtomicLong();
  public final AtomicLong readCalls = new AtomicLong();
  public final AtomicLong readBytes = new AtomicLong();

  public CountingDevice(BlockDevice delegate) {
    super(delegate);
  }

  @Override
  public List<Extent> blockStatus(long offset, long length) throws BlockIOException {
    blockStatusCalls.incrementAndGet();
    return super.blockStatus(offset, length);
  }

  @Override
  public void read(long offset, ByteBuffer dst) throws BlockIOException {
    readCalls.incrementAndGet();
    readBytes.addAndGet(dst.remaining());
    super.read(offset, dst);
  }

  /** Block status plus read calls so far. */
  public long sourceCalls() {
    return blockStatusCalls.get() + readCalls.get();
  }
}
