package dev.blockbackup.formats;

import java.nio.ByteBuffer;
import java.util.List;

/**
 * The base of every filter: hands each call to the device below. A filter overrides only the calls
 * it changes, as an nbdkit filter implements only the callbacks it cares about. A filter that must
 * see every change before it happens extends {@link InterceptingBlockDevice}, which makes the
 * changing calls final and funnels them through one hook, so none can be missed.
 */
public abstract class ForwardingBlockDevice implements BlockDevice {

  private final BlockDevice delegate;

  protected ForwardingBlockDevice(BlockDevice delegate) {
    if (delegate == null) {
      throw new NullPointerException("delegate");
    }
    this.delegate = delegate;
  }

  /** The device this filter sits on. */
  protected final BlockDevice delegate() {
    return delegate;
  }

  @Override
  public long size() {
    return delegate.size();
  }

  @Override
  public int alignment() {
    return delegate.alignment();
  }

  @Override
  public boolean isReadOnly() {
    return delegate.isReadOnly();
  }

  @Override
  public void read(long offset, ByteBuffer dst) throws BlockIOException {
    delegate.read(offset, dst);
  }

  @Override
  public boolean readNoWait(long offset, ByteBuffer dst) throws BlockIOException {
    return delegate.readNoWait(offset, dst);
  }

  @Override
  public void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
    delegate.write(offset, src, flags);
  }

  @Override
  public void writeZeroes(long offset, long length, WriteFlag... flags) throws BlockIOException {
    delegate.writeZeroes(offset, length, flags);
  }

  @Override
  public void discard(long offset, long length) throws BlockIOException {
    delegate.discard(offset, length);
  }

  @Override
  public void flush() throws BlockIOException {
    delegate.flush();
  }

  @Override
  public boolean supportsCompressedWrites() {
    return delegate.supportsCompressedWrites();
  }

  @Override
  public void writeCompressed(long offset, ByteBuffer cluster) throws BlockIOException {
    delegate.writeCompressed(offset, cluster);
  }

  @Override
  public List<Extent> blockStatus(long offset, long length) throws BlockIOException {
    return delegate.blockStatus(offset, length);
  }

  @Override
  public void close() throws BlockIOException {
    delegate.close();
  }
}
