package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.WriteFlag;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.List;

/**
 * A qcow2 image (v2 and v3), read and written the way QEMU 7.2 does, so that qemu-img check finds
 * it clean and qemu-img compare finds it equal.
 *
 * <p>API CONTRACT (fixed; the implementation is being written):
 * <ul>
 *   <li>{@link #blockStatus}: data cluster and compressed cluster: data, allocated. Zero flag:
 *       zero, allocated. Unallocated without backing: zero, not allocated. Unallocated with a
 *       backing file: the backing file's data/zero flags for that range (zero beyond its end),
 *       not allocated.
 *   <li>{@link #discard}: every cluster lying wholly inside the range reads as zero afterwards
 *       (the image's last cluster counts as whole when the range reaches the end of the image);
 *       every other byte keeps its content. Backing data is never exposed (zero flag in v3).
 *   <li>{@link #writeZeroes}: the range reads as zero. Whole clusters use the zero flag (v3) or
 *       deallocation (no backing file); with MAY_UNMAP their host clusters are freed.
 *       NO_FALLBACK fails with ENOTSUP when zero bytes would have to be written.
 * </ul>
 */
public final class Qcow2Image implements BlockDevice {

  private Qcow2Image() {}

  /** Creates (or overwrites) {@code path} as a new v3 image and opens it read-write. */
  public static Qcow2Image create(Path path, Qcow2CreateOptions options) throws BlockIOException {
    throw new UnsupportedOperationException("being written");
  }

  /**
   * Opens {@code path}, and its backing chain read-only. Refuses malformed images and unknown
   * incompatible features with an {@link dev.blockbackup.formats.ImageFormatException}; an image
   * with the corrupt bit opens read-only only.
   */
  public static Qcow2Image open(Path path, boolean readOnly) throws BlockIOException {
    throw new UnsupportedOperationException("being written");
  }

  /**
   * Writes one whole cluster at cluster-aligned {@code offset} compressed with deflate, into a
   * guest cluster that must be unallocated (EIO otherwise, as QEMU). {@code cluster} holds exactly
   * one cluster, or less for the image's last partial cluster. When the data does not compress to
   * under one cluster it is written as a normal cluster.
   */
  public void writeCompressed(long offset, ByteBuffer cluster) throws BlockIOException {
    throw new UnsupportedOperationException("being written");
  }

  public Qcow2Info info() {
    throw new UnsupportedOperationException("being written");
  }

  /** The backing file, opened read-only, or null. */
  public BlockDevice backing() {
    throw new UnsupportedOperationException("being written");
  }

  public Path path() {
    throw new UnsupportedOperationException("being written");
  }

  @Override
  public long size() {
    throw new UnsupportedOperationException("being written");
  }

  /** The cluster size. */
  @Override
  public int alignment() {
    throw new UnsupportedOperationException("being written");
  }

  @Override
  public boolean isReadOnly() {
    throw new UnsupportedOperationException("being written");
  }

  @Override
  public void read(long offset, ByteBuffer dst) throws BlockIOException {
    throw new UnsupportedOperationException("being written");
  }

  @Override
  public void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
    throw new UnsupportedOperationException("being written");
  }

  @Override
  public void writeZeroes(long offset, long length, WriteFlag... flags) throws BlockIOException {
    throw new UnsupportedOperationException("being written");
  }

  @Override
  public void discard(long offset, long length) throws BlockIOException {
    throw new UnsupportedOperationException("being written");
  }

  @Override
  public void flush() throws BlockIOException {
    throw new UnsupportedOperationException("being written");
  }

  @Override
  public List<Extent> blockStatus(long offset, long length) throws BlockIOException {
    throw new UnsupportedOperationException("being written");
  }

  @Override
  public void close() throws BlockIOException {
    throw new UnsupportedOperationException("being written");
  }
}
