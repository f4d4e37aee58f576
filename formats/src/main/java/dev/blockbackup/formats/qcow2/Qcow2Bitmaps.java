package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.DirtyBitmap;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;

/**
 * The persistent dirty bitmaps of one image, kept as QEMU keeps them: loaded at open (a bitmap
 * found {@code in_use} loads inconsistent), marked {@code in_use} on disk before the first write of
 * a read-write open, marked by every write, and stored on close. The autoclear bit 0 says the
 * extension is valid; an image whose bit is clear was written by a program that knows no bitmaps,
 * and its extension is ignored, as QEMU ignores it. What is on disk, and the order in which it
 * changes, is {@link Qcow2BitmapList}'s.
 *
 * <p>Changes happen under the metadata lock; {@link #mark} needs none.
 */
final class Qcow2Bitmaps {

  private final Qcow2Metadata md;
  private final String where;
  private final int clusterSize;
  private final boolean readOnly;
  /** Every bitmap, in directory order (new ones last); read without a lock by {@link #mark}. */
  private final CopyOnWriteArrayList<Qcow2Bitmap> bitmaps = new CopyOnWriteArrayList<>();
  /** The directory on disk. */
  private final Qcow2BitmapList onDisk;

  private Qcow2Bitmaps(Qcow2Metadata md, boolean readOnly) {
    this.md = md;
    this.where = md.where;
    this.clusterSize = md.clusterSize;
    this.readOnly = readOnly;
    this.onDisk = new Qcow2BitmapList(md);
  }

  /**
   * Reads the bitmaps extension of {@code c0} (cluster 0), the directory, tables and data, checking
   * everything as QEMU does at open. Writes nothing.
   */
  static Qcow2Bitmaps load(Qcow2Metadata md, ByteBuffer c0, boolean readOnly) throws IOException {
    Qcow2Bitmaps b = new Qcow2Bitmaps(md, readOnly);
    b.bitmaps.addAll(b.onDisk.load(c0));
    return b;
  }

  /** What a {@link RefcountRebuild} must count: every bitmap cluster, as qemu-img check counts them. */
  interface Ranges {
    void range(long offset, long length) throws IOException;
  }

  /** Calls {@code r} for the directory, each table and each data cluster on disk. */
  void forEachRange(Ranges r) throws IOException {
    onDisk.forEachRange(r);
  }

  /** The read-write open, before the first guest write: see {@link Qcow2BitmapList#openReadWrite}. */
  void openReadWrite() throws IOException {
    onDisk.openReadWrite();
  }

  /** Records a write (or an attempted one) of guest bytes in every enabled, consistent bitmap. */
  void mark(long offset, long length) {
    for (Qcow2Bitmap b : bitmaps) {
      b.mark(offset, length);
    }
  }

  List<Qcow2Bitmap> list() {
    return List.copyOf(bitmaps);
  }

  Qcow2Bitmap find(String name) {
    for (Qcow2Bitmap b : bitmaps) {
      if (b.name().equals(name)) {
        return b;
      }
    }
    return null;
  }

  /** A new bitmap, stored on close; refused as QEMU's block-dirty-bitmap-add refuses a persistent one. */
  Qcow2Bitmap add(String name, int granularity, boolean enabled) throws BlockIOException {
    checkWritable();
    if (md.version < 3) {
      throw new BlockIOException(BlockError.ENOTSUP, where + ": cannot store dirty bitmaps in qcow2 v2 files");
    }
    if (name == null || name.isEmpty()) {
      throw new BlockIOException(BlockError.EINVAL, "a bitmap name cannot be empty");
    }
    int nameBytes = name.getBytes(StandardCharsets.UTF_8).length;
    if (nameBytes > BitmapDirectory.MAX_NAME_SIZE) {
      throw new BlockIOException(BlockError.EINVAL, "bitmap name of " + nameBytes + " bytes is longer than "
          + BitmapDirectory.MAX_NAME_SIZE);
    }
    if (granularity < (1 << BitmapDirectory.MIN_GRANULARITY_BITS) || Integer.bitCount(granularity) != 1) {
      throw new BlockIOException(BlockError.EINVAL, "granularity " + granularity
          + " must be a power of two of at least 512");
    }
    int bits = Integer.numberOfTrailingZeros(granularity);
    if (md.size == 0) {
      throw new BlockIOException(BlockError.EINVAL, where + ": an image of 0 bytes cannot hold a bitmap (a bitmap"
          + " table has at least one entry)");
    }
    long bytes = Qcow2Header.ceilDiv(Qcow2Header.ceilDiv(md.size, granularity), 8);
    if (bytes > BitmapDirectory.MAX_PHYS_SIZE || bytes > BitmapDirectory.MAX_TABLE_SIZE * clusterSize) {
      throw new BlockIOException(BlockError.EINVAL, "bitmap '" + name + "' at granularity " + granularity + " needs "
          + bytes + " bytes, above QEMU's limit of " + BitmapDirectory.MAX_PHYS_SIZE + "; use a larger granularity");
    }
    md.lock.lock();
    try {
      if (find(name) != null) {
        throw new BlockIOException(BlockError.EINVAL, "bitmap '" + name + "' already exists in " + where);
      }
      if (bitmaps.size() + 1 > BitmapDirectory.MAX_BITMAPS) {
        throw new BlockIOException(BlockError.EINVAL, where + ": too many persistent bitmaps (at most "
            + BitmapDirectory.MAX_BITMAPS + ")");
      }
      long size = BitmapDirectory.entrySize(nameBytes);
      for (Qcow2Bitmap b : bitmaps) {
        size += BitmapDirectory.entrySize(b.name().getBytes(StandardCharsets.UTF_8).length);
      }
      if (size > BitmapDirectory.MAX_DIRECTORY_SIZE) {
        throw new BlockIOException(BlockError.EINVAL, where + ": the bitmap directory would be " + size
            + " bytes, above QEMU's limit of " + BitmapDirectory.MAX_DIRECTORY_SIZE);
      }
      Qcow2Bitmap b = new Qcow2Bitmap(name, new DirtyBitmap(md.size, 1 << bits), enabled, false);
      bitmaps.add(b);
      return b;
    } finally {
      md.lock.unlock();
    }
  }

  /** Removes {@code name} at once from the image, as QEMU's block-dirty-bitmap-remove of a persistent bitmap. */
  void remove(String name) throws IOException {
    checkWritable();
    md.lock.lock();
    try {
      Qcow2Bitmap b = find(name);
      if (b == null) {
        throw new BlockIOException(BlockError.EINVAL, "no bitmap '" + name + "' in " + where);
      }
      onDisk.remove(name);
      bitmaps.remove(b);
    } finally {
      md.lock.unlock();
    }
  }

  void setEnabled(String name, boolean enabled) throws BlockIOException {
    checkWritable();
    Qcow2Bitmap b = find(name);
    if (b == null) {
      throw new BlockIOException(BlockError.EINVAL, "no bitmap '" + name + "' in " + where);
    }
    if (b.inconsistent() && enabled) {
      throw new BlockIOException(BlockError.EINVAL, "bitmap '" + name + "' is inconsistent and cannot be enabled;"
          + " remove it");
    }
    b.setEnabled(enabled);
  }

  private void checkWritable() throws BlockIOException {
    if (readOnly) {
      throw new BlockIOException(BlockError.EPERM, where + " is open read-only");
    }
  }

  /**
   * Stores every consistent bitmap (close), as {@link Qcow2BitmapList#store} does. Nothing is written when there is no consistent bitmap, as in QEMU, nor once the image
   * is marked corrupt (its bitmaps stay in use, so they load inconsistent).
   */
  void store() throws IOException {
    if (readOnly || md.file.isCorrupt()) {
      return;
    }
    md.lock.lock();
    try {
      boolean need = false;
      for (Qcow2Bitmap b : bitmaps) {
        need |= !b.inconsistent();
      }
      if (!need) {
        return;
      }
      onDisk.store(bitmaps);
    } finally {
      md.lock.unlock();
    }
  }
}
