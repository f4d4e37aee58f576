package dev.blockbackup.formats;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.concurrent.atomic.AtomicLong;

/**
 * One bit per granule of a disk, set when any byte of the granule is dirty, as QEMU's
 * BdrvDirtyBitmap (a backup job's copy bitmap is one). The bits live in a {@code long[]} with two
 * summary levels above it, one bit per non-zero word below as in QEMU's hbitmap, so searches skip
 * clean stretches thousands of granules at a time instead of bit by bit. It is thread-safe and
 * serializes to qcow2's persistent layout (bit i covers bytes [i·granularity, (i+1)·granularity)
 * and sits in byte i/8 at bit i%8, least significant first).
 */
public final class DirtyBitmap {

  /** The smallest granularity QEMU accepts (block-dirty-bitmap-add, qcow2 granularity_bits 9). */
  public static final int MIN_GRANULARITY = 512;

  /** The most granules: toBytes() must still fit in one Java array (just under 2 GiB). */
  public static final long MAX_GRANULES = 8L * (Integer.MAX_VALUE - 8);

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
  /** Level 0: bit i set when granule i is dirty; bits past {@code bits} are always zero. */
  private final long[] words;
  /** Level 1: bit j set when words[j] != 0. */
  private final long[] level1;
  /** Level 2: bit k set when level1[k] != 0. */
  private final long[] level2;
  /** Number of set bits in {@code words}, kept up to date so count() is O(1) as QEMU's hb->count. */
  private long dirtyGranules;
  /** Lock order for merge. */
  private final long rank = RANKS.incrementAndGet();
  /**
   * One plain monitor rather than a ReadWriteLock: every call holds it for a short time (a single
   * bit, or a scan of at most a few MiB), and an uncontended monitor is cheaper than a read lock,
   * which matters for the per-write set/isDirty calls.
   */
  private final Object lock = new Object();

  /**
   * @param size bytes of the disk covered, at least 0
   * @param granularity bytes per bit, a power of two of at least 512
   */
  public DirtyBitmap(long size, int granularity) {
    if (granularity < MIN_GRANULARITY || Integer.bitCount(granularity) != 1) {
      throw new IllegalArgumentException(
          "granularity (" + granularity + ") must be a power of two of at least " + MIN_GRANULARITY);
    }
    if (size < 0) {
      throw new IllegalArgumentException("size (" + size + ") must not be negative");
    }
    this.size = size;
    this.granularity = granularity;
    this.shift = Integer.numberOfTrailingZeros(granularity);
    this.bits = (size >>> shift) + ((size & (granularity - 1)) != 0 ? 1 : 0);
    if (bits > MAX_GRANULES) {
      throw new IllegalArgumentException(
          "size (" + size + ") at granularity " + granularity + " gives " + bits
              + " granules, more than the limit " + MAX_GRANULES);
    }
    this.words = new long[wordsFor(bits)];
    this.level1 = new long[wordsFor(words.length)];
    this.level2 = new long[wordsFor(level1.length)];
  }

  private static int wordsFor(long nbits) {
    return (int) ((nbits + 63) >>> 6);
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
    synchronized (lock) {
      setBits(first, last + 1);
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
      resetBits(first, end);
    }
  }

  /** Whether the granule holding byte {@code offset} is dirty. */
  public boolean isDirty(long offset) {
    if (offset < 0 || offset >= size) {
      throw new IllegalArgumentException("offset (" + offset + ") must be in [0, " + size + ")");
    }
    long bit = offset >>> shift;
    synchronized (lock) {
      return (words[(int) (bit >>> 6)] & (1L << bit)) != 0;
    }
  }

  /**
   * Dirty bytes: dirty granules times the granularity, the last granule counted only up to
   * {@link #size()}. (QEMU's query-block count does not clip the last granule; we do, so a full
   * bitmap counts exactly {@code size} bytes.)
   */
  public long count() {
    synchronized (lock) {
      long bytes = dirtyGranules << shift;
      if (bits > 0 && testBit(bits - 1)) {
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
      long bytes = popCount(first, last + 1) << shift;
      if (testBit(first)) {
        bytes -= offset - (first << shift);
      }
      if (testBit(last)) {
        bytes -= ((last + 1) << shift) - end;
      }
      return bytes;
    }
  }

  /** Marks every granule clean (block-dirty-bitmap-clear). */
  public void clear() {
    synchronized (lock) {
      Arrays.fill(words, 0);
      Arrays.fill(level1, 0);
      Arrays.fill(level2, 0);
      dirtyGranules = 0;
    }
  }

  /** Marks every granule dirty (what sync=full starts its copy bitmap with). */
  public void setAll() {
    synchronized (lock) {
      fillOnes(words, bits);
      fillOnes(level1, words.length);
      fillOnes(level2, level1.length);
      dirtyGranules = bits;
    }
  }

  private static void fillOnes(long[] array, long nbits) {
    Arrays.fill(array, -1L);
    if ((nbits & 63) != 0) {
      array[array.length - 1] = -1L >>> (64 - (nbits & 63));
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
      long bit = nextSetBit(offset >>> shift, granulesTouching(limit));
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
      long bit = nextClearBit(offset >>> shift, granulesTouching(limit));
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
      long bit = nextSetBit(offset >>> shift, granulesTouching(limit));
      if (bit < 0) {
        return null;
      }
      long start = Math.max(bit << shift, offset);
      long areaEnd = start + Math.min(maxLength, limit - start);
      long clean = nextClearBit(bit, granulesTouching(areaEnd));
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
        // Walk only the other's non-zero words through its summary, so merging a sparse bitmap is cheap.
        for (int w = other.nextNonZeroWord(0); w >= 0; w = other.nextNonZeroWord(w + 1)) {
          orWord(w, other.words[w]);
        }
      }
    }
  }

  /** An independent copy with the same bits. */
  public DirtyBitmap copy() {
    DirtyBitmap copy = new DirtyBitmap(size, granularity);
    synchronized (lock) {
      System.arraycopy(words, 0, copy.words, 0, words.length);
      System.arraycopy(level1, 0, copy.level1, 0, level1.length);
      System.arraycopy(level2, 0, copy.level2, 0, level2.length);
      copy.dirtyGranules = dirtyGranules;
    }
    return copy;
  }

  // ---- serialization (qcow2 bitmap data, spec "Bitmaps extension") ----

  /** The bits in qcow2's layout: ceil(granules/8) bytes, bit i in byte i/8 at bit i%8, tail bits zero. */
  public byte[] toBytes() {
    byte[] out = new byte[(int) ((bits + 7) >>> 3)];
    ByteBuffer buf = ByteBuffer.wrap(out).order(ByteOrder.LITTLE_ENDIAN);
    synchronized (lock) {
      int fullWords = out.length >>> 3;
      for (int w = 0; w < fullWords; w++) {
        buf.putLong(words[w]);
      }
      // The last word may be cut short: its remaining bytes, least significant first.
      for (int i = fullWords << 3; i < out.length; i++) {
        out[i] = (byte) (words[i >>> 3] >>> ((i & 7) << 3));
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
    DirtyBitmap bitmap = new DirtyBitmap(size, granularity);
    long expected = (bitmap.bits + 7) >>> 3;
    if (data.length != expected) {
      throw new IllegalArgumentException(
          "bitmap data is " + data.length + " bytes, expected " + expected + " for size " + size
              + " at granularity " + granularity);
    }
    int tailBits = (int) (bitmap.bits & 7);
    if (tailBits != 0 && (data[data.length - 1] & 0xff) >>> tailBits != 0) {
      throw new IllegalArgumentException(
          String.format("bitmap data has bits set past granule %d in its last byte 0x%02x",
              bitmap.bits, data[data.length - 1] & 0xff));
    }
    ByteBuffer buf = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
    int fullWords = data.length >>> 3;
    for (int w = 0; w < fullWords; w++) {
      bitmap.orWord(w, buf.getLong());
    }
    long last = 0;
    for (int i = fullWords << 3; i < data.length; i++) {
      last |= (data[i] & 0xffL) << ((i & 7) << 3);
    }
    if (last != 0) {
      bitmap.orWord(fullWords, last);
    }
    return bitmap;
  }

  @Override
  public String toString() {
    return "DirtyBitmap[size=" + size + ", granularity=" + granularity + ", count=" + count() + "]";
  }

  // ---- bit level; callers hold the lock ----

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

  private boolean testBit(long bit) {
    return (words[(int) (bit >>> 6)] & (1L << bit)) != 0;
  }

  /** Sets bits [from, to). */
  private void setBits(long from, long to) {
    int firstWord = (int) (from >>> 6);
    int lastWord = (int) ((to - 1) >>> 6);
    for (int w = firstWord; w <= lastWord; w++) {
      long mask = wordMask(w, firstWord, lastWord, from, to);
      orWord(w, mask);
    }
  }

  /** The bits of word {@code w} (between firstWord and lastWord) that lie in [from, to). */
  private static long wordMask(int w, int firstWord, int lastWord, long from, long to) {
    long mask = -1L;
    if (w == firstWord) {
      mask &= -1L << from;
    }
    if (w == lastWord) {
      mask &= -1L >>> (63 - ((to - 1) & 63));
    }
    return mask;
  }

  private void orWord(int w, long mask) {
    long old = words[w];
    long now = old | mask;
    if (now != old) {
      words[w] = now;
      dirtyGranules += Long.bitCount(now) - Long.bitCount(old);
      if (old == 0) {
        int j = w >>> 6;
        if (level1[j] == 0) {
          level2[j >>> 6] |= 1L << j;
        }
        level1[j] |= 1L << w;
      }
    }
  }

  /** Clears bits [from, to). */
  private void resetBits(long from, long to) {
    int firstWord = (int) (from >>> 6);
    int lastWord = (int) ((to - 1) >>> 6);
    for (int w = firstWord; w <= lastWord; w++) {
      long mask = wordMask(w, firstWord, lastWord, from, to);
      long old = words[w];
      long now = old & ~mask;
      if (now != old) {
        words[w] = now;
        dirtyGranules -= Long.bitCount(old) - Long.bitCount(now);
        if (now == 0) {
          int j = w >>> 6;
          level1[j] &= ~(1L << w);
          if (level1[j] == 0) {
            level2[j >>> 6] &= ~(1L << j);
          }
        }
      }
    }
  }

  /** Set bits in [from, to). */
  private long popCount(long from, long to) {
    int firstWord = (int) (from >>> 6);
    int lastWord = (int) ((to - 1) >>> 6);
    long n = 0;
    for (int w = firstWord; w <= lastWord; w++) {
      long mask = wordMask(w, firstWord, lastWord, from, to);
      n += Long.bitCount(words[w] & mask);
    }
    return n;
  }

  /** The first set bit in [from, to), or -1. */
  private long nextSetBit(long from, long to) {
    if (from >= to) {
      return -1;
    }
    int w = (int) (from >>> 6);
    long word = words[w] & (-1L << from);
    if (word == 0) {
      w = nextNonZeroWord(w + 1);
      if (w < 0) {
        return -1;
      }
      word = words[w];
    }
    long bit = ((long) w << 6) + Long.numberOfTrailingZeros(word);
    return bit < to ? bit : -1;
  }

  /** The index of the first non-zero word at or after {@code from}, found through the summary levels, or -1. */
  private int nextNonZeroWord(int from) {
    if (from >= words.length) {
      return -1;
    }
    int j = from >>> 6;
    long m = level1[j] & (-1L << from);
    if (m != 0) {
      return (j << 6) + Long.numberOfTrailingZeros(m);
    }
    // No non-zero word left in this level-1 word: find the next non-zero level-1 word via level 2.
    int next = j + 1;
    if (next >= level1.length) {
      return -1;
    }
    int k = next >>> 6;
    long m2 = level2[k] & (-1L << next);
    while (m2 == 0) {
      if (++k >= level2.length) {
        return -1;
      }
      m2 = level2[k];
    }
    int j2 = (k << 6) + Long.numberOfTrailingZeros(m2);
    return (j2 << 6) + Long.numberOfTrailingZeros(level1[j2]);
  }

  /** The first clear bit in [from, min(to, bits)), or -1. */
  private long nextClearBit(long from, long to) {
    long limit = Math.min(to, bits);
    if (from >= limit) {
      return -1;
    }
    int w = (int) (from >>> 6);
    int lastWord = (int) ((limit - 1) >>> 6);
    long word = ~words[w] & (-1L << from);
    while (word == 0) {
      if (++w > lastWord) {
        return -1;
      }
      word = ~words[w];
    }
    long bit = ((long) w << 6) + Long.numberOfTrailingZeros(word);
    return bit < limit ? bit : -1;
  }
}
