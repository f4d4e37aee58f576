package dev.blockbackup.engine;

import dev.blockbackup.formats.DirtyBitmap;

/**
 * A backup job's sync bitmap (QEMU's sync_bitmap with its bitmap_mode): blockdev-backup's checks
 * of sync, bitmap and bitmap-mode; the freeze at the job's point in time (a successor records from
 * then on, and for sync=bitmap the copy is only the bitmap's dirty clusters); and what the job's
 * end leaves in the bitmap. A job without a bitmap has one of these with no bitmap, which does
 * nothing.
 */
final class BackupBitmap {

  /** The sync mode in effect: incremental is bitmap with on-success. */
  private final MirrorSyncMode sync;
  /** The bitmap, or null. */
  private final BlockDirtyBitmap bitmap;
  /** What happens to {@link #bitmap} at the end; null without one. */
  private final BitmapSyncMode mode;

  private BackupBitmap(MirrorSyncMode sync, BlockDirtyBitmap bitmap, BitmapSyncMode mode) {
    this.sync = sync;
    this.bitmap = bitmap;
    this.mode = mode;
  }

  BlockDirtyBitmap bitmap() {
    return bitmap;
  }

  BitmapSyncMode mode() {
    return mode;
  }

  /**
   * do_backup_common's checks, in QEMU's order and with its messages: a bitmap needs a mode and a
   * sync that uses or produces it; incremental is bitmap with on-success only.
   *
   * @throws JobException for a combination QEMU refuses
   * @throws BitmapException for a busy or inconsistent bitmap
   */
  static BackupBitmap check(BlockNode node, BackupOptions options) {
    MirrorSyncMode sync = options.sync();
    BitmapSyncMode mode = options.bitmapMode();
    String name = options.bitmap();
    if ((sync == MirrorSyncMode.bitmap || sync == MirrorSyncMode.incremental) && name == null) {
      // before incremental becomes bitmap, so the message names the mode asked for
      throw new JobException("must provide a valid bitmap name for '" + sync + "' sync mode");
    }
    if (sync == MirrorSyncMode.incremental) {
      if (mode != null && mode != BitmapSyncMode.on_success) {
        throw new JobException("Bitmap sync mode must be '" + BitmapSyncMode.on_success.qapiName()
            + "' when using sync mode '" + sync + "'");
      }
      sync = MirrorSyncMode.bitmap;
      mode = BitmapSyncMode.on_success;
    }
    BlockDirtyBitmap bitmap = null;
    if (name != null) {
      bitmap = node.findBitmap(name).orElseThrow(
          () -> new JobException("Bitmap '" + name + "' could not be found"));
      if (mode == null) {
        throw new JobException("Bitmap sync mode must be given when providing a bitmap");
      }
      DirtyBitmaps.check(bitmap, DirtyBitmaps.ALLOW_RO);
      if (sync == MirrorSyncMode.none) {
        throw new JobException("sync mode '" + sync + "' does not produce meaningful bitmap outputs");
      }
      if (mode == BitmapSyncMode.never && sync != MirrorSyncMode.bitmap) {
        throw new JobException("Bitmap sync mode '" + mode.qapiName()
            + "' has no meaningful effect when combined with sync mode '" + sync + "'");
      }
    }
    if (name == null && mode != null) {
      throw new JobException("Cannot specify bitmap sync mode without a bitmap");
    }
    return new BackupBitmap(sync, bitmap, mode);
  }

  /**
   * backup_job_create's part: a bitmap the job will write must be writable; it gets its successor,
   * and for sync=bitmap the copy bitmap becomes its dirty granules rounded out to whole job
   * clusters (backup_init_bcs_bitmap). The caller holds the node drained and has not yet put the
   * filter on it, so the frozen bitmap and the point in time are the same instant.
   *
   * @return whether a bitmap was frozen (and must be {@link #unfreeze unfrozen} if creation fails)
   */
  boolean freeze(BlockNode node, BlockCopy bcs) {
    if (bitmap == null) {
      return false;
    }
    if (mode != BitmapSyncMode.never) {
      DirtyBitmaps.check(bitmap, DirtyBitmaps.DEFAULT);
    }
    node.bitmaps().createSuccessor(bitmap);
    if (sync == MirrorSyncMode.bitmap) {
      DirtyBitmap copy = bcs.copyBitmap();
      copy.clear();
      copy.mergeDirtyAreas(bitmap.bits());
    }
    return true;
  }

  /** Undoes {@link #freeze} for a job whose creation failed after it. */
  void unfreeze(BlockNode node) {
    try (BlockNode.Drained d = node.drain()) {
      node.bitmaps().reclaim(bitmap);
    }
  }

  /**
   * backup_cleanup_sync_bitmap: with on-success after a success, or always, the successor becomes
   * the bitmap; otherwise (a failure under on-success, never) it is merged back. A failure under
   * always then adds what the job had not copied, so the bitmap says what the target still lacks.
   * Drained, so no write falls between the successor's bits and the bitmap's.
   */
  void cleanup(BlockNode node, BlockCopy bcs, boolean success) {
    if (bitmap == null || !bitmap.hasSuccessor()) {
      return;
    }
    try (BlockNode.Drained d = node.drain()) {
      DirtyBitmaps bitmaps = node.bitmaps();
      boolean synced = (success || mode == BitmapSyncMode.always) && mode != BitmapSyncMode.never;
      if (synced) {
        bitmaps.abdicate(bitmap);
      } else {
        bitmaps.reclaim(bitmap);
      }
      if (!success && mode == BitmapSyncMode.always) {
        bitmap.bits().mergeDirtyAreas(bcs.copyBitmap());
      }
    }
  }
}
