package dev.blockbackup.formats;

/**
 * One run of bytes with the same allocation status, as {@link BlockDevice#blockStatus} reports it.
 * The flags follow QEMU's block status: {@code data} is BDRV_BLOCK_DATA (the bytes are stored, not
 * known to be zero), {@code zero} is BDRV_BLOCK_ZERO (the bytes read as zero), {@code allocated}
 * is BDRV_BLOCK_ALLOCATED (this layer decides the content; false means it comes from a backing
 * file, or reads as zero for want of one). sync=top copies exactly the allocated extents.
 *
 * @param offset first byte
 * @param length number of bytes, positive
 * @param data the content is stored data
 * @param zero the content reads as zeros
 * @param allocated the content is decided by this layer rather than a backing file
 */
public record Extent(long offset, long length, boolean data, boolean zero, boolean allocated) {

  public Extent {
    if (offset < 0 || length <= 0) {
      throw new IllegalArgumentException("extent [" + offset + ", +" + length + ") is empty or negative");
    }
  }

  public long end() {
    return offset + length;
  }

  /** Stored data, allocated in this layer. */
  public static Extent data(long offset, long length) {
    return new Extent(offset, length, true, false, true);
  }

  /** Reads as zeros. */
  public static Extent zero(long offset, long length, boolean allocated) {
    return new Extent(offset, length, false, true, allocated);
  }

  /** Whether {@code next} starts where this ends and has the same flags. */
  public boolean mergeableWith(Extent next) {
    return next.offset == end() && next.data == data && next.zero == zero && next.allocated == allocated;
  }

  /** This extent lengthened by {@code next}, which must be {@link #mergeableWith mergeable}. */
  public Extent merge(Extent next) {
    return new Extent(offset, length + next.length, data, zero, allocated);
  }
}
