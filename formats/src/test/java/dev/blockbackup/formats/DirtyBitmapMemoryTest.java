package dev.blockbackup.formats;

import static org.assertj.core.api.Assertions.assertThat;

import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/**
 * What DirtyBitmap's storage holds on the heap, by its own accounting ({@link
 * DirtyBitmap#heapBytes()}): a few bitmaps of a 1 TiB disk must fit in a small budget, and an empty
 * one must cost next to nothing, whatever the disk size.
 */
class DirtyBitmapMemoryTest {

  static final long TIB = 1L << 40;
  static final long MIB = 1L << 20;
  static final int G = 64 * 1024;
  static final long GRANULES = TIB / G;
  /** One mixed page: a long[1024] with its 16-byte header. */
  static final long PAGE_HEAP = 16 + 8L * DirtyBitmap.PAGE_BITS / 64;

  /** A 1 TiB bitmap with 1% of its granules dirty, one at a time in random places. */
  static DirtyBitmap scattered(long seed) {
    DirtyBitmap bitmap = new DirtyBitmap(TIB, G);
    SplittableRandom r = new SplittableRandom(seed);
    for (long i = 0; i < GRANULES / 100; i++) {
      bitmap.set(r.nextLong(GRANULES) * G, G);
    }
    return bitmap;
  }

  @Test
  void fourScatteredTebibyteBitmapsAndAFullOneStayUnder16MiB() {
    long empty = new DirtyBitmap(TIB, G).heapBytes();
    long total = 0;
    for (int i = 0; i < 4; i++) {
      DirtyBitmap bitmap = scattered(i);
      // About 1% dirty (collisions make it slightly less), spread so every page is mixed.
      assertThat(bitmap.count()).isBetween(TIB / 100 * 99 / 100, TIB / 100);
      long pages = GRANULES / DirtyBitmap.PAGE_BITS;
      assertThat(bitmap.heapBytes()).isEqualTo(empty + pages * PAGE_HEAP);
      total += bitmap.heapBytes();
    }
    DirtyBitmap full = new DirtyBitmap(TIB, G);
    full.set(0, TIB);
    // Every page is the shared FULL marker: the full bitmap costs what the empty one does.
    assertThat(full.heapBytes()).isEqualTo(empty);
    total += full.heapBytes();

    assertThat(total).isLessThan(16 * MIB);
  }

  @Test
  void anEmptyTebibyteBitmapCostsAFewKiB() {
    DirtyBitmap bitmap = new DirtyBitmap(TIB, G);
    // 256 pages: the directory (1 KiB), the per-page counts (1 KiB) and two 4-word summaries.
    assertThat(bitmap.heapBytes()).isLessThan(4 * 1024);
    // A 2 PiB bitmap at 64 KiB is 2^19 pages: 4 MiB of directory and counts, still no page.
    assertThat(new DirtyBitmap(1L << 51, G).heapBytes()).isLessThan(5 * MIB);
  }

  @Test
  void pagesAreGivenBackWhenTheyBecomeCleanOrFull() {
    DirtyBitmap bitmap = new DirtyBitmap(TIB, G);
    long empty = bitmap.heapBytes();
    long pageBytes = (long) DirtyBitmap.PAGE_BITS * G;

    bitmap.set(3 * pageBytes + 5L * G, G);
    assertThat(bitmap.heapBytes()).isEqualTo(empty + PAGE_HEAP);

    // Filling the rest of the page granule by granule collapses it to the FULL marker.
    for (long off = 3 * pageBytes; off < 4 * pageBytes; off += G) {
      bitmap.set(off, G);
    }
    assertThat(bitmap.heapBytes()).isEqualTo(empty);
    assertThat(bitmap.count()).isEqualTo(pageBytes);

    // Splitting the full page makes it mixed again; clearing it gives the array back.
    bitmap.reset(3 * pageBytes, G);
    assertThat(bitmap.heapBytes()).isEqualTo(empty + PAGE_HEAP);
    bitmap.reset(3 * pageBytes, pageBytes);
    assertThat(bitmap.heapBytes()).isEqualTo(empty);

    DirtyBitmap copy = scattered(7).copy();
    assertThat(copy.heapBytes()).isEqualTo(scattered(7).heapBytes());
    copy.clear();
    assertThat(copy.heapBytes()).isEqualTo(empty);
  }
}
