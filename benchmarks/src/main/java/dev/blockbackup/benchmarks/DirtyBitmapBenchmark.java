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
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.Warmup;

/**
 * DirtyBitmap on the size the issue names: a 1 TiB disk at 64 KiB granularity (16 Mi granules, a
 * 2 MiB bit array). {@code walkDirtyAreas} visits every dirty area of a bitmap with 0.01% random
 * dirty granules (about 1680), as the background copier walks its copy bitmap, so it measures how
 * well the summary levels skip the clean words between them. {@code setOneGranule} is the
 * per-guest-write cost of dirty tracking.
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
}
