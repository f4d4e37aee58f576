package dev.blockbackup.engine;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.WriteFlag;
import java.nio.ByteBuffer;
import java.util.List;
import java.util.concurrent.atomic.LongAdder;

/** Passes every call to a device and counts the bytes read from it. */
final class ReadCountingDevice implements BlockDevice {

  private final BlockDevice device;
  /** Bytes read through this wrapper so far. */
  final LongAdder bytesRead = new LongAdder();

  ReadCountingDevice(BlockDevice device) {
    this.device = device;
  }

  @Override
  public long size() {
    return device.size();
  }

  @Override
  public int alignment() {
    return device.alignment();
  }

  @Override
  public boolean isReadOnly() {
    return device.isReadOnly();
  }

  @Override
  public void read(long offset, ByteBuffer dst) throws BlockIOException {
    int n = dst.remaining();
    device.read(offset, dst);
    bytesRead.add(n);
  }

  @Override
  public void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
    device.write(offset, src, flags);
  }

  @Override
  public void writeZeroes(long offset, long length, WriteFlag... flags) throws BlockIOException {
    device.writeZeroes(offset, length, flags);
  }

  @Override
  public void discard(long offset, long length) throws BlockIOException {
    device.discard(offset, length);
  }

  @Override
  public void flush() throws BlockIOException {
    device.flush();
  }

  @Override
  public List<Extent> blockStatus(long offset, long length) throws BlockIOException {
    return device.blockStatus(offset, length);
  }

  @Override
  public void close() throws BlockIOException {
    device.close();
  }
}
