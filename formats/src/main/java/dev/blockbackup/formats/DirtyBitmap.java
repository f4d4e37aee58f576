package dev.blockbackup.formats;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.concurrent.atomic.AtomicLong;

/**
 * One bit per granule of a disk, set when any byte of the granule is dirty, as QEMU's
 * BdrvDirtyBitmap (a backup job's copy bitmap is one). The bits live in pages of {@value
 * #PAGE_BITS} granules that exist only where the bitmap is mixed: a page that is all clean is no
 * array at all and a page that is all dirty is one shared marker, so an empty or a full bitmap of a
 * multi-PiB disk costs a few bytes per page rather than one bit per granule. Above the pages two
 * summary bit sets (page holds a dirty bit, page holds a clean bit) let searches skip whole clean or
 * whole dirty pages at once, the role of the upper levels of QEMU's hbitmap. It serializes to
 * qcow2's persistent layout (bit i covers bytes [i·granularity, (i+1)·granularity) and sits in
 * byte i/8 at bit i%8, least significant first).
 *
 * <p>This class maps bytes to granules and checks ranges and geometry; the pages are a
 * package-private {@link HBitmap} that works in granule indices only. {@link #heapBytes()} reports
 * what those pages hold.
 *
 * <p><b>Thread safety.</b> Every method may be called from any number of threads at once (guest
 * writes on several threads mark the same bitmap while a job resets and searches it). Each call is
 * atomic: it holds the bitmap's monitor for its whole duration, so a {@code set} is never lost, a
 * {@code count} or {@code next*} sees the bitmap between two calls and never half of one, and
 * {@link #merge} takes both bitmaps' monitors in one global order so two crossed merges cannot
 * deadlock. A result is of course only a snapshot: another thread may change the bits right after.
 * The one exception to the monitor is a {@code set} whose granules are already all dirty (the common
 * case of a guest write to a busy disk): it reads them without the monitor and returns, linearized
 * at that read, so it is as atomic as the locked path and a reset that follows it is never undone.
 */
public final class DirtyBitmap {

  /** The smallest granularity QEMU accepts (block-dirty-bitmap-add, qcow2 granularity_bits 9). */
  public static final int MIN_GRANULARITY = 512;

  /**
   * The most granules: 2^38, so the page directory stays at most 4 Mi entries (16 MiB), whatever
   * the bitmap holds. That covers 2 PiB (qcow2's largest image with 64 KiB clusters) down to 8 KiB
   * granules, and 128 TiB at 512 bytes.
   */
  public static final long MAX_GRANULES = 1L << 38;

  /** The most granules {@link #toBytes()} can hold: its bytes must fit in one Java array (just under 2 GiB). */
  public static final long MAX_SERIALIZED_GRANULES = 8L * (Integer.MAX_VALUE - 8);

  /** Granules per page: 2^16, one 8 KiB array of 1024 words once the page is mixed. */
  static final int PAGE_BITS = HBitmap.PAGE_BITS;

  /** One run of dirty bytes, as QEMU's bdrv_dirty_bitmap_next_dirty_area reports it. */
  public record Area(long offset, long length) {
    public long end() {
      return offset + length;
    }
  }

  /** Gives each bitmap a rank so merge can take two locks in one global order. */
  private static final AtomicLong RANKS = new AtomicLong();

  /** Size in bytes of the disk covered. */
  private final long size;
  /** Bytes per bit, a power of two. */
  private final int granularity;
  /** log2(granularity). */
  private final int shift;
  /** Number of granules (bits), ceil(size / granularity). */
  private final long bits;
  /** The granule bits; guarded by {@link #lock}. */
  private final HBitmap bitmap;
  /** Lock order for merge. */
  private final long rank = RANKS.incrementAndGet();
  /**
   * One plain monitor rather than a ReadWriteLock or lock-free words: every call holds it for a
   * short time (a single word, or a scan of at most a few MiB), an uncontended monitor costs about
   * a CAS, and it keeps the page collapse (mixed to null or FULL), the per-page counts and the
   * summaries consistent with the words, which per-word atomics alone would not.
   */
  private final Object lock = new Object();

  /**
   * @param size bytes of the disk covered, at least 0
   * @param granularity bytes per bit, a power of two of at least 512
   * @throws IllegalArgumentException for a bad granularity, or more than {@link #MAX_GRANULES} granules
   */
  public DirtyBitmap(long size, int granularity) {
    checkGeometry(size, granularity);
    this.size = size;
    this.granularity = granularity;
    this.shift = Integer.numberOfTrailingZeros(granularity);
    this.bits = granules(size, granularity);
    this.bitmap = new HBitmap(bits);
  }

  /**
   * Checks that a bitmap of {@code size} bytes at {@code granularity} can be made, so that a caller
   * (a job) can refuse a disk up front, before it starts any work.
   *
   * @throws IllegalArgumentException naming the size, the granules and the limit
   */
  public static void checkGeometry(long size, int granularity) {
    if (granularity < MIN_GRANULARITY || Integer.bitCount(granularity) != 1) {
      throw new IllegalArgumentException(
          "granularity (" + granularity + ") must be a power of two of at least " + MIN_GRANULARITY);
    }
    if (size < 0) {
      throw new IllegalArgumentException("size (" + size + ") must not be negative");
    }
    long granules = granules(size, granularity);
    if (granules > MAX_GRANULES) {
      throw new IllegalArgumentException(
          "size (" + size + ") at granularity " + granularity + " gives " + granules
              + " granules, more than the limit " + MAX_GRANULES + " (" + (MAX_GRANULES * granularity)
              + " bytes at this granularity)");
    }
  }

  private static long granules(long size, int granularity) {
    int s = Integer.numberOfTrailingZeros(granularity);
    return (size >>> s) + ((size & (granularity - 1)) != 0 ? 1 : 0);
  }

  /** Size in bytes of the disk the bitmap covers. */
  public long size() {
    return size;
  }

  /** Bytes covered by one bit. */
  public int granularity() {
    return granularity;
  }

  // ---- byte-range API (bdrv_set_dirty_bitmap, bdrv_reset_dirty_bitmap, bdrv_dirty_bitmap_get) ----

  /** Marks dirty every granule that [offset, offset+length) touches (rounds outward, as QEMU). */
  public void set(long offset, long length) {
    checkRange(offset, length);
    if (length == 0) {
      return;
    }
    long first = offset >>> shift;
    long last = (offset + length - 1) >>> shift;
    if (bitmap.isSetLockFree(first, last + 1)) {
      return; // already dirty: nothing to change, so no monitor (see the class comment)
    }
    synchronized (lock) {
      bitmap.set(first, last + 1);
    }
  }

  /**
   * Marks clean the granules of [offset, offset+length). As QEMU's hbitmap_reset, the range must
   * be granule-aligned, except that it may end at {@link #size()} inside the last granule. We
   * refuse unaligned ranges rather than round outward: rounding outward would mark clean bytes that
   * were never copied, and for a copy bitmap that is silent data loss; rounding inward would hide a
   * caller's bug.
   *
   * @throws IllegalArgumentException when the range is out of bounds or not aligned
   */
  public void reset(long offset, long length) {
    checkRange(offset, length);
    if (length == 0) {
      return; // as hbitmap_reset, which returns before its alignment asserts
    }
    long mask = granularity - 1;
    if ((offset & mask) != 0 || ((length & mask) != 0 && offset + length != size)) {
      throw new IllegalArgumentException(
          "reset range [" + offset + ", +" + length + ") must be aligned to the granularity "
              + granularity + " (or end at the size " + size + ")");
    }
    long first = offset >>> shift;
    long end = ((offset + length - 1) >>> shift) + 1;
    synchronized (lock) {
      bitmap.reset(first, end);
    }
  }

  /** Whether the granule holding byte {@code offset} is dirty. */
  public boolean isDirty(long offset) {
    if (offset < 0 || offset >= size) {
      throw new IllegalArgumentException("offset (" + offset + ") must be in [0, " + size + ")");
    }
    long bit = offset >>> shift;
    synchronized (lock) {
      return bitmap.get(bit);
    }
  }

  /**
   * Dirty bytes: dirty granules times the granularity, the last granule counted only up to
   * {@link #size()}. (QEMU's query-block count does not clip the last granule; we do, so a full
   * bitmap counts exactly {@code size} bytes.)
   */
  public long count() {
    synchronized (lock) {
      long bytes = bitmap.count() << shift;
      if (bits > 0 && bitmap.get(bits - 1)) {
        bytes -= (bits << shift) - size;
      }
      return bytes;
    }
  }

  /** Bytes of [offset, offset+length) that lie in dirty granules. */
  public long count(long offset, long length) {
    checkRange(offset, length);
    if (length == 0) {
      return 0;
    }
    long end = offset + length;
    long first = offset >>> shift;
    long last = (end - 1) >>> shift;
    synchronized (lock) {
      long bytes = bitmap.count(first, last + 1) << shift;
      if (bitmap.get(first)) {
        bytes -= offset - (first << shift);
      }
      if (bitmap.get(last)) {
        bytes -= ((last + 1) << shift) - end;
      }
      return bytes;
    }
  }

  /** Marks every granule clean (block-dirty-bitmap-clear). */
  public void clear() {
    synchronized (lock) {
      bitmap.clear();
    }
  }

  /** Marks every granule dirty (what sync=full starts its copy bitmap with). */
  public void setAll() {
    synchronized (lock) {
      bitmap.setAll();
    }
  }

  // ---- search (hbitmap_next_dirty, hbitmap_next_zero, hbitmap_next_dirty_area) ----

  /**
   * The first dirty byte in [offset, min(end, size)), or -1: the start of the first dirty granule,
   * or {@code offset} itself when its own granule is dirty (as QEMU's hbitmap_next_dirty).
   */
  public long nextDirty(long offset, long end) {
    checkOffset(offset);
    long limit = Math.min(end, size);
    if (offset >= limit) {
      return -1;
    }
    synchronized (lock) {
      long bit = bitmap.nextSet(offset >>> shift, granulesTouching(limit));
      return bit < 0 ? -1 : Math.max(bit << shift, offset);
    }
  }

  /**
   * The first clean byte in [offset, min(end, size)), or -1 (as QEMU's hbitmap_next_zero). Clean
   * stretches are found word by word, not through the summary levels, as in QEMU: the levels only
   * record where dirty bits are.
   */
  public long nextClean(long offset, long end) {
    checkOffset(offset);
    long limit = Math.min(end, size);
    if (offset >= limit) {
      return -1;
    }
    synchronized (lock) {
      long bit = bitmap.nextClear(offset >>> shift, granulesTouching(limit));
      return bit < 0 ? -1 : Math.max(bit << shift, offset);
    }
  }

  /**
   * The first run of dirty bytes in [offset, min(end, size)), at most {@code maxLength} long, or
   * null when there is none (QEMU's bdrv_dirty_bitmap_next_dirty_area).
   */
  public Area nextDirtyArea(long offset, long end, long maxLength) {
    checkOffset(offset);
    if (maxLength <= 0) {
      throw new IllegalArgumentException("maxLength (" + maxLength + ") must be positive");
    }
    long limit = Math.min(end, size);
    if (offset >= limit) {
      return null;
    }
    synchronized (lock) {
      long bit = bitmap.nextSet(offset >>> shift, granulesTouching(limit));
      if (bit < 0) {
        return null;
      }
      long start = Math.max(bit << shift, offset);
      long areaEnd = start + Math.min(maxLength, limit - start);
      long clean = bitmap.nextClear(bit, granulesTouching(areaEnd));
      long stop = clean < 0 ? areaEnd : Math.min(clean << shift, areaEnd);
      return new Area(start, stop - start);
    }
  }

  private long granulesTouching(long byteEnd) {
    return (byteEnd >>> shift) + ((byteEnd & (granularity - 1)) != 0 ? 1 : 0);
  }

  // ---- bulk ----

  /**
   * Sets every bit that is set in {@code other} (block-dirty-bitmap-merge). Unlike QEMU we require
   * equal granularities too, so the merge is a plain word-wise OR.
   */
  public void merge(DirtyBitmap other) {
    if (other.size != size || other.granularity != granularity) {
      throw new IllegalArgumentException(
          "cannot merge a bitmap of size " + other.size + " at granularity " + other.granularity
              + " into one of size " + size + " at granularity " + granularity);
    }
    if (other == this) {
      return;
    }
    Object firstLock = rank < other.rank ? lock : other.lock;
    Object secondLock = rank < other.rank ? other.lock : lock;
    synchronized (firstLock) {
      synchronized (secondLock) {
        bitmap.merge(other.bitmap);
      }
    }
  }

  /**
   * Sets every byte range that is dirty in {@code other}, whose granularity may differ (QEMU's
   * block-dirty-bitmap-merge): a word-wise {@link #merge} when the granularities match, else area
   * by area, each rounded out to this bitmap's granules. Both must cover the same size.
   */
  public void mergeDirtyAreas(DirtyBitmap other) {
    if (other.size != size) {
      throw new IllegalArgumentException("cannot merge a bitmap of size " + other.size + " into one of size " + size);
    }
    if (other.granularity == granularity) {
      merge(other);
      return;
    }
    for (long pos = 0; pos < size; ) {
      Area a = other.nextDirtyArea(pos, size, Long.MAX_VALUE);
      if (a == null) {
        return;
      }
      set(a.offset(), a.length());
      pos = a.end();
    }
  }

  /** An independent copy with the same bits. */
  public DirtyBitmap copy() {
    DirtyBitmap copy = new DirtyBitmap(size, granularity);
    synchronized (lock) {
      // The copy's own monitor too, so a thread that later locks it sees the copied words even if
      // the copy reaches it without a happens-before edge; nobody else can hold it yet, so no deadlock.
      synchronized (copy.lock) {
        copy.bitmap.copyFrom(bitmap);
      }
    }
    return copy;
  }

  /**
   * Heap bytes the bitmap's storage holds: its page arrays plus the page directory, the per-page
   * counts and the two summaries. Computed from the array lengths on a 64-bit JVM with compressed
   * references (16-byte array headers, 4-byte references, 8-byte alignment), not measured, so the
   * figure is deterministic; it leaves out this object and its fixed fields (under 100 bytes). A
   * clean or fully dirty page costs only its directory slot; a mixed page costs 8 KiB.
   */
  public long heapBytes() {
    synchronized (lock) {
      return bitmap.heapBytes();
    }
  }

  // ---- serialization (qcow2 bitmap data, spec "Bitmaps extension") ----

  /**
   * The bits in qcow2's layout: ceil(granules/8) bytes, bit i in byte i/8 at bit i%8, tail bits zero.
   *
   * @throws IllegalStateException past {@link #MAX_SERIALIZED_GRANULES} granules
   */
  public byte[] toBytes() {
    if (bits > MAX_SERIALIZED_GRANULES) {
      throw new IllegalStateException("a bitmap of " + bits + " granules does not fit in one array of bytes"
          + " (at most " + MAX_SERIALIZED_GRANULES + " granules)");
    }
    byte[] out = new byte[(int) ((bits + 7) >>> 3)];
    ByteBuffer buf = ByteBuffer.wrap(out).order(ByteOrder.LITTLE_ENDIAN);
    synchronized (lock) {
      int fullWords = out.length >>> 3;
      for (int w = 0; w < fullWords; w++) {
        buf.putLong(bitmap.wordAt(w));
      }
      // The last word may be cut short: its remaining bytes, least significant first.
      for (int i = fullWords << 3; i < out.length; i++) {
        out[i] = (byte) (bitmap.wordAt(i >>> 3) >>> ((i & 7) << 3));
      }
    }
    return out;
  }

  /**
   * Reads bits in qcow2's layout (see {@link #toBytes()}).
   *
   * @throws IllegalArgumentException when the length is not ceil(granules/8) or a bit past the
   *     last granule is set
   */
  public static DirtyBitmap fromBytes(long size, int granularity, byte[] data) {
    DirtyBitmap decoded = new DirtyBitmap(size, granularity);
    if (decoded.bits > MAX_SERIALIZED_GRANULES) {
      throw new IllegalArgumentException("bitmap data of " + decoded.bits + " granules cannot be held in one array");
    }
    long expected = (decoded.bits + 7) >>> 3;
    if (data.length != expected) {
      throw new IllegalArgumentException(
          "bitmap data is " + data.length + " bytes, expected " + expected + " for size " + size
              + " at granularity " + granularity);
    }
    int tailBits = (int) (decoded.bits & 7);
    if (tailBits != 0 && (data[data.length - 1] & 0xff) >>> tailBits != 0) {
      throw new IllegalArgumentException(
          String.format("bitmap data has bits set past granule %d in its last byte 0x%02x",
              decoded.bits, data[data.length - 1] & 0xff));
    }
    ByteBuffer buf = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
    int fullWords = data.length >>> 3;
    // Under the new bitmap's monitor, as copy(): safe however the caller hands it on.
    synchronized (decoded.lock) {
      for (int w = 0; w < fullWords; w++) {
        long word = buf.getLong();
        if (word != 0) {
          decoded.bitmap.orWord(w, word);
        }
      }
      long last = 0;
      for (int i = fullWords << 3; i < data.length; i++) {
        last |= (data[i] & 0xffL) << ((i & 7) << 3);
      }
      if (last != 0) {
        decoded.bitmap.orWord(fullWords, last);
      }
    }
    return decoded;
  }

  @Override
  public String toString() {
    return "DirtyBitmap[size=" + size + ", granularity=" + granularity + ", count=" + count() + "]";
  }

  // ---- checks ----

  private void checkRange(long offset, long length) {
    if (offset < 0 || length < 0 || offset > size || length > size - offset) {
      throw new IllegalArgumentException(
          "range [" + offset + ", +" + length + ") is outside [0, " + size + ")");
    }
  }

  private static void checkOffset(long offset) {
    if (offset < 0) {
      throw new IllegalArgumentException("offset (" + offset + ") must not be negative");
    }
  }
}
