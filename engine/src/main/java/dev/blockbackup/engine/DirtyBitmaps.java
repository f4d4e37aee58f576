package dev.blockbackup.engine;

import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.formats.qcow2.Qcow2Bitmap;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.util.ArrayList;
import java.util.EnumSet;
import java.util.List;
import java.util.Set;

/**
 * The dirty bitmaps of one node (QEMU's bs->dirty_bitmaps) and QEMU's rules for the
 * block-dirty-bitmap commands, with QEMU's error texts. Changes are made under this registry's
 * monitor (the node drains around those that must be one instant against writes); the write path
 * reads only {@link #marking}, a value replaced after each change, so a node without bitmaps
 * pays one volatile read per write and a node with bitmaps takes no lock of this class.
 */
final class DirtyBitmaps {

  /** BDRV_BITMAP_MAX_NAME_SIZE. */
  static final int MAX_NAME_LENGTH = 1023;

  /** What {@link #check} refuses (QEMU's BDRV_BITMAP_* flags). */
  enum Refuse {
    BUSY,
    READONLY,
    INCONSISTENT
  }

  /** BDRV_BITMAP_DEFAULT: a command that changes the bitmap. */
  static final Set<Refuse> DEFAULT = EnumSet.allOf(Refuse.class);
  /** BDRV_BITMAP_ALLOW_RO: a command that only reads the bits or changes only the state. */
  static final Set<Refuse> ALLOW_RO = EnumSet.of(Refuse.BUSY, Refuse.INCONSISTENT);

  private static final DirtyBitmap[] NONE = new DirtyBitmap[0];

  /**
   * What the write path needs, published as one immutable value so a write reads one volatile
   * field: the bits to mark (enabled bitmaps, a frozen one's successor) and whether some bitmap is
   * readonly (writes to the node are then refused, as QEMU's EPERM).
   */
  record Marking(DirtyBitmap[] bits, boolean readonly) {
    /** Nothing to do: no enabled and no readonly bitmap. */
    boolean idle() {
      return bits.length == 0 && !readonly;
    }
  }

  private static final Marking IDLE = new Marking(NONE, false);

  private final BlockNode node;
  /** Newest first, as QEMU lists them; guarded by this. */
  private final List<BlockDirtyBitmap> bitmaps = new ArrayList<>();
  /** What every write must do now; replaced, never changed, after each change of state. */
  private volatile Marking marking = IDLE;

  DirtyBitmaps(BlockNode node) {
    this.node = node;
  }

  /** What writes do now; never null. */
  Marking marking() {
    return marking;
  }

  // ---------------------------------------------------------------- lookups

  synchronized BlockDirtyBitmap find(String name) {
    for (BlockDirtyBitmap b : bitmaps) {
      if (name.equals(b.name())) {
        return b;
      }
    }
    return null;
  }

  /** block_dirty_bitmap_lookup. */
  BlockDirtyBitmap lookup(String name) {
    if (name == null) {
      throw new BitmapException("Bitmap name cannot be NULL");
    }
    BlockDirtyBitmap b = find(name);
    if (b == null) {
      throw new BitmapException("Dirty bitmap '" + name + "' not found");
    }
    return b;
  }

  synchronized List<BlockDirtyInfo> query() {
    List<BlockDirtyInfo> out = new ArrayList<>(bitmaps.size());
    for (BlockDirtyBitmap b : bitmaps) {
      out.add(b.info());
    }
    return out;
  }

  synchronized boolean isEmpty() {
    return bitmaps.isEmpty();
  }

  /** bdrv_dirty_bitmap_check: busy, then readonly, then inconsistent (with QEMU's hint). */
  static void check(BlockDirtyBitmap b, Set<Refuse> refuse) {
    if (refuse.contains(Refuse.BUSY) && b.isBusy()) {
      throw new BitmapException("Bitmap '" + b.name() + "' is currently in use by another operation and cannot be used");
    }
    if (refuse.contains(Refuse.READONLY) && b.isReadonly()) {
      throw new BitmapException("Bitmap '" + b.name() + "' is readonly and cannot be modified");
    }
    if (refuse.contains(Refuse.INCONSISTENT) && b.isInconsistent()) {
      throw new BitmapException("Bitmap '" + b.name() + "' is inconsistent and cannot be used",
          "Try block-dirty-bitmap-remove to delete this bitmap from disk");
    }
  }

  // ---------------------------------------------------------------- commands

  /**
   * block-dirty-bitmap-add. {@code granularity} 0 means "not given": QEMU's default from the
   * node's cluster size. A negative one is refused like any other bad value.
   */
  synchronized BlockDirtyBitmap add(String name, Integer granularity, boolean persistent, boolean disabled) {
    if (name == null || name.isEmpty()) {
      throw new BitmapException("Bitmap name cannot be empty");
    }
    int g;
    if (granularity != null) {
      if (granularity < DirtyBitmap.MIN_GRANULARITY || Integer.bitCount(granularity) != 1) {
        throw new BitmapException("Granularity must be power of 2 and at least 512");
      }
      g = granularity;
    } else {
      g = defaultGranularity(clusterSize(node.base()));
    }
    if (persistent) {
      canStoreNewBitmap();
    }
    BlockDirtyBitmap b = create(name, g);
    if (persistent) {
      // the image's own bits, which it stores at close and marks while enabled
      try {
        b.setBits(store().addBitmap(name, g, !disabled).bitmap());
      } catch (BlockIOException e) {
        throw new BitmapException("Can't store persistent bitmaps to " + node.name() + ": " + e.getMessage());
      }
    }
    b.setDisabled(disabled);
    b.setPersistent(persistent);
    published();
    return b;
  }

  /** The qcow2 image below the node, which stores its persistent bitmaps; null for other devices. */
  private Qcow2Image store() {
    return node.base() instanceof Qcow2Image q ? q : null;
  }

  /**
   * Attaches the image's stored bitmaps (at the node's creation): they share the image's bits and
   * enabled state, so what the node does to them is what the image stores at close.
   */
  synchronized void attachStoredBitmaps() {
    Qcow2Image q = store();
    if (q == null) {
      return;
    }
    for (Qcow2Bitmap stored : q.bitmaps()) {
      attachStored(stored.name(), stored.bitmap(), stored.enabled(), stored.inconsistent(), q.isReadOnly());
    }
  }

  /**
   * The cluster size bdrv_get_info would report: qcow2's; 0 for devices without clusters (raw,
   * whose alignment is only its sector size, and filters).
   */
  private static int clusterSize(dev.blockbackup.formats.BlockDevice base) {
    return base instanceof dev.blockbackup.formats.qcow2.Qcow2Image q ? q.alignment() : 0;
  }

  /**
   * bdrv_get_default_bitmap_granularity: the cluster size clamped to [4 KiB, 64 KiB], 64 KiB when
   * the device has none.
   */
  static int defaultGranularity(int clusterSize) {
    if (clusterSize <= 0) {
      return 65536;
    }
    return Math.min(65536, Math.max(4096, clusterSize));
  }

  /**
   * bdrv_can_store_new_dirty_bitmap: a qcow2 base stores them (it refuses what it cannot, v2 or
   * read-only, when the bitmap is added); any other device gives QEMU's answer for a driver
   * without the callback (ENOTSUP).
   */
  private void canStoreNewBitmap() {
    if (store() == null) {
      throw new BitmapException("Can't store persistent bitmaps to " + node.name() + ": Operation not supported");
    }
  }

  /** bdrv_create_dirty_bitmap: a named one (unique, at most 1023 bytes) or an anonymous one. */
  private BlockDirtyBitmap create(String name, int granularity) {
    if (name != null) {
      if (find(name) != null) {
        throw new BitmapException("Bitmap already exists: " + name);
      }
      if (name.length() > MAX_NAME_LENGTH) {
        throw new BitmapException("Bitmap name too long: " + name);
      }
    }
    DirtyBitmap bits;
    try {
      bits = new DirtyBitmap(node.size(), granularity);
    } catch (IllegalArgumentException e) {
      throw new BitmapException(e.getMessage());
    }
    BlockDirtyBitmap b = new BlockDirtyBitmap(name, bits, false);
    bitmaps.add(0, b);
    return b;
  }

  /**
   * A stored bitmap handed in by the node's format (qcow2's bitmap directory at open): persistent,
   * enabled unless stored disabled, inconsistent when stored with its in-use flag (and then
   * disabled, as QEMU's bdrv_dirty_bitmap_set_inconsistent), readonly on a read-only image.
   */
  synchronized BlockDirtyBitmap attachStored(String name, DirtyBitmap bits, boolean enabled, boolean inconsistent,
      boolean readonly) {
    if (bits.size() != node.size()) {
      throw new BitmapException("Bitmap '" + name + "' covers " + bits.size() + " bytes, the node has " + node.size());
    }
    BlockDirtyBitmap b = create(name, bits.granularity());
    b.setBits(bits);
    b.setPersistent(true);
    b.setDisabled(!enabled || inconsistent);
    b.setInconsistent(inconsistent);
    b.setReadonly(readonly);
    published();
    return b;
  }

  /** block-dirty-bitmap-remove: an inconsistent bitmap may go, a busy or readonly one may not. */
  synchronized void remove(String name) {
    BlockDirtyBitmap b = lookup(name);
    check(b, EnumSet.of(Refuse.BUSY, Refuse.READONLY));
    if (b.isPersistent() && store() != null) {
      try {
        store().removeBitmap(name);
      } catch (BlockIOException e) {
        throw new BitmapException("Failed to remove bitmap '" + name + "' from its image: " + e.getMessage());
      }
    }
    bitmaps.remove(b);
    published();
  }

  /** block-dirty-bitmap-clear. */
  synchronized void clear(String name) {
    BlockDirtyBitmap b = lookup(name);
    check(b, DEFAULT);
    b.bits().clear();
  }

  /** block-dirty-bitmap-enable / -disable. */
  synchronized void setEnabled(String name, boolean enabled) {
    BlockDirtyBitmap b = lookup(name);
    check(b, ALLOW_RO);
    if (b.isPersistent() && store() != null) {
      try {
        store().setBitmapEnabled(name, enabled); // the auto flag it stores, and its own marking
      } catch (BlockIOException e) {
        throw new BitmapException(e.getMessage());
      }
    }
    b.setDisabled(!enabled);
    published();
  }

  /**
   * block-dirty-bitmap-merge: every source is checked and collected first (an anonymous bitmap at
   * the target's granularity), then the target; so a refused merge changes nothing. Sources may
   * have another granularity (their dirty areas are set, as QEMU's sparse merge does) but must
   * cover the same size.
   */
  void merge(String target, List<BlockDirtyBitmapMergeSource> sources) {
    BlockDirtyBitmap dst = lookup(target);
    DirtyBitmap anon = new DirtyBitmap(dst.size(), dst.granularity());
    for (BlockDirtyBitmapMergeSource s : sources) {
      DirtyBitmaps where = s.node() == null ? this : s.node().bitmaps();
      BlockDirtyBitmap src = s.node() == null ? where.find(s.name()) : where.lookup(s.name());
      if (src == null) {
        throw new BitmapException("Dirty bitmap '" + s.name() + "' not found");
      }
      synchronized (where) {
        check(src, ALLOW_RO);
        checkSameSize(anon.size(), src.size());
        anon.mergeDirtyAreas(src.bits());
      }
    }
    synchronized (this) {
      check(dst, DEFAULT);
      dst.bits().mergeDirtyAreas(anon);
    }
  }

  private static void checkSameSize(long dst, long src) {
    if (dst != src) {
      throw new BitmapException("Bitmaps are of different sizes (destination size is " + dst
          + ", source size is " + src + ") and can't be merged");
    }
  }



  // ---------------------------------------------------------------- successors (jobs)

  /**
   * bdrv_dirty_bitmap_create_successor: the bitmap stops recording and is busy; an anonymous
   * successor, enabled if the bitmap was, records from now on.
   */
  synchronized BlockDirtyBitmap createSuccessor(BlockDirtyBitmap parent) {
    check(parent, EnumSet.of(Refuse.BUSY));
    if (parent.hasSuccessor()) {
      throw new BitmapException("Cannot create a successor for a bitmap that already has one");
    }
    BlockDirtyBitmap child = create(null, parent.granularity());
    child.setDisabled(!parent.isEnabled());
    parent.setDisabled(true);
    parent.setSuccessor(child);
    parent.setBusy(true);
    published();
    return child;
  }

  /**
   * bdrv_dirty_bitmap_abdicate: the successor becomes the bitmap (its bits and its recording),
   * the old bits are dropped. The handle stays the same object, so holders of it see the result.
   */
  synchronized void abdicate(BlockDirtyBitmap parent) {
    BlockDirtyBitmap child = parent.successor();
    if (child == null) {
      throw new IllegalStateException("Cannot relinquish control if there's no successor present");
    }
    parent.setBits(child.bits());
    parent.setDisabled(!child.isEnabled());
    release(parent, child);
  }

  /** bdrv_reclaim_dirty_bitmap: the successor's bits are merged back, its recording taken over. */
  synchronized void reclaim(BlockDirtyBitmap parent) {
    BlockDirtyBitmap child = parent.successor();
    if (child == null) {
      throw new IllegalStateException("Cannot reclaim a successor when none is present");
    }
    parent.bits().merge(child.bits());
    parent.setDisabled(!child.isEnabled());
    release(parent, child);
  }

  private void release(BlockDirtyBitmap parent, BlockDirtyBitmap child) {
    parent.setSuccessor(null);
    parent.setBusy(false);
    bitmaps.remove(child);
    published();
  }

  /** bdrv_dirty_bitmap_set_busy, for an export or a job that reads a bitmap without freezing it. */
  synchronized void setBusy(BlockDirtyBitmap b, boolean busy) {
    b.setBusy(busy);
  }

  /** Rebuilds what the write path reads; called under this monitor after every change of state. */
  private void published() {
    List<DirtyBitmap> on = new ArrayList<>();
    boolean ro = false;
    boolean imageMarks = store() != null;
    for (BlockDirtyBitmap b : bitmaps) {
      // a persistent bitmap's bits are its image's, which the image marks on every write itself
      if (b.isEnabled() && !(imageMarks && b.isPersistent())) {
        on.add(b.bits());
      }
      ro |= b.isReadonly();
    }
    marking = on.isEmpty() && !ro ? IDLE : new Marking(on.toArray(NONE), ro);
  }
}
