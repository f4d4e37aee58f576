package dev.blockbackup.benchmarks;

import dev.blockbackup.formats.DirtyBitmap;
import java.lang.management.ManagementFactory;
import java.lang.management.MemoryMXBean;
import java.lang.ref.Reference;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.SplittableRandom;

/**
 * The heap DirtyBitmaps really take, beside their own accounting ({@link DirtyBitmap#heapBytes()}):
 *
 * <pre>java -cp benchmarks.jar dev.blockbackup.benchmarks.BitmapMemoryMain [scattered-bitmaps]</pre>
 *
 * <p>Builds, for a 1 TiB disk at 64 KiB granularity, N bitmaps (4 unless given) with 1% of the
 * granules dirty in random places, plus one fully dirty, the shape DirtyBitmapMemoryTest bounds.
 * Heap use is read from the MemoryMXBean after repeated System.gc() before and after building
 * them, so the growth is live data only; it includes what the accounting leaves out (the bitmap
 * objects themselves and the list holding them). Run it with a plain JVM (no -Xmx trickery): the
 * figure assumes compressed references, HotSpot's default below a 32 GiB heap.
 */
public final class BitmapMemoryMain {

  static final long TIB = 1L << 40;
  static final int GRANULARITY = 64 * 1024;

  private BitmapMemoryMain() {}

  public static void main(String[] args) {
    int scattered = args.length > 0 ? Integer.parseInt(args[0]) : 4;
    MemoryMXBean memory = ManagementFactory.getMemoryMXBean();
    long before = settledHeapUsed(memory);

    List<DirtyBitmap> bitmaps = new ArrayList<>();
    long granules = TIB / GRANULARITY;
    for (int i = 0; i < scattered; i++) {
      DirtyBitmap bitmap = new DirtyBitmap(TIB, GRANULARITY);
      SplittableRandom r = new SplittableRandom(i);
      for (long k = 0; k < granules / 100; k++) {
        bitmap.set(r.nextLong(granules) * GRANULARITY, GRANULARITY);
      }
      bitmaps.add(bitmap);
    }
    DirtyBitmap full = new DirtyBitmap(TIB, GRANULARITY);
    full.set(0, TIB);
    bitmaps.add(full);

    long after = settledHeapUsed(memory);
    long accounted = 0;
    for (DirtyBitmap b : bitmaps) {
      accounted += b.heapBytes();
    }
    System.out.printf(Locale.ROOT, "%d scattered (1%%) + 1 full bitmaps, 1 TiB at 64 KiB granularity%n", scattered);
    System.out.printf(Locale.ROOT, "accounted (heapBytes): %,d bytes (%.2f MiB)%n", accounted, accounted / 1048576.0);
    System.out.printf(Locale.ROOT, "measured heap growth:  %,d bytes (%.2f MiB)%n", after - before,
        (after - before) / 1048576.0);
    for (DirtyBitmap b : bitmaps) {
      System.out.printf(Locale.ROOT, "  %s heapBytes=%,d%n", b, b.heapBytes());
    }
    // Keep the bitmaps live until after the second reading.
    Reference.reachabilityFence(bitmaps);
  }

  /**
   * Heap in use once collections stop freeing anything: System.gc() is only a request, so repeat
   * it until two readings agree within 64 KiB (or ten rounds).
   */
  static long settledHeapUsed(MemoryMXBean memory) {
    long last = Long.MAX_VALUE;
    for (int i = 0; i < 10; i++) {
      System.gc();
      long used = memory.getHeapMemoryUsage().getUsed();
      if (Math.abs(last - used) < 64 * 1024) {
        return used;
      }
      last = used;
    }
    return last;
  }
}
