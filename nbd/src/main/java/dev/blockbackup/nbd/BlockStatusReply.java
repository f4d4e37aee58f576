package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.BASE_ALLOCATION_ID;
import static dev.blockbackup.nbd.NbdConstants.NBD_STATE_DIRTY;
import static dev.blockbackup.nbd.NbdConstants.NBD_STATE_HOLE;
import static dev.blockbackup.nbd.NbdConstants.NBD_STATE_ZERO;

import dev.blockbackup.engine.BlockDirtyBitmap;
import dev.blockbackup.engine.BlockNode;
import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.nbd.NbdMessages.BlockStatusChunk;
import java.util.Arrays;

/**
 * The extents of one metadata context over one NBD_CMD_BLOCK_STATUS range: runs of equal flags,
 * merged, at most {@code max} of them (1 for NBD_CMD_FLAG_REQ_ONE). It always describes a prefix
 * of the range that starts at the range's offset; the client asks again for the rest.
 */
final class BlockStatusReply {

  /** At most this many extents in one chunk; the client asks again for the rest. */
  static final int MAX_EXTENTS = 1024;

  private final int max;
  private long[] lengths;
  private int[] flags;
  private int n;
  private boolean full;

  private BlockStatusReply(int max) {
    this.max = max;
    this.lengths = new long[Math.min(max, 16)];
    this.flags = new int[lengths.length];
  }

  /**
   * Appends {@code length} bytes of {@code f}; false once the reply is full (the bytes were not
   * added). A run with the flags of the last one lengthens it.
   */
  private boolean add(long length, int f) {
    if (length <= 0) {
      return !full;
    }
    if (full) {
      return false;
    }
    if (n > 0 && flags[n - 1] == f) {
      lengths[n - 1] += length;
      return true;
    }
    if (n == max) {
      full = true;
      return false;
    }
    if (n == lengths.length) {
      lengths = Arrays.copyOf(lengths, Math.min(max, 2 * n));
      flags = Arrays.copyOf(flags, lengths.length);
    }
    lengths[n] = length;
    flags[n++] = f;
    return true;
  }

  private BlockStatusChunk chunk(long handle, int contextId, long rangeLength, boolean done) {
    if (n == 0) {
      // the device described nothing: "data" is the answer that is never wrong
      lengths[0] = rangeLength;
      flags[0] = 0;
      n = 1;
    }
    return new BlockStatusChunk(handle, contextId, Arrays.copyOf(lengths, n), Arrays.copyOf(flags, n), done);
  }

  /** base:allocation: NBD_STATE_HOLE where no data is stored, NBD_STATE_ZERO where it reads as zeros. */
  static BlockStatusChunk baseAllocation(BlockDevice device, long handle, long offset, long length, int max,
      boolean done) throws BlockIOException {
    BlockStatusReply r = new BlockStatusReply(max);
    // where the device skips or overlaps the walk stops: the reply says what is certain
    ExtentWalk.walk(device, offset, offset + length,
        (from, to, e) -> r.add(to - from, (e.data() ? 0 : NBD_STATE_HOLE) | (e.zero() ? NBD_STATE_ZERO : 0)));
    return r.chunk(handle, BASE_ALLOCATION_ID, length, done);
  }

  /**
   * qemu:allocation-depth: 0 where no layer of the backing chain allocates the bytes, 1 where the
   * exported image does, 2 where its backing file does, and so on (QEMU's bdrv_is_allocated_above
   * depth).
   */
  static BlockStatusChunk allocationDepth(BlockDevice device, long handle, long offset, long length, int max,
      boolean done) throws BlockIOException {
    BlockStatusReply r = new BlockStatusReply(max);
    r.depth(device, offset, offset + length, 1);
    return r.chunk(handle, MetaContexts.ALLOCATION_DEPTH_ID, length, done);
  }

  /** Adds the depths of [pos, end) with {@code device} at {@code level}; false once full or unsure. */
  private boolean depth(BlockDevice device, long pos, long end, int level) throws BlockIOException {
    return ExtentWalk.walk(device, pos, end, (from, to, e) -> {
      if (e.allocated()) {
        return add(to - from, level);
      }
      BlockDevice backing = backingOf(device);
      long inBacking = backing == null ? from : Math.min(to, Math.max(from, backing.size()));
      return (inBacking == from || depth(backing, from, inBacking, level + 1)) && add(to - inBacking, 0);
    }) == end;
  }


  /** The backing file below {@code device}'s image, or null: through a node to its image. */
  private static BlockDevice backingOf(BlockDevice device) {
    BlockDevice d = device instanceof BlockNode node ? node.base() : device;
    return d instanceof Qcow2Image q ? q.backing() : null;
  }

  /** qemu:dirty-bitmap:NAME: NBD_STATE_DIRTY where the bitmap is dirty, 0 where it is clean. */
  static BlockStatusChunk dirtyBitmap(BlockDirtyBitmap bitmap, int contextId, long handle, long offset, long length,
      int max, boolean done) {
    BlockStatusReply r = new BlockStatusReply(max);
    long end = offset + length;
    long pos = offset;
    while (pos < end) {
      // past the bitmap's end (a bitmap of another node, smaller than the export) nothing is dirty
      DirtyBitmap.Area a = pos < bitmap.size() ? bitmap.nextDirtyArea(pos, end) : null;
      if (a == null) {
        r.add(end - pos, 0);
        break;
      }
      if (!r.add(a.offset() - pos, 0) || !r.add(a.length(), NBD_STATE_DIRTY)) {
        break;
      }
      pos = a.end();
    }
    return r.chunk(handle, contextId, length, done);
  }
}
