package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.WriteFlag;
import dev.blockbackup.testkit.Property;
import dev.blockbackup.testkit.QemuImg;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Random operation sequences and concurrent writers against a plain byte-array model. */
@Tag("interop")
class Qcow2RandomOpsTest {

  @TempDir Path dir;

  sealed interface Op permits Init, Write, Zero, Discard, Compressed, Flush, Reopen, Crash {}

  /** A copy of the file as a killed process would leave it: check may find leaks, never corruption. */
  record Crash() implements Op {}

  /** The image the operations run on; when shrinking deletes it, a default big enough for any op. */
  record Init(int clusterSize, long size, boolean backing, int l2Tables) implements Op {}

  private static final Init DEFAULT = new Init(4096, 2L << 20, false, 0);

  record Write(long offset, int length, long seed) implements Op {}

  record Zero(long offset, int length, boolean mayUnmap) implements Op {}

  record Discard(long offset, int length) implements Op {}

  record Compressed(long cluster, long seed) implements Op {}

  record Flush() implements Op {}

  record Reopen() implements Op {}

  static List<Op> ops(SplittableRandom r) {
    int cs = new int[] {512, 4096, 65536}[r.nextInt(3)];
    long size = (1 + r.nextInt(16)) * 65536L + (r.nextBoolean() ? 512 * r.nextInt(1, 100) : 0);
    boolean backing = r.nextBoolean();
    List<Op> ops = new ArrayList<>();
    // sometimes an L2 cache of two tables, so that dirty tables get evicted (512-byte clusters: one
    // table maps 32 KiB)
    ops.add(new Init(cs, size, backing, cs == 512 && r.nextBoolean() ? 2 : 0));
    int n = r.nextInt(1, 40);
    for (int i = 0; i < n; i++) {
      long off = r.nextLong(size);
      int len = (int) r.nextLong(1, Math.min(size - off, 3L * cs + 5000) + 1);
      switch (r.nextInt(12)) {
        case 0, 1 -> ops.add(new Zero(off, len, r.nextBoolean()));
        case 2 -> ops.add(new Discard(off, len));
        case 3, 4 -> ops.add(new Compressed(r.nextLong((size + cs - 1) / cs), r.nextLong()));
        case 5 -> ops.add(new Flush());
        case 6 -> ops.add(r.nextBoolean() ? new Reopen() : new Crash());
        default -> ops.add(new Write(off, len, r.nextLong()));
      }
    }
    return ops;
  }

  static byte[] data(long seed, int len) {
    byte[] b = new byte[len];
    SplittableRandom r = new SplittableRandom(seed);
    // half the time compressible data
    if ((seed & 1) == 0) {
      for (int i = 0; i < len; i++) {
        b[i] = (byte) r.nextInt(4);
      }
    } else {
      for (int i = 0; i < len; i++) {
        b[i] = (byte) r.nextInt();
      }
    }
    return b;
  }

  @Test
  void randomOperationsMatchTheModelAndStayClean() {
    Property.check("qcow2 matches a byte-array model", 25, Qcow2RandomOpsTest::ops, this::run);
  }

  private void run(List<Op> ops) throws Exception {
    Init s = !ops.isEmpty() && ops.get(0) instanceof Init i ? i : DEFAULT;
    Path work = Files.createTempDirectory(dir, "run");
    Path p = work.resolve("img.qcow2");
    Path flat = work.resolve("flat.raw");
    int cs = s.clusterSize();
    long size = s.size();
    byte[] model = new byte[(int) size];
    Qcow2CreateOptions o = Qcow2CreateOptions.of(size).withClusterSize(cs);
    if (s.backing()) {
      Path base = work.resolve("base.raw");
      long bsize = size / 2 / 512 * 512;
      byte[] b = data(42, (int) bsize);
      Files.write(base, b);
      System.arraycopy(b, 0, model, 0, b.length);
      o = o.withBacking("base.raw", "raw");
      if (cs == 4096) {
        // a qcow2 middle layer over the raw base, with some data of its own
        Path mid = work.resolve("mid.qcow2");
        try (Qcow2Image m = Qcow2Image.create(mid, Qcow2CreateOptions.of(bsize + 65536).withClusterSize(512)
            .withBacking("base.raw", "raw"))) {
          byte[] md = data(43, 70_000);
          long at = Math.min(bsize + 65536 - md.length, 30_000);
          m.write(at, ByteBuffer.wrap(md));
          // the middle layer is larger than the overlay: only what lies inside the overlay shows
          System.arraycopy(md, 0, model, (int) at, (int) Math.max(0, Math.min(md.length, size - at)));
          m.writeZeroes(0, 4096);
          Arrays.fill(model, 0, 4096, (byte) 0);
        }
        o = o.withBacking("mid.qcow2", "qcow2");
      }
    }
    Qcow2Image img = Qcow2Image.create(p, o);
    if (s.l2Tables() > 0) {
      img.close();
      img = Qcow2Image.openWithSmallCache(p, false, s.l2Tables());
    }
    try {
      for (Op op : ops) {
        if (op instanceof Init) {
          continue;
        } else if (op instanceof Write w) {
          byte[] d = data(w.seed(), w.length());
          img.write(w.offset(), ByteBuffer.wrap(d));
          System.arraycopy(d, 0, model, (int) w.offset(), d.length);
        } else if (op instanceof Zero z) {
          img.writeZeroes(z.offset(), z.length(), z.mayUnmap() ? new WriteFlag[] {WriteFlag.MAY_UNMAP} : new WriteFlag[0]);
          Arrays.fill(model, (int) z.offset(), (int) (z.offset() + z.length()), (byte) 0);
        } else if (op instanceof Discard d) {
          img.discard(d.offset(), d.length());
          long end = d.offset() + d.length();
          long fw = (d.offset() + cs - 1) / cs * cs;
          long ew = end == size ? size : end / cs * cs;
          if (fw < ew) {
            Arrays.fill(model, (int) fw, (int) ew, (byte) 0);
          }
        } else if (op instanceof Compressed c) {
          long off = c.cluster() * cs;
          int len = (int) Math.min(cs, size - off);
          byte[] d = data(c.seed(), len);
          boolean allocated = img.blockStatus(off, len).get(0).allocated();
          try {
            img.writeCompressed(off, ByteBuffer.wrap(d));
            System.arraycopy(d, 0, model, (int) off, len);
          } catch (dev.blockbackup.formats.BlockIOException e) {
            assertThat(e.error()).isEqualTo(dev.blockbackup.formats.BlockError.EIO);
            assertThat(allocated).as("compressed write refused on an unallocated cluster: %s", e.getMessage()).isTrue();
          }
        } else if (op instanceof Flush) {
          img.flush();
        } else if (op instanceof Crash) {
          Path copy = work.resolve("crash.qcow2");
          Files.copy(p, copy, java.nio.file.StandardCopyOption.REPLACE_EXISTING);
          QemuImg.Result c = QemuImg.img("check", "-f", "qcow2", copy);
          assertThat(c.exit()).as("check of a crashed copy: %s%s", c.out(), c.err()).isIn(0, 3);
        } else if (op instanceof Reopen) {
          img.close();
          img = s.l2Tables() > 0 ? Qcow2Image.openWithSmallCache(p, false, s.l2Tables()) : Qcow2Image.open(p, false);
        }
      }
      ByteBuffer all = ByteBuffer.allocate((int) size);
      img.read(0, all);
      assertThat(all.array()).isEqualTo(model);
      // block status covers the image in order, and zero extents read as zero
      long pos = 0;
      while (pos < size) {
        List<Extent> st = img.blockStatus(pos, size - pos);
        for (Extent e : st) {
          assertThat(e.offset()).isEqualTo(pos);
          if (e.zero()) {
            for (long i = e.offset(); i < e.end(); i++) {
              if (model[(int) i] != 0) {
                throw new AssertionError("extent " + e + " says zero but byte " + i + " is " + model[(int) i]);
              }
            }
          }
          pos = e.end();
        }
      }
    } finally {
      img.close();
    }
    QemuImg.assertCheckClean(p);
    try (RawImage raw = RawImage.create(flat, size)) {
      raw.write(0, ByteBuffer.wrap(model));
    }
    QemuImg.assertIdentical(p, "qcow2", flat, "raw");
  }

  @Test
  void concurrentWritersToTheSameUnallocatedClustersAllocateOnce() throws Exception {
    for (int round = 0; round < 5; round++) {
      Path p = dir.resolve("c" + round + ".qcow2");
      Path flat = dir.resolve("c" + round + ".raw");
      int cs = 65536;
      long size = 64L * cs;
      byte[] model = new byte[(int) size];
      int writers = 8;
      // each writer owns every 8th 4 KiB block, so all writers hit every cluster at once
      try (Qcow2Image img = Qcow2Image.create(p, Qcow2CreateOptions.of(size))) {
        ExecutorService pool = Executors.newFixedThreadPool(writers);
        CountDownLatch go = new CountDownLatch(1);
        List<Future<?>> fs = new ArrayList<>();
        for (int w = 0; w < writers; w++) {
          int me = w;
          byte[] d = new byte[4096];
          Arrays.fill(d, (byte) (me + 1));
          for (long b = me; b < size / 4096; b += writers) {
            System.arraycopy(d, 0, model, (int) (b * 4096), 4096);
          }
          fs.add(pool.submit(() -> {
            go.await();
            for (long b = me; b < size / 4096; b += writers) {
              img.write(b * 4096, ByteBuffer.wrap(d));
            }
            return null;
          }));
        }
        go.countDown();
        for (Future<?> f : fs) {
          f.get();
        }
        pool.shutdown();
        ByteBuffer all = ByteBuffer.allocate((int) size);
        img.read(0, all);
        assertThat(all.array()).isEqualTo(model);
        // every guest cluster got exactly one host cluster: 64 data + L2 + 4 initial
        assertThat(img.info().hostClustersInUse()).isEqualTo(64 + 1 + 4);
      }
      QemuImg.assertCheckClean(p);
      try (RawImage raw = RawImage.create(flat, size)) {
        raw.write(0, ByteBuffer.wrap(model));
      }
      QemuImg.assertIdentical(p, "qcow2", flat, "raw");
    }
  }

  @Test
  void concurrentMixedOperationsOnDisjointRangesStayConsistent() throws Exception {
    Path p = dir.resolve("m.qcow2");
    Path flat = dir.resolve("m.raw");
    int cs = 4096;
    long size = 8L << 20;
    byte[] model = new byte[(int) size];
    int workers = 8;
    long slice = size / workers;
    try (Qcow2Image img = Qcow2Image.create(p, Qcow2CreateOptions.of(size).withClusterSize(cs))) {
      ExecutorService pool = Executors.newFixedThreadPool(workers);
      List<Future<?>> fs = new ArrayList<>();
      for (int w = 0; w < workers; w++) {
        long base = w * slice;
        int me = w;
        fs.add(pool.submit(() -> {
          SplittableRandom r = new SplittableRandom(me);
          for (int i = 0; i < 200; i++) {
            long off = base + r.nextLong(slice - 20000);
            int len = r.nextInt(1, 20000);
            int kind = r.nextInt(10);
            if (kind == 0) {
              img.writeZeroes(off, len, WriteFlag.MAY_UNMAP);
              synchronized (model) {
                Arrays.fill(model, (int) off, (int) off + len, (byte) 0);
              }
            } else if (kind == 1) {
              img.discard(off, len);
              long fw = (off + cs - 1) / cs * cs;
              long ew = (off + len) / cs * cs;
              if (fw < ew) {
                synchronized (model) {
                  Arrays.fill(model, (int) fw, (int) ew, (byte) 0);
                }
              }
            } else {
              byte[] d = data(r.nextLong(), len);
              img.write(off, ByteBuffer.wrap(d), i % 50 == 0 ? new WriteFlag[] {WriteFlag.FUA} : new WriteFlag[0]);
              synchronized (model) {
                System.arraycopy(d, 0, model, (int) off, len);
              }
            }
          }
          return null;
        }));
      }
      for (Future<?> f : fs) {
        f.get();
      }
      pool.shutdown();
      ByteBuffer all = ByteBuffer.allocate((int) size);
      img.read(0, all);
      assertThat(all.array()).isEqualTo(model);
    }
    QemuImg.assertCheckClean(p);
    try (RawImage raw = RawImage.create(flat, size)) {
      raw.write(0, ByteBuffer.wrap(model));
    }
    QemuImg.assertIdentical(p, "qcow2", flat, "raw");
  }

  @Test
  void concurrentOverlappingChaosLeavesACleanImage() throws Exception {
    for (int cs : new int[] {512, 65536}) {
      Path p = dir.resolve("chaos" + cs + ".qcow2");
      long size = 4L << 20;
      Qcow2Image.create(p, Qcow2CreateOptions.of(size).withClusterSize(cs)).close();
      // with 512-byte clusters, an L2 cache of two tables: eviction under concurrency
      try (Qcow2Image img = cs == 512 ? Qcow2Image.openWithSmallCache(p, false, 2) : Qcow2Image.open(p, false)) {
        ExecutorService pool = Executors.newFixedThreadPool(8);
        List<Future<?>> fs = new ArrayList<>();
        for (int w = 0; w < 8; w++) {
          int me = w;
          fs.add(pool.submit(() -> {
            SplittableRandom r = new SplittableRandom(me * 31L + cs);
            for (int i = 0; i < 300; i++) {
              long off = r.nextLong(size - 1);
              int len = (int) Math.min(size - off, r.nextInt(1, 200_000));
              switch (r.nextInt(8)) {
                case 0 -> img.writeZeroes(off, len, r.nextBoolean() ? WriteFlag.MAY_UNMAP : WriteFlag.FUA);
                case 1 -> img.discard(off, len);
                case 2 -> img.read(off, ByteBuffer.allocate(len));
                case 3 -> img.blockStatus(off, len);
                case 4 -> {
                  long c = off / cs * cs;
                  try {
                    img.writeCompressed(c, ByteBuffer.wrap(data(r.nextLong() & ~1L, (int) Math.min(cs, size - c))));
                  } catch (dev.blockbackup.formats.BlockIOException e) {
                    assertThat(e.error()).isEqualTo(dev.blockbackup.formats.BlockError.EIO);
                  }
                }
                case 5 -> img.flush();
                default -> img.write(off, ByteBuffer.wrap(data(r.nextLong(), len)));
              }
            }
            return null;
          }));
        }
        for (Future<?> f : fs) {
          f.get();
        }
        pool.shutdown();
        img.read(0, ByteBuffer.allocate((int) size));
      }
      QemuImg.assertCheckClean(p);
    }
  }
}
