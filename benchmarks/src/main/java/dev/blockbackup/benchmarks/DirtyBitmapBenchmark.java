package dev.blockbackup.benchmarks;

import dev.blockbackup.formats.DirtyBitmap;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.Warmup;
import org.roaringbitmap.longlong.PeekableLongIterator;
import org.roaringbitmap.longlong.Roaring64Bitmap;

/**
 * DirtyBitmap on the size the issue names: a 1 TiB disk at 64 KiB granularity (16 Mi granules, a
 * 2 MiB bit array). {@code walkDirtyAreas} visits every dirty area of a bitmap with 0.01% random
 * dirty granules (about 1680), as the background copier walks its copy bitmap, so it measures how
 * well the summary levels skip the clean words between them. {@code setOneGranule} is the
 * per-guest-write cost of dirty tracking.
 *
 * <p>The {@code scale*} benchmarks are a backup's copy bitmap at 8 TiB and 2 PiB (64 KiB granules:
 * 2^27 and 2^35 of them), for DirtyBitmap and for RoaringBitmap's Roaring64Bitmap, through one
 * small adapter: {@code scaleSetAllResetHalf} makes a bitmap, sets it all (sync=full's start) and
 * clears the middle half (the zero pass over a hole); {@code scaleNextDirtyWalk} visits 10,000
 * random dirty granules by next-dirty, as the copier does; {@code scaleCount} counts the dirty
 * granules of the middle half. A plain bit array (DirtyBitmap before pages) cannot make the 2 PiB
 * bitmap: it would be 4 GiB, past its limit.
 */
@BenchmarkMode(Mode.AverageTime)
@Warmup(iterations = 3, time = 2)
@Measurement(iterations = 5, time = 2)
@Fork(1)
public class DirtyBitmapBenchmark {

  static final long SIZE = 1L << 40;
  static final int GRANULARITY = 64 * 1024;
  static final long GRANULES = SIZE / GRANULARITY;

  @State(Scope.Benchmark)
  public static class Sparse {
    DirtyBitmap bitmap;

    @Setup
    public void setUp() {
      bitmap = new DirtyBitmap(SIZE, GRANULARITY);
      SplittableRandom r = new SplittableRandom(1);
      for (long i = 0; i < GRANULES / 10_000; i++) {
        bitmap.set(r.nextLong(GRANULES) * GRANULARITY, GRANULARITY);
      }
    }
  }

  @State(Scope.Thread)
  public static class Writes {
    DirtyBitmap bitmap;
    /** Offsets of random granules, cycled through so set() lands all over the bitmap. */
    long[] offsets;
    int next;

    @Setup
    public void setUp() {
      bitmap = new DirtyBitmap(SIZE, GRANULARITY);
      SplittableRandom r = new SplittableRandom(2);
      offsets = new long[1 << 16];
      for (int i = 0; i < offsets.length; i++) {
        offsets[i] = r.nextLong(GRANULES) * GRANULARITY;
      }
    }
  }

  /** Returns the number of areas visited, so the walk cannot be optimized away. */
  @Benchmark
  @OutputTimeUnit(TimeUnit.MICROSECONDS)
  public long walkDirtyAreas(Sparse s) {
    long areas = 0;
    long offset = 0;
    for (DirtyBitmap.Area a; (a = s.bitmap.nextDirtyArea(offset, SIZE, Long.MAX_VALUE)) != null; offset = a.end()) {
      areas++;
    }
    return areas;
  }

  @Benchmark
  @OutputTimeUnit(TimeUnit.NANOSECONDS)
  public void setOneGranule(Writes w) {
    w.bitmap.set(w.offsets[w.next++ & (w.offsets.length - 1)], GRANULARITY);
  }

  // ---- scale: DirtyBitmap against Roaring64Bitmap ----

  /** Granule-level operations both bitmaps offer. */
  interface Bits {
    void set(long from, long to);

    void reset(long from, long to);

    /** The first set granule at or after {@code from}, or -1. */
    long nextSet(long from);

    long count(long from, long to);
  }

  static Bits bits(String impl, long granules) {
    return switch (impl) {
      case "DirtyBitmap" -> new Bits() {
        final DirtyBitmap b = new DirtyBitmap(granules * GRANULARITY, GRANULARITY);

        @Override
        public void set(long from, long to) {
          b.set(from * GRANULARITY, (to - from) * GRANULARITY);
        }

        @Override
        public void reset(long from, long to) {
          b.reset(from * GRANULARITY, (to - from) * GRANULARITY);
        }

        @Override
        public long nextSet(long from) {
          long off = b.nextDirty(from * GRANULARITY, granules * GRANULARITY);
          return off < 0 ? -1 : off / GRANULARITY;
        }

        @Override
        public long count(long from, long to) {
          return b.count(from * GRANULARITY, (to - from) * GRANULARITY) / GRANULARITY;
        }
      };
      case "Roaring64Bitmap" -> new Bits() {
        final Roaring64Bitmap b = new Roaring64Bitmap();

        @Override
        public void set(long from, long to) {
          b.addRange(from, to);
        }

        @Override
        public void reset(long from, long to) {
          Roaring64Bitmap range = new Roaring64Bitmap();
          range.addRange(from, to);
          b.andNot(range);
        }

        @Override
        public long nextSet(long from) {
          PeekableLongIterator it = b.getLongIteratorFrom(from);
          return it.hasNext() ? it.peekNext() : -1;
        }

        @Override
        public long count(long from, long to) {
          return b.rankLong(to - 1) - (from == 0 ? 0 : b.rankLong(from - 1));
        }
      };
      default -> throw new IllegalArgumentException("impl " + impl);
    };
  }

  @State(Scope.Benchmark)
  public static class Scale {
    /** 8 TiB and 2 PiB. */
    @Param({"8796093022208", "2251799813685248"})
    long size;

    @Param({"DirtyBitmap", "Roaring64Bitmap"})
    String impl;

    long granules;

    @Setup
    public void setUp() {
      granules = size / GRANULARITY;
    }
  }

  @State(Scope.Benchmark)
  public static class ScaleSparse {
    @Param({"8796093022208", "2251799813685248"})
    long size;

    @Param({"DirtyBitmap", "Roaring64Bitmap"})
    String impl;

    long granules;
    Bits bits;

    @Setup
    public void setUp() {
      granules = size / GRANULARITY;
      bits = bits(impl, granules);
      SplittableRandom r = new SplittableRandom(3);
      for (int i = 0; i < 10_000; i++) {
        long g = r.nextLong(granules);
        bits.set(g, g + 1);
      }
    }
  }

  @Benchmark
  @OutputTimeUnit(TimeUnit.MICROSECONDS)
  public long scaleSetAllResetHalf(Scale s) {
    Bits b = bits(s.impl, s.granules);
    b.set(0, s.granules);
    b.reset(s.granules / 4, s.granules / 4 * 3);
    return b.count(0, s.granules);
  }

  @Benchmark
  @OutputTimeUnit(TimeUnit.MICROSECONDS)
  public long scaleNextDirtyWalk(ScaleSparse s) {
    long n = 0;
    for (long g = s.bits.nextSet(0); g >= 0; g = g + 1 < s.granules ? s.bits.nextSet(g + 1) : -1) {
      n++;
    }
    return n;
  }

  @Benchmark
  @OutputTimeUnit(TimeUnit.MICROSECONDS)
  public long scaleCount(ScaleSparse s) {
    return s.bits.count(s.granules / 4, s.granules / 4 * 3);
  }
}
