package dev.blockbackup.formats;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.util.Arrays;

/**
 * The storage under a {@link DirtyBitmap}: a set of granule indices [0, bits), in the role of QEMU's
 * hierarchical HBitmap. It knows nothing of bytes or granularity; DirtyBitmap maps byte ranges to
 * granule ranges and checks them before they reach here.
 *
 * <p>The bits live in pages of {@value #PAGE_BITS} granules that exist only where the bitmap is
 * mixed: an all-clean page is no array at all and an all-dirty page is one shared marker, so an
 * empty or a full bitmap of a multi-PiB disk costs a few bytes per page rather than one bit per
 * granule. Above the pages two summary bit sets (page holds a dirty bit, page holds a clean bit)
 * let searches skip whole clean or whole dirty pages at once, the job of hbitmap's upper levels.
 * A per-page dirty count keeps {@link #count()} O(1) and whole-page counts free.
 *
 * <p>Not thread-safe, but for {@link #isSetLockFree}: DirtyBitmap guards every other call with its
 * monitor. Keeping the lock in the façade leaves this class plain array code, and lets merge take
 * the two bitmaps' locks in order. So that the one lock-free reader sees whole values, every store
 * to a page slot or a word is a release store (on x86 a plain store the compiler may not reorder):
 * a page published mixed is seen with its words, a word is never seen torn.
 */
final class HBitmap {

  /** Granules per page: 2^16, one 8 KiB array of 1024 words once the page is mixed. */
  static final int PAGE_BITS = 1 << 16;
  private static final int PAGE_SHIFT = 16;
  private static final int WORDS_PER_PAGE = PAGE_BITS / 64;
  private static final int WORD_IN_PAGE_MASK = WORDS_PER_PAGE - 1;
  /** log2(WORDS_PER_PAGE): word index to page index. */
  private static final int WORD_PAGE_SHIFT = PAGE_SHIFT - 6;
  /** The marker of an all-dirty page: compared by identity, never read or written. */
  private static final long[] FULL = new long[0];
  private static final VarHandle PAGE = MethodHandles.arrayElementVarHandle(long[][].class);
  private static final VarHandle WORD = MethodHandles.arrayElementVarHandle(long[].class);

  /** Number of granules (bits). */
  private final long bits;
  /**
   * Page p holds granules [p·PAGE_BITS, (p+1)·PAGE_BITS): null when all are clean, {@link #FULL}
   * when all are dirty, else its words (bit i of word w is granule p·PAGE_BITS + 64w + i; bits past
   * {@code bits} are always zero, so popcounts and serialization need no masking).
   */
  private final long[][] pages;
  /** Dirty granules in each page, so counts and the summaries need no scan. */
  private final int[] pageDirty;
  /** Bit p set when page p holds a dirty granule. */
  private final long[] nonEmptyPages;
  /** Bit p set when page p holds a clean granule. */
  private final long[] nonFullPages;
  /** Number of dirty granules, kept up to date as QEMU's hb->count. */
  private long dirtyGranules;

  /** An all-clean bitmap of {@code bits} granules; the caller has checked the limit (2^38). */
  HBitmap(long bits) {
    this.bits = bits;
    int pageCount = (int) ((bits + PAGE_BITS - 1) >>> PAGE_SHIFT);
    this.pages = new long[pageCount][];
    this.pageDirty = new int[pageCount];
    this.nonEmptyPages = new long[wordsFor(pageCount)];
    this.nonFullPages = new long[wordsFor(pageCount)];
    fillOnes(nonFullPages, pageCount);
  }

  long bits() {
    return bits;
  }

  /** Dirty granules in the whole bitmap. */
  long count() {
    return dirtyGranules;
  }

  boolean get(long bit) {
    return (wordAt(bit >>> 6) & (1L << bit)) != 0;
  }

  /**
   * Whether every bit of [from, to) is set, read without the monitor while writers hold it: the
   * guest write's fast path, since on a busy disk nearly every write lands in granules already
   * dirty, and several bitmaps' monitors taken by every write from several threads were what a
   * write waited on. Only a range within one word is answered (a 4 MiB write at 64 KiB granules);
   * a longer one answers false and takes the locked path. The answer describes one moment within
   * the call, so a set that finds its bits set is linearized there, before any later reset:
   * {@link #wordAt} reads the page slot with acquire, then its word; if the word's page was
   * replaced in between, that array is never written again after its replacement, so its word
   * still tells the moment just before it.
   */
  boolean isSetLockFree(long from, long to) {
    long w = from >>> 6;
    if (w != (to - 1) >>> 6) {
      return false;
    }
    long mask = wordMask(w, from, to);
    return (wordAt(w) & mask) == mask;
  }

  // ---- heap accounting ----

  /**
   * Heap bytes of the arrays this storage holds, on the layout of a 64-bit HotSpot with compressed
   * references (its default below a 32 GiB heap): a 16-byte array header, 4-byte references, each
   * array padded to 8 bytes. The FULL marker is shared by every bitmap, so it is not counted. The
   * figure is computed from the array lengths, not measured, so a test can bound it exactly.
   */
  long heapBytes() {
    long n = arrayBytes(pages.length, 4) + arrayBytes(pageDirty.length, 4)
        + arrayBytes(nonEmptyPages.length, 8) + arrayBytes(nonFullPages.length, 8);
    for (long[] page : pages) {
      if (page != null && page != FULL) {
        n += arrayBytes(page.length, 8);
      }
    }
    return n;
  }

  private static long arrayBytes(long length, int elementBytes) {
    return (16 + length * elementBytes + 7) & ~7L;
  }

  // ---- whole-bitmap changes ----

  void clear() {
    for (int p = 0; p < pages.length; p++) {
      PAGE.setRelease(pages, p, (long[]) null);
    }
    Arrays.fill(pageDirty, 0);
    Arrays.fill(nonEmptyPages, 0);
    fillOnes(nonFullPages, pages.length);
    dirtyGranules = 0;
  }

  void setAll() {
    for (int p = 0; p < pages.length; p++) {
      PAGE.setRelease(pages, p, FULL);
      pageDirty[p] = pageBits(p);
    }
    fillOnes(nonEmptyPages, pages.length);
    Arrays.fill(nonFullPages, 0);
    dirtyGranules = bits;
  }

  /** ORs {@code other}'s bits into these; the caller has checked that both have the same size. */
  void merge(HBitmap other) {
    // Walk only the other's non-empty pages through its summary, so merging a sparse bitmap is cheap.
    for (int p = other.nextPage(other.nonEmptyPages, 0); p >= 0; p = other.nextPage(other.nonEmptyPages, p + 1)) {
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

  /** Copies {@code other}'s bits over these (both of the same size): mixed pages are cloned, markers shared. */
  void copyFrom(HBitmap other) {
    for (int p = 0; p < pages.length; p++) {
      long[] page = other.pages[p];
      PAGE.setRelease(pages, p, page == null || page == FULL ? page : page.clone());
    }
    System.arraycopy(other.pageDirty, 0, pageDirty, 0, pageDirty.length);
    System.arraycopy(other.nonEmptyPages, 0, nonEmptyPages, 0, nonEmptyPages.length);
    System.arraycopy(other.nonFullPages, 0, nonFullPages, 0, nonFullPages.length);
    dirtyGranules = other.dirtyGranules;
  }

  // ---- words, in qcow2's order (word w holds granules [64w, 64w+64), least significant first) ----

  /**
   * Word w. Its loads are acquire loads (plain loads on x86) so that {@link #isSetLockFree} can
   * call it without the monitor; under the monitor they cost nothing more.
   */
  long wordAt(long w) {
    long[] page = (long[]) PAGE.getAcquire(pages, (int) (w >>> WORD_PAGE_SHIFT));
    if (page == null) {
      return 0;
    }
    if (page == FULL) {
      return validMask(w);
    }
    return (long) WORD.getAcquire(page, (int) (w & WORD_IN_PAGE_MASK));
  }

  /** ORs {@code mask} into word w; the mask must lie within the valid bits. */
  void orWord(long w, long mask) {
    int p = (int) (w >>> WORD_PAGE_SHIFT);
    if (pages[p] == FULL) {
      return;
    }
    long[] page = mutablePage(p);
    int i = (int) (w & WORD_IN_PAGE_MASK);
    long old = page[i];
    long now = old | mask;
    if (now != old) {
      WORD.setRelease(page, i, now);
      pageChanged(p, pageDirty[p] + Long.bitCount(now & ~old));
    }
  }

  // ---- ranges of granules ----

  /** Sets bits [from, to), 0 ≤ from < to ≤ bits: whole pages at once, partial ones word by word. */
  void set(long from, long to) {
    if ((from >>> 6) == ((to - 1) >>> 6)) {
      // One word, the common case of a guest write: no page walk, no loop.
      orWord(from >>> 6, wordMask(from >>> 6, from, to));
      return;
    }
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

  /** Clears bits [from, to), 0 ≤ from < to ≤ bits. */
  void reset(long from, long to) {
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

  /** Set bits in [from, to), 0 ≤ from ≤ to ≤ bits. */
  long count(long from, long to) {
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

  /** The first set bit in [from, min(to, bits)), or -1 (hbitmap_next_dirty). */
  long nextSet(long from, long to) {
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

  /** The first clear bit in [from, min(to, bits)), or -1 (hbitmap_next_zero); skips whole dirty pages. */
  long nextClear(long from, long to) {
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

  // ---- pages ----

  private static int wordsFor(long nbits) {
    return (int) ((nbits + 63) >>> 6);
  }

  private static void fillOnes(long[] array, long nbits) {
    Arrays.fill(array, -1L);
    if ((nbits & 63) != 0 && array.length > 0) {
      array[array.length - 1] = -1L >>> (64 - (nbits & 63));
    }
  }

  /** Granules in page p: PAGE_BITS except in a last page cut short. */
  private int pageBits(int p) {
    return (int) Math.min(PAGE_BITS, bits - ((long) p << PAGE_SHIFT));
  }

  /** The valid bits of word w (all but those past {@code bits} in the last word). */
  private long validMask(long w) {
    long left = bits - (w << 6);
    return left >= 64 ? -1L : -1L >>> (64 - left);
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

  /**
   * Page p as its own array of words, made from a clean or full page first. This is the only
   * allocation on the set/reset path, once per page that turns mixed.
   */
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
      PAGE.setRelease(pages, p, words);
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
      PAGE.setRelease(pages, p, (long[]) null);
      nonEmptyPages[i] &= ~bit;
    } else {
      nonEmptyPages[i] |= bit;
    }
    if (dirty == pageBits(p)) {
      PAGE.setRelease(pages, p, FULL);
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

  /** Sets (or clears) bits [from, to) of page p, a part of one page, and records the page's new count once. */
  private void changeWords(int p, long from, long to, boolean set) {
    long[] page = mutablePage(p);
    int delta = 0;
    for (long w = from >>> 6; w <= (to - 1) >>> 6; w++) {
      int i = (int) (w & WORD_IN_PAGE_MASK);
      long old = page[i];
      long mask = wordMask(w, from, to);
      long now = set ? old | mask : old & ~mask;
      WORD.setRelease(page, i, now);
      delta += Long.bitCount(now) - Long.bitCount(old);
    }
    pageChanged(p, pageDirty[p] + delta);
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
