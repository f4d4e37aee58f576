package dev.blockbackup.formats;

import static org.assertj.core.api.Assertions.assertThat;

import java.util.ArrayList;
import java.util.BitSet;
import java.util.Collections;
import java.util.List;
import java.util.Random;
import java.util.SplittableRandom;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.SynchronousQueue;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

/**
 * DirtyBitmap's promise that set/reset/isDirty/count/next* may be called from many threads at
 * once: eight writers mark the same bitmap, in ranges that share words and pages, turn pages mixed
 * and full at the same moment, while readers watch it.
 */
class DirtyBitmapConcurrencyTest {

  static final int THREADS = 8;
  static final int G = 4096;
  /** Four pages and a bit: ranges cross page boundaries and the last page is cut short. */
  static final int GRANULES = 4 * DirtyBitmap.PAGE_BITS + 777;
  static final long SIZE = (long) GRANULES * G;

  /** A byte range one thread marks: [offset, offset+length). */
  record Range(long offset, long length) {}

  /**
   * Thread t's ranges: single granules of its own stripe (granule i with i % 8 == t, so every word
   * is shared by all eight threads), random runs anywhere (overlapping the others', some crossing a
   * page), and one whole page of its own for t < 4 (a page made FULL while others write words of
   * it and of its neighbours).
   */
  static List<Range> rangesOf(int t) {
    List<Range> out = new ArrayList<>();
    for (long i = t; i < GRANULES; i += 8L * 13) {
      out.add(new Range(i * G, G));
    }
    SplittableRandom r = new SplittableRandom(1000 + t);
    for (int k = 0; k < 400; k++) {
      long start = r.nextLong(SIZE);
      long len = 1 + r.nextLong(Math.min(SIZE - start, r.nextBoolean() ? 64L * G : 3L * DirtyBitmap.PAGE_BITS * G));
      // Unaligned on purpose: set rounds outward.
      out.add(new Range(start, len));
    }
    if (t < 4) {
      out.add(new Range((long) t * DirtyBitmap.PAGE_BITS * G, (long) DirtyBitmap.PAGE_BITS * G));
    }
    // Interleave the kinds, so small and large sets race instead of running in phases.
    Collections.shuffle(out, new Random(t));
    return out;
  }

  static void modelSet(BitSet model, Range range) {
    int first = (int) (range.offset() / G);
    int last = (int) ((range.offset() + range.length() - 1) / G);
    model.set(first, last + 1);
  }

  @Test
  void eightThreadsSettingDisjointAndOverlappingRangesLeaveTheirUnion() throws Exception {
    DirtyBitmap bitmap = new DirtyBitmap(SIZE, G);
    BitSet model = new BitSet(GRANULES);
    List<List<Range>> work = new ArrayList<>();
    for (int t = 0; t < THREADS; t++) {
      work.add(rangesOf(t));
      work.get(t).forEach(range -> modelSet(model, range));
    }
    ExecutorService pool = Executors.newFixedThreadPool(THREADS + 1);
    CountDownLatch start = new CountDownLatch(1);
    CountDownLatch writersDone = new CountDownLatch(THREADS);
    try {
      List<Future<?>> done = new ArrayList<>();
      for (int t = 0; t < THREADS; t++) {
        List<Range> mine = work.get(t);
        done.add(pool.submit(() -> {
          start.await();
          try {
            for (Range range : mine) {
              bitmap.set(range.offset(), range.length());
              // Our own set is visible at once to ourselves, whatever the others do.
              assertThat(bitmap.isDirty(range.offset())).isTrue();
            }
          } finally {
            writersDone.countDown();
          }
          return null;
        }));
      }
      // A reader while the writers run: with only sets happening, the count never falls and every
      // dirty offset found is dirty in the union.
      Future<Integer> reader = pool.submit(() -> {
        start.await();
        long lastCount = 0;
        int rounds = 0;
        do {
          long count = bitmap.count();
          assertThat(count).isGreaterThanOrEqualTo(lastCount);
          lastCount = count;
          DirtyBitmap.Area area = bitmap.nextDirtyArea((long) rounds * 7919 * G % SIZE, SIZE, 1L << 30);
          if (area != null) {
            assertThat(model.get((int) (area.offset() / G))).isTrue();
            assertThat(model.get((int) ((area.end() - 1) / G))).isTrue();
          }
          rounds++;
        } while (!writersDone.await(0, TimeUnit.MILLISECONDS));
        return rounds;
      });
      start.countDown();
      for (Future<?> f : done) {
        f.get(2, TimeUnit.MINUTES);
      }
      assertThat(reader.get(2, TimeUnit.MINUTES)).isPositive();
    } finally {
      pool.shutdownNow();
    }

    assertUnion(bitmap, model);
  }

  @Test
  void concurrentResetsOfOtherGranulesInTheSameWordsLoseNoSet() throws Exception {
    DirtyBitmap bitmap = new DirtyBitmap(SIZE, G);
    ExecutorService pool = Executors.newFixedThreadPool(THREADS);
    CountDownLatch start = new CountDownLatch(1);
    try {
      List<Future<?>> done = new ArrayList<>();
      for (int t = 0; t < THREADS; t++) {
        int thread = t;
        done.add(pool.submit(() -> {
          start.await();
          // Threads 0-3 set their stripe; threads 4-7 set and reset theirs, granule by granule, so
          // every word sees sets and resets of its other bits while a stripe is being marked.
          for (long i = thread; i < GRANULES; i += THREADS) {
            bitmap.set(i * G, G);
            if (thread >= 4) {
              bitmap.reset(i * G, G);
            }
          }
          return null;
        }));
      }
      start.countDown();
      for (Future<?> f : done) {
        f.get(2, TimeUnit.MINUTES);
      }
    } finally {
      pool.shutdownNow();
    }

    BitSet model = new BitSet(GRANULES);
    for (int i = 0; i < GRANULES; i++) {
      if (i % THREADS < 4) {
        model.set(i);
      }
    }
    assertUnion(bitmap, model);
  }

  /**
   * The lock-free path of set (granules already dirty return without the monitor) against the
   * resets that make it wrong if it read stale bits: one thread makes a page full, or mixed, then
   * resets one granule (by a partial reset, a whole-page reset or a clear) and hands it to another
   * thread, which sets it and must find it dirty. The hand-off is the only ordering, as a drain is
   * between a job's reset and the guest writes after it.
   */
  @Test
  void aSetAfterAResetOfItsGranuleAlwaysMarksIt() throws Exception {
    DirtyBitmap bitmap = new DirtyBitmap(SIZE, G);
    SynchronousQueue<Long> handOff = new SynchronousQueue<>();
    SynchronousQueue<Boolean> answer = new SynchronousQueue<>();
    ExecutorService pool = Executors.newFixedThreadPool(1);
    try {
      Future<?> setter = pool.submit(() -> {
        for (long g; (g = handOff.take()) >= 0; ) {
          bitmap.set(g * G, G);
          answer.put(bitmap.isDirty(g * G));
        }
        return null;
      });
      SplittableRandom r = new SplittableRandom(7);
      long pageBytes = (long) DirtyBitmap.PAGE_BITS * G;
      for (int round = 0; round < 20_000; round++) {
        long page = r.nextInt(4);
        long g = page * DirtyBitmap.PAGE_BITS + r.nextInt(DirtyBitmap.PAGE_BITS);
        bitmap.set(page * pageBytes, pageBytes); // the page is FULL: the fast path's best case
        switch (r.nextInt(4)) {
          case 0 -> bitmap.reset(g * G, G); // FULL to mixed
          case 1 -> bitmap.reset(page * pageBytes, pageBytes); // FULL to clean
          case 2 -> bitmap.clear();
          default -> {
            bitmap.reset(page * pageBytes, pageBytes); // mixed words, then one bit cleared in place
            bitmap.set(g / 64 * 64 * G, 64L * G);
            bitmap.reset(g * G, G);
          }
        }
        handOff.put(g);
        if (!answer.take()) {
          throw new AssertionError("round " + round + ": a set after the reset of granule " + g + " was lost");
        }
      }
      handOff.put(-1L);
      setter.get(1, TimeUnit.MINUTES);
    } finally {
      pool.shutdownNow();
    }
  }

  /** Every granule, the count, and both searches agree with the model. */
  static void assertUnion(DirtyBitmap bitmap, BitSet model) {
    assertThat(bitmap.count()).isEqualTo((long) model.cardinality() * G);
    for (int i = 0; i < GRANULES; i++) {
      if (bitmap.isDirty((long) i * G) != model.get(i)) {
        throw new AssertionError("granule " + i + ": bitmap " + !model.get(i) + ", union " + model.get(i));
      }
    }
    long expectedNext = model.nextSetBit(0) < 0 ? -1 : (long) model.nextSetBit(0) * G;
    assertThat(bitmap.nextDirty(0, SIZE)).isEqualTo(expectedNext);
    int clean = model.nextClearBit(0);
    assertThat(bitmap.nextClean(0, SIZE)).isEqualTo(clean >= GRANULES ? -1 : (long) clean * G);
    // The serialized form is the union too: the bits and the page summaries agree.
    DirtyBitmap back = DirtyBitmap.fromBytes(SIZE, G, bitmap.toBytes());
    assertThat(back.count()).isEqualTo(bitmap.count());
    assertThat(back.toBytes()).isEqualTo(bitmap.toBytes());
    byte[] expected = new byte[(GRANULES + 7) / 8];
    byte[] fromModel = model.toByteArray();
    System.arraycopy(fromModel, 0, expected, 0, fromModel.length);
    assertThat(bitmap.toBytes()).isEqualTo(expected);
  }
}
