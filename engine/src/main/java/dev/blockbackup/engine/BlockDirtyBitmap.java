package dev.blockbackup.engine;

import dev.blockbackup.formats.DirtyBitmap;

/**
 * A dirty bitmap of a {@link BlockNode} (QEMU's BdrvDirtyBitmap): its granule bits, and the state
 * that decides who may use it. An enabled bitmap records every write to its node; a disabled one
 * keeps its bits. A job that uses the bitmap freezes it: the bitmap gets an anonymous successor
 * that records from then on, the bitmap itself stops recording and is busy, and at the job's end
 * the successor either replaces it (abdicate) or is merged back into it (reclaim).
 *
 * <p>Busy (in use by a job or an export), readonly (loaded from an image opened read-only) and
 * inconsistent (a stored bitmap whose image was not closed cleanly) refuse the commands QEMU
 * refuses. The state is changed only by the node's registry under its lock; reads here are plain
 * volatile reads, so a query never waits for a change.
 */
public final class BlockDirtyBitmap {

  /** The name, unique on its node; null for a successor. */
  private final String name;
  /** The bits; replaced by the successor's when the successor abdicates. */
  private volatile DirtyBitmap bits;
  /** Disabled bitmaps ignore writes (a frozen parent is disabled, its successor takes over). */
  private volatile boolean disabled;
  /** Stored in the image when the node closes (qcow2's bitmaps extension). */
  private volatile boolean persistent;
  /** In use by an operation (a job, an export): refused to the bitmap commands. */
  private volatile boolean busy;
  /** Stored with its in-use flag set: unusable except for removal. */
  private volatile boolean inconsistent;
  /** Loaded from a read-only image: it may not change, and it blocks writes to its node. */
  private volatile boolean readonly;
  /** The anonymous successor while frozen, else null. */
  private volatile BlockDirtyBitmap successor;

  BlockDirtyBitmap(String name, DirtyBitmap bits, boolean disabled) {
    this.name = name;
    this.bits = bits;
    this.disabled = disabled;
  }

  /** The name, or null for a job's anonymous successor. */
  public String name() {
    return name;
  }

  /** Bytes per bit. */
  public int granularity() {
    return bits.granularity();
  }

  /** The size in bytes of the disk covered. */
  public long size() {
    return bits.size();
  }

  /** Dirty bytes as QEMU counts them: dirty granules times the granularity. */
  public long count() {
    DirtyBitmap b = bits;
    long bytes = b.count(); // clipped at the disk's end; QEMU counts the last granule whole
    long tail = b.size() % b.granularity();
    if (tail != 0 && b.isDirty(b.size() - 1)) {
      bytes += b.granularity() - tail;
    }
    return bytes;
  }

  /** Whether the granule holding {@code offset} is dirty. */
  public boolean isDirty(long offset) {
    return bits.isDirty(offset);
  }

  /**
   * The first run of dirty bytes in [offset, end), or null when there is none (an NBD export's
   * qemu:dirty-bitmap context reads the bitmap this way while it may still record).
   */
  public DirtyBitmap.Area nextDirtyArea(long offset, long end) {
    return bits.nextDirtyArea(offset, end, end - offset);
  }

  /** A copy of the bits as they are now (to store them, to compare them). */
  public DirtyBitmap copyOfBits() {
    return bits.copy();
  }

  /** Enabled: it records writes itself (not through a successor). */
  public boolean isEnabled() {
    return !disabled;
  }

  /** QEMU's recording: it, or its successor while frozen, records writes. */
  public boolean isRecording() {
    BlockDirtyBitmap s = successor;
    return !disabled || s != null && !s.disabled;
  }

  public boolean isBusy() {
    return busy;
  }

  public boolean isPersistent() {
    return persistent;
  }

  public boolean isInconsistent() {
    return inconsistent;
  }

  public boolean isReadonly() {
    return readonly;
  }

  /** Frozen: a job holds it and its successor records. */
  public boolean hasSuccessor() {
    return successor != null;
  }

  BlockDirtyInfo info() {
    return new BlockDirtyInfo(name, count(), granularity(), isRecording(), busy, persistent, inconsistent);
  }

  @Override
  public String toString() {
    return "BlockDirtyBitmap[" + (name != null ? name : "(anonymous)") + ", granularity=" + granularity()
        + ", count=" + count() + (disabled ? ", disabled" : "") + (busy ? ", busy" : "") + "]";
  }

  // ---------------------------------------------------------------- state (the registry only)

  DirtyBitmap bits() {
    return bits;
  }

  /**
   * Takes {@code newBits} as this bitmap's bits. A persistent bitmap keeps its own instance, which
   * its image stores and marks: the new bits are copied into it instead.
   */
  void setBits(DirtyBitmap newBits) {
    if (persistent && bits != null && bits != newBits) {
      bits.clear();
      bits.mergeDirtyAreas(newBits);
    } else {
      bits = newBits;
    }
  }

  void setDisabled(boolean value) {
    disabled = value;
  }

  void setPersistent(boolean value) {
    persistent = value;
  }

  void setBusy(boolean value) {
    busy = value;
  }

  void setInconsistent(boolean value) {
    inconsistent = value;
  }

  void setReadonly(boolean value) {
    readonly = value;
  }

  BlockDirtyBitmap successor() {
    return successor;
  }

  void setSuccessor(BlockDirtyBitmap value) {
    successor = value;
  }
}
