package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.DirtyBitmap;

/**
 * A persistent dirty bitmap of a qcow2 image, as QEMU keeps it in the image's bitmap directory: a
 * name, a granularity, whether it records writes ({@code enabled}, stored as the {@code auto}
 * flag) and its bits. The {@link DirtyBitmap} instance and the enabled flag are the live state:
 * the image marks every write in each enabled, consistent bitmap, and stores the bits back when it
 * is closed; whoever holds this object (a block node, a backup job) may read, set, reset, clear or
 * merge the bits directly, and they are what is stored.
 *
 * <p>An <em>inconsistent</em> bitmap is one found with the {@code in_use} flag at open: the writer
 * that held it did not close the image cleanly, so its bits cannot be trusted. As in QEMU it keeps
 * its name and granularity, its bits are not loaded (they read as clean and mean nothing), it
 * records no writes, cannot be enabled, stays {@code in_use} on disk, and can only be removed.
 */
public final class Qcow2Bitmap {

  private final String name;
  private final DirtyBitmap bitmap;
  private final boolean inconsistent;
  /** Whether writes are recorded (the auto flag); changed through {@link Qcow2Image#setBitmapEnabled}. */
  private volatile boolean enabled;

  Qcow2Bitmap(String name, DirtyBitmap bitmap, boolean enabled, boolean inconsistent) {
    this.name = name;
    this.bitmap = bitmap;
    this.enabled = enabled && !inconsistent;
    this.inconsistent = inconsistent;
  }

  /** The bitmap's name, unique in its image. */
  public String name() {
    return name;
  }

  /** Bytes covered by one bit. */
  public int granularity() {
    return bitmap.granularity();
  }

  /** Whether the image marks its writes in this bitmap (QEMU's {@code recording}; the auto flag on disk). */
  public boolean enabled() {
    return enabled;
  }

  /** Whether it was found in use at open (not stored cleanly): its bits are not to be trusted. */
  public boolean inconsistent() {
    return inconsistent;
  }

  /** The bits, shared and live: what the image marks and what it stores on close. */
  public DirtyBitmap bitmap() {
    return bitmap;
  }

  void setEnabled(boolean on) {
    enabled = on;
  }

  /** Records a write of {@code [offset, offset + length)} when enabled (and hence consistent). */
  void mark(long offset, long length) {
    if (enabled) {
      long end = Math.min(bitmap.size(), offset + length);
      if (end > offset) {
        bitmap.set(offset, end - offset);
      }
    }
  }

  @Override
  public String toString() {
    return "Qcow2Bitmap[" + name + ", granularity=" + granularity() + (enabled ? ", enabled" : ", disabled")
        + (inconsistent ? ", inconsistent" : "") + "]";
  }
}
