package dev.blockbackup.engine;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.formats.InterceptingBlockDevice;

/**
 * The dirty tracking of a node (QEMU's bdrv_set_dirty at the end of every write request): it sits
 * directly above the node's base device, below any job filter, so every change that reaches the
 * base through the node marks the node's enabled bitmaps, whatever filter let it through, while
 * a job's reads of the source and its writes to the target (another device) never do.
 *
 * <p>As in QEMU a change marks its range whether or not the device below then succeeds: a failed
 * write may have changed part of the range. A node with a readonly bitmap refuses changes with
 * EPERM, as QEMU's write path does for bdrv_has_readonly_bitmaps.
 *
 * <p>The cost without bitmaps is one volatile read and no allocation; with bitmaps, one set per
 * enabled bitmap, each under that bitmap's own monitor only (DirtyBitmap is thread-safe), never
 * under the registry's lock.
 */
final class DirtyTracking extends InterceptingBlockDevice {

  private final DirtyBitmaps bitmaps;

  DirtyTracking(BlockDevice base, DirtyBitmaps bitmaps) {
    super(base);
    this.bitmaps = bitmaps;
  }

  @Override
  protected void beforeWrite(long offset, long length, Change kind) throws BlockIOException {
    DirtyBitmaps.Marking m = bitmaps.marking();
    if (m.idle()) {
      return;
    }
    if (m.readonly()) {
      throw new BlockIOException(BlockError.EPERM, "the node has a readonly dirty bitmap: it may not change");
    }
    if (length == 0) {
      return;
    }
    for (DirtyBitmap b : m.bits()) {
      b.set(offset, length);
    }
  }
}
