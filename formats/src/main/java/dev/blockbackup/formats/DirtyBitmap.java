package dev.blockbackup.formats;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.concurrent.atomic.AtomicLong;

/**
 * One bit per granule of a disk, set when any byte of the granule is dirty, as QEMU's
 * BdrvDirtyBitmap (a backup job's copy bitmap is one). The bits live in pages of {@value
 * #PAGE_BITS} granules that exist only where the bitmap is mixed: a page that is all clean is no
 * array at all and a page that is all dirty is one shared marker, so an empty or a full bitmap of a
 * multi-PiB disk costs a few bytes per page rather than one bit per granule. Above the pages two
 * summary bit sets (page holds a dirty bit, page holds a clean bit) let searches skip whole clean or
 * whole dirty pages at once, the role of the upper levels of QEMU's hbitmap. It is thread-safe and
 * serializes to qcow2's persistent layout (bit i covers bytes [i·granularity, (i+1)·granularity)
 * and sits in byte i/8 at bit i%8, least significant first).
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
  static final int PAGE_BITS = 1 << 16;
  private static final int PAGE_SHIFT = 16;
  private static final int WORDS_PER_PAGE = PAGE_BITS / 64;
  private static final int WORD_IN_PAGE_MASK = WORDS_PER_PAGE - 1;
  /** The marker of an all-dirty page: compared by identity, never read or written. */
  private static final long[] FULL = new long[0];

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
  /**
   * Page p holds granules [p·PAGE_BITS, (p+1)·PAGE_BITS): null when all are clean, {@link #FULL}
   * when all are dirty, else its words (bit i of word w is granule p·PAGE_BITS + 64w + i; bits past
   * {@code bits} are always zero).
   */
  private final long[][] pages;
  /** Dirty granules in each page, so counts and the summaries need no scan. */
  private final int[] pageDirty;
  /** Bit p set when page p holds a dirty granule. */
  private final long[] nonEmptyPages;
  /** Bit p set when page p holds a clean granule. */
  private final long[] nonFullPages;
  /** Number of dirty granules, kept up to date so count() is O(1) as QEMU's hb->count. */
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
   * @throws IllegalArgumentException for a bad granularity, or more than {@link #MAX_GRANULES} granules
   */
  public DirtyBitmap(long size, int granularity) {
    checkGeometry(size, granularity);
    this.size = size;
    this.granularity = granularity;
    this.shift = Integer.numberOfTrailingZeros(granularity);
    this.bits = granules(size, granularity);
    int pageCount = (int) ((bits + PAGE_BITS - 1) >>> PAGE_SHIFT);
    this.pages = new long[pageCount][];
    this.pageDirty = new int[pageCount];
    this.nonEmptyPages = new long[wordsFor(pageCount)];
    this.nonFullPages = new long[wordsFor(pageCount)];
    fillOnes(nonFullPages, pageCount);
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
      return testBit(bit);
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
      Arrays.fill(pages, null);
      Arrays.fill(pageDirty, 0);
      Arrays.fill(nonEmptyPages, 0);
      fillOnes(nonFullPages, pages.length);
      dirtyGranules = 0;
    }
  }

  /** Marks every granule dirty (what sync=full starts its copy bitmap with). */
  public void setAll() {
    synchronized (lock) {
      for (int p = 0; p < pages.length; p++) {
        pages[p] = FULL;
        pageDirty[p] = pageBits(p);
      }
      fillOnes(nonEmptyPages, pages.length);
      Arrays.fill(nonFullPages, 0);
      dirtyGranules = bits;
    }
  }

  private static void fillOnes(long[] array, long nbits) {
    Arrays.fill(array, -1L);
    if ((nbits & 63) != 0 && array.length > 0) {
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
        // Walk only the other's non-empty pages through its summary, so merging a sparse bitmap is cheap.
        for (int p = nextPage(other.nonEmptyPages, 0); p >= 0; p = nextPage(other.nonEmptyPages, p + 1)) {
          long[] page = other.pages[p];
          if (page == FULL) {
            makeFull(p);
          } else if (pages[p] != FULL) {
            long base = (long) p * WORDS_PER_PAGE;
            for (int i = 0; i < page.length; i++) {
              if (page[i] != 0) {
                orWord(base + i, page[i]);
              }
            }
          }
        }
      }
    }
  }

  /** An independent copy with the same bits. */
  public DirtyBitmap copy() {
    DirtyBitmap copy = new DirtyBitmap(size, granularity);
    synchronized (lock) {
      for (int p = 0; p < pages.length; p++) {
        long[] page = pages[p];
        copy.pages[p] = page == null || page == FULL ? page : page.clone();
      }
      System.arraycopy(pageDirty, 0, copy.pageDirty, 0, pageDirty.length);
      System.arraycopy(nonEmptyPages, 0, copy.nonEmptyPages, 0, nonEmptyPages.length);
      System.arraycopy(nonFullPages, 0, copy.nonFullPages, 0, nonFullPages.length);
      copy.dirtyGranules = dirtyGranules;
    }
    return copy;
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
        buf.putLong(wordAt(w));
      }
      // The last word may be cut short: its remaining bytes, least significant first.
      for (int i = fullWords << 3; i < out.length; i++) {
        out[i] = (byte) (wordAt(i >>> 3) >>> ((i & 7) << 3));
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
    if (bitmap.bits > MAX_SERIALIZED_GRANULES) {
      throw new IllegalArgumentException("bitmap data of " + bitmap.bits + " granules cannot be held in one array");
    }
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
      long word = buf.getLong();
      if (word != 0) {
        bitmap.orWord(w, word);
      }
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

  private static int wordsFor(long nbits) {
    return (int) ((nbits + 63) >>> 6);
  }

  /** Granules in page p: PAGE_BITS except in a last page cut short. */
  private int pageBits(int p) {
    return (int) Math.min(PAGE_BITS, bits - ((long) p << PAGE_SHIFT));
  }

  /** The valid bits of word w (all but past {@code bits} in the last word). */
  private long validMask(long w) {
    long left = bits - (w << 6);
    return left >= 64 ? -1L : -1L >>> (64 - left);
  }

  private long wordAt(long w) {
    long[] page = pages[(int) (w >>> 10)];
    if (page == null) {
      return 0;
    }
    if (page == FULL) {
      return validMask(w);
    }
    return page[(int) (w & WORD_IN_PAGE_MASK)];
  }

  private boolean testBit(long bit) {
    return (wordAt(bit >>> 6) & (1L << bit)) != 0;
  }

  /** Page p as its own array of words, made from a clean or full page first. */
  private long[] mutablePage(int p) {
    long[] page = pages[p];
    if (page == null || page == FULL) {
      long[] words = new long[wordsFor(pageBits(p))];
      if (page == FULL) {
        long base = (long) p * WORDS_PER_PAGE;
        for (int i = 0; i < words.length; i++) {
          words[i] = validMask(base + i);
        }
      }
      pages[p] = words;
      page = words;
    }
    return page;
  }

  /** Records that page p now has {@code dirty} granules: its summary bits, and a collapse to null or FULL. */
  private void pageChanged(int p, int dirty) {
    dirtyGranules += dirty - pageDirty[p];
    pageDirty[p] = dirty;
    long bit = 1L << p;
    int i = p >>> 6;
    if (dirty == 0) {
      pages[p] = null;
      nonEmptyPages[i] &= ~bit;
    } else {
      nonEmptyPages[i] |= bit;
    }
    if (dirty == pageBits(p)) {
      pages[p] = FULL;
      nonFullPages[i] &= ~bit;
    } else {
      nonFullPages[i] |= bit;
    }
  }

  private void makeFull(int p) {
    if (pages[p] != FULL) {
      pageChanged(p, pageBits(p));
    }
  }

  /** ORs {@code mask} into word w (a mask within the valid bits). */
  private void orWord(long w, long mask) {
    int p = (int) (w >>> 10);
    if (pages[p] == FULL) {
      return;
    }
    long[] page = mutablePage(p);
    int i = (int) (w & WORD_IN_PAGE_MASK);
    long old = page[i];
    long now = old | mask;
    if (now != old) {
      page[i] = now;
      pageChanged(p, pageDirty[p] + Long.bitCount(now) - Long.bitCount(old));
    }
  }

  /** Sets (or clears) bits [from, to) of page p, a part of one page, and records the page's new count once. */
  private void changeWords(int p, long from, long to, boolean set) {
    long[] page = mutablePage(p);
    int delta = 0;
    for (long w = from >>> 6; w <= (to - 1) >>> 6; w++) {
      int i = (int) (w & WORD_IN_PAGE_MASK);
      long old = page[i];
      long mask = wordMask(w, from, to);
      long now = set ? old | mask : old & ~mask;
      page[i] = now;
      delta += Long.bitCount(now) - Long.bitCount(old);
    }
    pageChanged(p, pageDirty[p] + delta);
  }

  /** The bits of word w that lie in [from, to). */
  private static long wordMask(long w, long from, long to) {
    long mask = -1L;
    if (w == from >>> 6) {
      mask &= -1L << from;
    }
    if (w == (to - 1) >>> 6) {
      mask &= -1L >>> (63 - ((to - 1) & 63));
    }
    return mask;
  }

  /** Sets bits [from, to): whole pages at once, partial ones word by word. */
  private void setBits(long from, long to) {
    for (long b = from; b < to; ) {
      int p = (int) (b >>> PAGE_SHIFT);
      long pageStart = (long) p << PAGE_SHIFT;
      long stop = Math.min(to, pageStart + pageBits(p));
      if (b == pageStart && stop == pageStart + pageBits(p)) {
        makeFull(p);
      } else if (pages[p] != FULL) {
        changeWords(p, b, stop, true);
      }
      b = stop;
    }
  }

  /** Clears bits [from, to). */
  private void resetBits(long from, long to) {
    for (long b = from; b < to; ) {
      int p = (int) (b >>> PAGE_SHIFT);
      long pageStart = (long) p << PAGE_SHIFT;
      long stop = Math.min(to, pageStart + pageBits(p));
      if (b == pageStart && stop == pageStart + pageBits(p)) {
        if (pages[p] != null) {
          pageChanged(p, 0);
        }
      } else if (pages[p] != null) {
        changeWords(p, b, stop, false);
      }
      b = stop;
    }
  }

  /** Set bits in [from, to). */
  private long popCount(long from, long to) {
    long n = 0;
    for (long b = from; b < to; ) {
      int p = (int) (b >>> PAGE_SHIFT);
      long pageStart = (long) p << PAGE_SHIFT;
      long stop = Math.min(to, pageStart + pageBits(p));
      long[] page = pages[p];
      if (page == FULL) {
        n += stop - b;
      } else if (page != null) {
        if (b == pageStart && stop == pageStart + pageBits(p)) {
          n += pageDirty[p];
        } else {
          for (long w = b >>> 6; w <= (stop - 1) >>> 6; w++) {
            n += Long.bitCount(page[(int) (w & WORD_IN_PAGE_MASK)] & wordMask(w, b, stop));
          }
        }
      }
      b = stop;
    }
    return n;
  }

  /** The first page at or after {@code from} whose bit is set in {@code summary}, or -1. */
  private int nextPage(long[] summary, int from) {
    if (from >= pages.length) {
      return -1;
    }
    int i = from >>> 6;
    long m = summary[i] & (-1L << from);
    while (m == 0) {
      if (++i >= summary.length) {
        return -1;
      }
      m = summary[i];
    }
    int p = (i << 6) + Long.numberOfTrailingZeros(m);
    return p < pages.length ? p : -1;
  }

  /** The first set bit in [from, to), or -1. */
  private long nextSetBit(long from, long to) {
    long limit = Math.min(to, bits);
    long b = from;
    while (b < limit) {
      int p = (int) (b >>> PAGE_SHIFT);
      long[] page = pages[p];
      if (page == FULL) {
        return b;
      }
      if (page != null) {
        long found = firstInPage(page, p, b, false);
        if (found >= 0) {
          return found < limit ? found : -1;
        }
      }
      int next = nextPage(nonEmptyPages, p + 1);
      if (next < 0) {
        return -1;
      }
      b = (long) next << PAGE_SHIFT;
    }
    return -1;
  }

  /** The first clear bit in [from, min(to, bits)), or -1. */
  private long nextClearBit(long from, long to) {
    long limit = Math.min(to, bits);
    long b = from;
    while (b < limit) {
      int p = (int) (b >>> PAGE_SHIFT);
      long[] page = pages[p];
      if (page == null) {
        return b;
      }
      if (page != FULL) {
        long found = firstInPage(page, p, b, true);
        if (found >= 0) {
          return found < limit ? found : -1;
        }
      }
      int next = nextPage(nonFullPages, p + 1);
      if (next < 0) {
        return -1;
      }
      b = (long) next << PAGE_SHIFT;
    }
    return -1;
  }

  /** The first set (or, with {@code clear}, clear and valid) bit at or after {@code from} in page p's words, or -1. */
  private long firstInPage(long[] page, int p, long from, boolean clear) {
    long base = (long) p * WORDS_PER_PAGE;
    int i = (int) ((from >>> 6) & WORD_IN_PAGE_MASK);
    long mask = -1L << from;
    for (; i < page.length; i++, mask = -1L) {
      long word = clear ? ~page[i] & validMask(base + i) : page[i];
      word &= mask;
      if (word != 0) {
        return ((base + i) << 6) + Long.numberOfTrailingZeros(word);
      }
    }
    return -1;
  }
}
