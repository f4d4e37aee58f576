package dev.blockbackup.formats;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.testkit.Property;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.BitSet;
import java.util.List;
import java.util.SplittableRandom;
import java.util.TreeSet;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.Test;

class DirtyBitmapTest {

  static final long KIB = 1024;
  static final long TIB = 1L << 40;

  /** The disk every op of one try runs on; carried by each op so shrinking cannot lose it. */
  record Shape(long size, int granularity) {}

  sealed interface Op permits Set, Reset, Merge, Clear, SetAll, Copy {
    Shape shape();

    /** Seeds the random probes checked after the op. */
    long probe();
  }

  record Set(Shape shape, long probe, long offset, long length) implements Op {}

  record Reset(Shape shape, long probe, long offset, long length) implements Op {}

  /** Merges a bitmap with the given byte ranges set (pairs offset, length). */
  record Merge(Shape shape, long probe, List<long[]> ranges) implements Op {
    @Override
    public String toString() {
      return "Merge[" + shape + ", probe=" + probe + ", ranges="
          + ranges.stream().map(Arrays::toString).toList() + "]";
    }
  }

  record Clear(Shape shape, long probe) implements Op {}

  record SetAll(Shape shape, long probe) implements Op {}

  /** Continues on a copy (and checks the original is not touched by a later change to the copy). */
  record Copy(Shape shape, long probe) implements Op {}

  static Shape shape(SplittableRandom r) {
    int g = new int[] {512, 4096, 65536}[r.nextInt(3)];
    // Small disks hit the edges; large ones (above 64 × 4096 granules) use every summary level.
    long granules = switch (r.nextInt(8)) {
      case 0, 1 -> r.nextInt(1, 4);
      case 2, 3 -> r.nextInt(200_000, 600_000);
      default -> r.nextInt(1, 10_000);
    };
    long size = granules * g;
    if (r.nextBoolean()) {
      size -= r.nextInt(1, g); // a last granule cut short
    }
    return new Shape(size, g);
  }

  /** A byte range inside the disk; mostly short, sometimes empty, sometimes most of the disk. */
  static long[] range(SplittableRandom r, long size) {
    long off = r.nextLong(size);
    long max = size - off;
    long len = switch (r.nextInt(6)) {
      case 0 -> 0;
      case 1 -> max;
      case 2 -> r.nextLong(max) + 1;
      default -> r.nextLong(Math.min(max, 3 * 65536)) + 1;
    };
    return new long[] {off, len};
  }

  /** A granule-aligned range, possibly ending at the size inside the last granule. */
  static long[] alignedRange(SplittableRandom r, Shape s) {
    long granules = (s.size() + s.granularity() - 1) / s.granularity();
    long first = r.nextLong(granules);
    long count = r.nextInt(3) == 0 ? granules - first : r.nextLong(Math.min(granules - first, 200)) + 1;
    long off = first * s.granularity();
    long len = Math.min(count * s.granularity(), s.size() - off);
    return new long[] {off, len};
  }

  static List<Op> ops(SplittableRandom r) {
    Shape s = shape(r);
    List<Op> ops = new ArrayList<>();
    int n = r.nextInt(1, 30);
    for (int i = 0; i < n; i++) {
      long probe = r.nextLong();
      int kind = r.nextInt(20);
      if (kind < 9) {
        long[] rg = range(r, s.size());
        ops.add(new Set(s, probe, rg[0], rg[1]));
      } else if (kind < 14) {
        long[] rg = alignedRange(r, s);
        ops.add(new Reset(s, probe, rg[0], rg[1]));
      } else if (kind < 16) {
        List<long[]> ranges = new ArrayList<>();
        for (int k = r.nextInt(4); k > 0; k--) {
          ranges.add(range(r, s.size()));
        }
        ops.add(new Merge(s, probe, ranges));
      } else if (kind < 17) {
        ops.add(new Clear(s, probe));
      } else if (kind < 18) {
        ops.add(new SetAll(s, probe));
      } else {
        ops.add(new Copy(s, probe));
      }
    }
    return ops;
  }

  /** The model: a BitSet of dirty granules, set/reset as QEMU rounds them. */
  static void modelSet(BitSet model, Shape s, long off, long len) {
    if (len > 0) {
      model.set((int) (off / s.granularity()), (int) ((off + len - 1) / s.granularity()) + 1);
    }
  }

  @Test
  void randomSetResetMergeClearMatchABitSetModel() {
    Property.check("DirtyBitmap matches a BitSet of granules", 200, DirtyBitmapTest::ops, ops -> {
      if (ops.isEmpty()) {
        return;
      }
      Shape s = ops.get(0).shape();
      int g = s.granularity();
      DirtyBitmap bitmap = new DirtyBitmap(s.size(), g);
      BitSet model = new BitSet();
      for (Op op : ops) {
        if (op instanceof Set set) {
          bitmap.set(set.offset(), set.length());
          modelSet(model, s, set.offset(), set.length());
        } else if (op instanceof Reset reset) {
          bitmap.reset(reset.offset(), reset.length());
          if (reset.length() > 0) {
            model.clear((int) (reset.offset() / g), (int) ((reset.offset() + reset.length() - 1) / g) + 1);
          }
        } else if (op instanceof Merge merge) {
          DirtyBitmap other = new DirtyBitmap(s.size(), g);
          for (long[] rg : merge.ranges()) {
            other.set(rg[0], rg[1]);
            modelSet(model, s, rg[0], rg[1]);
          }
          bitmap.merge(other);
        } else if (op instanceof Clear) {
          bitmap.clear();
          model.clear();
        } else if (op instanceof SetAll) {
          bitmap.setAll();
          modelSet(model, s, 0, s.size());
        } else if (op instanceof Copy) {
          DirtyBitmap copy = bitmap.copy();
          byte[] before = bitmap.toBytes();
          copy.setAll();
          assertThat(bitmap.toBytes()).as("original after its copy changed").isEqualTo(before);
          copy.clear();
          copy.merge(bitmap);
          bitmap = copy;
        }
        checkAgainstModel(bitmap, model, s, new SplittableRandom(op.probe()));
      }
    });
  }

  static void checkAgainstModel(DirtyBitmap bitmap, BitSet model, Shape s, SplittableRandom r) {
    long size = s.size();
    int g = s.granularity();
    int granules = (int) ((size + g - 1) / g);
    for (int i = 0; i < 8; i++) {
      long p = r.nextLong(size);
      assertThat(bitmap.isDirty(p)).as("isDirty(%d)", p).isEqualTo(model.get((int) (p / g)));
    }
    assertThat(bitmap.count()).as("count()").isEqualTo(modelCount(model, s, 0, size));
    for (int i = 0; i < 4; i++) {
      long[] rg = range(r, size);
      assertThat(bitmap.count(rg[0], rg[1])).as("count(%d, %d)", rg[0], rg[1])
          .isEqualTo(modelCount(model, s, rg[0], rg[1]));
    }
    for (int i = 0; i < 6; i++) {
      long off = r.nextLong(size + 1);
      long end = r.nextInt(4) == 0 ? Long.MAX_VALUE : r.nextLong(size + g + 1);
      long limit = Math.min(end, size);
      long dirty = modelNext(model.nextSetBit((int) (off / g)), off, limit, g);
      long clean = modelNext(model.nextClearBit((int) (off / g)), off, limit, g);
      assertThat(bitmap.nextDirty(off, end)).as("nextDirty(%d, %d)", off, end).isEqualTo(dirty);
      assertThat(bitmap.nextClean(off, end)).as("nextClean(%d, %d)", off, end).isEqualTo(clean);
      long maxLength = r.nextBoolean() ? Long.MAX_VALUE : r.nextLong(1, 8L * g);
      DirtyBitmap.Area area = bitmap.nextDirtyArea(off, end, maxLength);
      if (dirty < 0) {
        assertThat(area).as("nextDirtyArea(%d, %d, %d)", off, end, maxLength).isNull();
      } else {
        long areaEnd = dirty + Math.min(maxLength, limit - dirty);
        long stop = modelNext(model.nextClearBit((int) (dirty / g)), dirty, areaEnd, g);
        long length = (stop < 0 ? areaEnd : stop) - dirty;
        assertThat(area).as("nextDirtyArea(%d, %d, %d)", off, end, maxLength)
            .isEqualTo(new DirtyBitmap.Area(dirty, length));
      }
    }
    byte[] bytes = bitmap.toBytes();
    assertThat(bytes).as("toBytes").isEqualTo(Arrays.copyOf(model.toByteArray(), (granules + 7) / 8));
    DirtyBitmap back = DirtyBitmap.fromBytes(size, g, bytes);
    assertThat(back.toBytes()).isEqualTo(bytes);
    assertThat(back.count()).isEqualTo(bitmap.count());
    long off = r.nextLong(size);
    assertThat(back.nextDirty(off, size)).isEqualTo(bitmap.nextDirty(off, size));
  }

  /** The byte the model's next granule gives: its start, or off when it is off's own granule; -1 past limit. */
  static long modelNext(int granule, long off, long limit, int g) {
    if (off >= limit || granule < 0) {
      return -1;
    }
    long start = Math.max((long) granule * g, off);
    return start < limit ? start : -1;
  }

  /** Dirty bytes of [off, off+len) in the model: the two edge granules by overlap, whole granules between. */
  static long modelCount(BitSet model, Shape s, long off, long len) {
    if (len == 0) {
      return 0;
    }
    long g = s.granularity();
    long end = off + len;
    int first = (int) (off / g);
    int last = (int) ((end - 1) / g);
    long n = last - first > 1 ? model.get(first + 1, last).cardinality() * g : 0;
    for (int i : first == last ? new int[] {first} : new int[] {first, last}) {
      if (model.get(i)) {
        n += Math.min(Math.min((i + 1) * g, s.size()), end) - Math.max(i * g, off);
      }
    }
    return n;
  }

  @Test
  void aLoneDirtyGranuleNearTheEndOfOneTebibyteIsFoundFromZero() {
    int g = 64 * 1024;
    DirtyBitmap bitmap = new DirtyBitmap(TIB, g);
    long target = TIB - 3L * g;
    bitmap.set(target + 100, 1);
    assertThat(bitmap.nextDirty(0, TIB)).isEqualTo(target);
    assertThat(bitmap.nextDirtyArea(0, Long.MAX_VALUE, Long.MAX_VALUE)).isEqualTo(new DirtyBitmap.Area(target, g));
    assertThat(bitmap.nextDirty(target + g, TIB)).isEqualTo(-1);
    assertThat(bitmap.nextDirty(0, target)).isEqualTo(-1);
    assertThat(bitmap.nextClean(target, TIB)).isEqualTo(target + g);
    assertThat(bitmap.count()).isEqualTo(g);
    assertThat(bitmap.count(target - g, 3L * g)).isEqualTo(g);
  }

  @Test
  void walkingASparseTebibyteBitmapVisitsEveryDirtyAreaInOrder() {
    int g = 64 * 1024;
    DirtyBitmap bitmap = new DirtyBitmap(TIB, g);
    SplittableRandom r = new SplittableRandom(42);
    TreeSet<Long> dirty = new TreeSet<>();
    while (dirty.size() < 2000) {
      long granule = r.nextLong(TIB / g);
      dirty.add(granule);
      bitmap.set(granule * g, g);
    }
    // Expected areas: runs of consecutive granules, cut at maxLength (4 granules).
    List<DirtyBitmap.Area> expected = new ArrayList<>();
    long runStart = -1;
    long prev = -2;
    for (long granule : dirty) {
      if (granule != prev + 1) {
        if (runStart >= 0) {
          addCut(expected, runStart * g, (prev + 1) * g, 4L * g);
        }
        runStart = granule;
      }
      prev = granule;
    }
    addCut(expected, runStart * g, (prev + 1) * g, 4L * g);

    List<DirtyBitmap.Area> walked = new ArrayList<>();
    long offset = 0;
    for (DirtyBitmap.Area a; (a = bitmap.nextDirtyArea(offset, TIB, 4L * g)) != null; offset = a.end()) {
      walked.add(a);
    }
    assertThat(walked).isEqualTo(expected);
    assertThat(bitmap.count()).isEqualTo(dirty.size() * (long) g);
  }

  static void addCut(List<DirtyBitmap.Area> out, long start, long end, long max) {
    for (long s = start; s < end; s += max) {
      out.add(new DirtyBitmap.Area(s, Math.min(max, end - s)));
    }
  }

  @Test
  void granularityMustBeAPowerOfTwoOfAtLeast512() {
    for (int bad : new int[] {0, -512, 256, 511, 513, 3000, 65535}) {
      assertThatThrownBy(() -> new DirtyBitmap(1 << 20, bad))
          .isInstanceOf(IllegalArgumentException.class)
          .hasMessageContaining("(" + bad + ")")
          .hasMessageContaining("512");
    }
    assertThat(new DirtyBitmap(1 << 20, 512).granularity()).isEqualTo(512);
    assertThat(new DirtyBitmap(1 << 20, 1 << 30).granularity()).isEqualTo(1 << 30);
  }

  @Test
  void moreGranulesThanTheLimitAreRefusedNamingSizeAndLimit() {
    long size = (DirtyBitmap.MAX_GRANULES + 1) * 512;
    assertThatThrownBy(() -> new DirtyBitmap(size, 512))
        .isInstanceOf(IllegalArgumentException.class)
        .hasMessageContaining(String.valueOf(size))
        .hasMessageContaining(String.valueOf(DirtyBitmap.MAX_GRANULES));
    assertThatThrownBy(() -> DirtyBitmap.checkGeometry(size, 512))
        .isInstanceOf(IllegalArgumentException.class)
        .hasMessageContaining("more than the limit");
  }

  @Test
  void aBitmapTooLargeForOneByteArrayIsRefusedBySerialisationOnly() {
    long size = (DirtyBitmap.MAX_SERIALIZED_GRANULES + 64) * 512;
    DirtyBitmap b = new DirtyBitmap(size, 512);
    b.set(size - 1, 1);
    assertThat(b.count()).isEqualTo(512);
    assertThatThrownBy(b::toBytes)
        .isInstanceOf(IllegalStateException.class)
        .hasMessageContaining(String.valueOf(DirtyBitmap.MAX_SERIALIZED_GRANULES));
  }

  /** 2 PiB at 64 KiB is 2^35 granules: 4 GiB as a plain bit array, a few MiB here while whole pages are alike. */
  @Test
  void aTwoPebibyteCopyBitmapSetsResetsAndSearchesWholePages() {
    long size = 1L << 51;
    int g = 64 * 1024;
    DirtyBitmap b = new DirtyBitmap(size, g);
    b.setAll();
    assertThat(b.count()).isEqualTo(size);
    assertThat(b.nextClean(0, size)).isEqualTo(-1);
    long holeStart = 3 * TIB + 5L * g;
    long holeLength = 700 * TIB;
    b.reset(holeStart, holeLength);
    assertThat(b.count()).isEqualTo(size - holeLength);
    assertThat(b.count(holeStart - g, holeLength + 2L * g)).isEqualTo(2L * g);
    assertThat(b.nextClean(0, size)).isEqualTo(holeStart);
    assertThat(b.nextDirty(holeStart, size)).isEqualTo(holeStart + holeLength);
    assertThat(b.nextDirtyArea(0, size, Long.MAX_VALUE)).isEqualTo(new DirtyBitmap.Area(0, holeStart));
    assertThat(b.isDirty(holeStart - 1)).isTrue();
    assertThat(b.isDirty(holeStart)).isFalse();
    DirtyBitmap copy = b.copy();
    b.reset(0, size);
    assertThat(b.count()).isZero();
    assertThat(b.nextDirty(0, size)).isEqualTo(-1);
    assertThat(copy.count()).isEqualTo(size - holeLength);
    b.set(size - 1, 1);
    b.merge(copy);
    assertThat(b.count()).isEqualTo(size - holeLength);
    assertThat(b.nextDirtyArea(holeStart, size, 1L << 40)).isEqualTo(new DirtyBitmap.Area(holeStart + holeLength, 1L << 40));
  }

  /** A page that fills up granule by granule, then empties, behaves as one set or reset whole. */
  @Test
  void aPageFilledAndEmptiedGranuleByGranuleMatchesWholePageChanges() {
    int g = 512;
    long pageBytes = (long) DirtyBitmap.PAGE_BITS * g;
    long size = 3 * pageBytes - 100;
    DirtyBitmap b = new DirtyBitmap(size, g);
    for (long off = pageBytes; off < 2 * pageBytes; off += g) {
      b.set(off, 1);
    }
    assertThat(b.count()).isEqualTo(pageBytes);
    assertThat(b.nextDirtyArea(0, size, Long.MAX_VALUE)).isEqualTo(new DirtyBitmap.Area(pageBytes, pageBytes));
    assertThat(b.nextClean(pageBytes, size)).isEqualTo(2 * pageBytes);
    b.set(2 * pageBytes, size - 2 * pageBytes);
    assertThat(b.count()).isEqualTo(size - pageBytes);
    assertThat(b.nextClean(pageBytes, size)).isEqualTo(-1);
    for (long off = pageBytes; off < 2 * pageBytes; off += g) {
      b.reset(off, g);
    }
    assertThat(b.count()).isEqualTo(size - 2 * pageBytes);
    assertThat(b.nextDirty(0, size)).isEqualTo(2 * pageBytes);
    byte[] bytes = b.toBytes();
    assertThat(DirtyBitmap.fromBytes(size, g, bytes).count()).isEqualTo(size - 2 * pageBytes);
  }

  @Test
  void aFullBitmapCountsExactlyTheSizeWhenTheLastGranuleIsShort() {
    DirtyBitmap bitmap = new DirtyBitmap(10_000, 4096);
    bitmap.setAll();
    assertThat(bitmap.count()).isEqualTo(10_000);
    assertThat(bitmap.toBytes()).containsExactly(0b111);
    assertThat(bitmap.nextClean(0, Long.MAX_VALUE)).isEqualTo(-1);
  }

  @Test
  void resetRefusesUnalignedRangesExceptAtTheEnd() {
    DirtyBitmap bitmap = new DirtyBitmap(10_000, 4096);
    bitmap.setAll();
    assertThatThrownBy(() -> bitmap.reset(100, 4096))
        .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("4096");
    assertThatThrownBy(() -> bitmap.reset(0, 5000))
        .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("[0, +5000)");
    bitmap.reset(100, 0); // empty: nothing to align, as hbitmap_reset
    assertThat(bitmap.count()).isEqualTo(10_000);
    bitmap.reset(8192, 10_000 - 8192);
    assertThat(bitmap.isDirty(9_999)).isFalse();
    assertThat(bitmap.count()).isEqualTo(8192);
  }

  @Test
  void rangesOutsideTheDiskAreRejected() {
    DirtyBitmap bitmap = new DirtyBitmap(1 << 20, 4096);
    assertThatThrownBy(() -> bitmap.set(1 << 20, 1)).isInstanceOf(IllegalArgumentException.class)
        .hasMessageContaining("1048576");
    assertThatThrownBy(() -> bitmap.set(-1, 1)).isInstanceOf(IllegalArgumentException.class);
    assertThatThrownBy(() -> bitmap.set(4096, Long.MAX_VALUE)).isInstanceOf(IllegalArgumentException.class);
    assertThatThrownBy(() -> bitmap.isDirty(1 << 20)).isInstanceOf(IllegalArgumentException.class);
    assertThatThrownBy(() -> bitmap.nextDirtyArea(0, 1 << 20, 0)).isInstanceOf(IllegalArgumentException.class);
  }

  @Test
  void toBytesPutsGranuleIInByteIOver8AtBitIMod8() {
    // qcow2.md §1.10's check: 64 MiB at 64 KiB, writes at 0, 1 MiB, 10 MiB → bytes 0, 2, 20 are 01.
    DirtyBitmap bitmap = new DirtyBitmap(64L << 20, 64 * 1024);
    bitmap.set(0, 1);
    bitmap.set(1L << 20, 4096);
    bitmap.set(10L << 20, 4096);
    byte[] bytes = bitmap.toBytes();
    assertThat(bytes).hasSize(128);
    byte[] expected = new byte[128];
    expected[0] = 1;
    expected[2] = 1;
    expected[20] = 1;
    assertThat(bytes).isEqualTo(expected);
    // Same writes at 1 MiB granularity: byte 0 = 03, byte 1 = 04.
    DirtyBitmap coarse = new DirtyBitmap(64L << 20, 1 << 20);
    coarse.set(0, 1);
    coarse.set(1L << 20, 4096);
    coarse.set(10L << 20, 4096);
    assertThat(coarse.toBytes()).startsWith((byte) 0x03, (byte) 0x04).hasSize(8);
  }

  @Test
  void fromBytesRefusesAWrongLengthAndSetTailBits() {
    // 10 granules: 2 bytes, the last using bits 0-1 only.
    long size = 10 * 512 - 7;
    assertThatThrownBy(() -> DirtyBitmap.fromBytes(size, 512, new byte[3]))
        .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("3 bytes, expected 2");
    assertThatThrownBy(() -> DirtyBitmap.fromBytes(size, 512, new byte[1]))
        .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("expected 2");
    assertThatThrownBy(() -> DirtyBitmap.fromBytes(size, 512, new byte[] {0, 0b100}))
        .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("past granule 10");
    DirtyBitmap ok = DirtyBitmap.fromBytes(size, 512, new byte[] {(byte) 0x81, 0b10});
    assertThat(ok.count()).isEqualTo(512 + 512 + (size - 9 * 512));
    assertThat(ok.nextDirty(512, size)).isEqualTo(7 * 512);
    assertThat(ok.nextDirty(1, size)).as("inside a dirty granule: the offset itself").isEqualTo(1);
  }

  @Test
  void mergeRefusesADifferentSizeOrGranularity() {
    DirtyBitmap a = new DirtyBitmap(1 << 20, 4096);
    assertThatThrownBy(() -> a.merge(new DirtyBitmap(1 << 21, 4096)))
        .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("2097152");
    assertThatThrownBy(() -> a.merge(new DirtyBitmap(1 << 20, 512)))
        .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("granularity 512");
  }

  @Test
  void fourThreadsSettingInterleavedGranulesLoseNoBit() throws Exception {
    int g = 4096;
    int granules = 1 << 16;
    DirtyBitmap bitmap = new DirtyBitmap((long) granules * g, g);
    DirtyBitmap other = new DirtyBitmap((long) granules * g, g);
    ExecutorService pool = Executors.newFixedThreadPool(4);
    CountDownLatch start = new CountDownLatch(1);
    try {
      List<Future<?>> done = new ArrayList<>();
      for (int t = 0; t < 4; t++) {
        int thread = t;
        done.add(pool.submit(() -> {
          start.await();
          // Threads share every word (granule i goes to thread i % 4), so a lost update would show.
          for (int i = thread; i < granules; i += 4) {
            bitmap.set((long) i * g, g);
            if (thread == 0 && i % 1024 == 0) {
              bitmap.merge(other); // takes both locks while the others set
              other.merge(bitmap);
            }
          }
          return null;
        }));
      }
      start.countDown();
      for (Future<?> f : done) {
        f.get();
      }
    } finally {
      pool.shutdown();
    }
    assertThat(bitmap.count()).isEqualTo((long) granules * g);
    assertThat(bitmap.nextClean(0, Long.MAX_VALUE)).isEqualTo(-1);
  }
}
