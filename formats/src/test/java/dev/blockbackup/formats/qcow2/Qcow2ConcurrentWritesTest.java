package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.RangeLock;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.WriteFlag;
import dev.blockbackup.formats.qcow2.ModelOps.Compress;
import dev.blockbackup.formats.qcow2.ModelOps.Discard;
import dev.blockbackup.formats.qcow2.ModelOps.Flush;
import dev.blockbackup.formats.qcow2.ModelOps.Op;
import dev.blockbackup.formats.qcow2.ModelOps.Range;
import dev.blockbackup.formats.qcow2.ModelOps.Read;
import dev.blockbackup.formats.qcow2.ModelOps.Write;
import dev.blockbackup.formats.qcow2.ModelOps.Zero;
import dev.blockbackup.testkit.QemuImg;
import dev.blockbackup.testkit.Workers;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.SplittableRandom;
import java.util.TreeSet;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Acceptance 5: eight threads writing into one fresh qcow2 image at once. Overlapping requests are
 * ordered by a test-side range lock (as the engine orders them) and replayed in completion order
 * into the model; requests that do not overlap run concurrently, many of them inside the same
 * unallocated cluster, which is where a driver could allocate one guest cluster twice.
 */
@Tag("interop")
class Qcow2ConcurrentWritesTest {

  private static final int THREADS = 8;
  /** Everything a test runs in the pool must be done by then, or the test fails as a likely deadlock. */
  private static final long DEADLINE_SECONDS = 120;
  private static final String THREAD_NAME = "qcow2-concurrent-";

  @TempDir Path dir;

  /** One completed request, in the order the range lock let it complete; reads keep what they saw. */
  record Event(long seq, int thread, Op op, byte[] seen) {}

  private static long start(Op op) {
    if (op instanceof Write w) {
      return w.offset();
    } else if (op instanceof Zero z) {
      return z.offset();
    } else if (op instanceof Discard d) {
      return d.offset();
    } else {
      return ((Read) op).offset();
    }
  }

  private static long length(Op op) {
    if (op instanceof Write w) {
      return w.length();
    } else if (op instanceof Zero z) {
      return z.length();
    } else if (op instanceof Discard d) {
      return d.length();
    } else {
      return ((Read) op).length();
    }
  }

  /** Runs one op on the image (not the model); returns what a read saw. */
  private static byte[] execute(Qcow2Image img, Op op) throws Exception {
    if (op instanceof Write w) {
      img.write(w.offset(), ByteBuffer.wrap(w.data()), w.fua() ? new WriteFlag[] {WriteFlag.FUA} : new WriteFlag[0]);
    } else if (op instanceof Zero z) {
      img.writeZeroes(z.offset(), z.length(), z.mayUnmap() ? new WriteFlag[] {WriteFlag.MAY_UNMAP} : new WriteFlag[0]);
    } else if (op instanceof Discard d) {
      img.discard(d.offset(), d.length());
    } else {
      Read r = (Read) op;
      ByteBuffer b = ByteBuffer.allocate(r.length());
      img.read(r.offset(), b);
      // nobody writes this range meanwhile, so blockStatus must agree with what the read saw
      long at = r.offset();
      for (Extent e : img.blockStatus(r.offset(), r.length())) {
        if (e.offset() != at || e.end() > r.offset() + r.length()) {
          throw new AssertionError("blockStatus(" + r.offset() + ", " + r.length() + ") returned " + e + " at " + at);
        }
        if (e.zero() && ModelRunner.firstNonZero(b.array(), (int) (e.offset() - r.offset()),
            (int) (e.end() - r.offset())) != -1) {
          throw new AssertionError("blockStatus says " + e + " is zero, but a read of it just now saw data");
        }
        at = e.end();
      }
      return b.array();
    }
    return null;
  }

  /** Random requests of one thread in one round: first a slice of the round's first hot cluster, then a mix. */
  static List<Op> roundOps(SplittableRandom r, int thread, long hotStart, int hotClusters, long size, int c, int n) {
    List<Op> ops = new ArrayList<>();
    int slice = c / THREADS;
    ops.add(new Write(hotStart + (long) thread * slice + r.nextInt(16), slice - 32, r.nextLong(), -1, false));
    long coldStart = size / 2;
    for (int i = 1; i < n; i++) {
      int dice = r.nextInt(100);
      Range g;
      if (dice < 50 || dice >= 80) { // inside (or just across) one hot cluster
        long k = r.nextInt(hotClusters);
        long off = hotStart + k * c + r.nextInt(c);
        long len = 1 + r.nextInt(Math.max(1, c / 4));
        g = new Range(off, Math.min(len, size - off));
      } else if (dice < 65) { // anywhere in the cold upper half
        Range x = ModelOps.range(r, size - coldStart, c);
        g = new Range(coldStart + x.offset(), Math.min(x.length(), 3L * c));
      } else { // whole hot clusters
        long k = r.nextInt(hotClusters);
        g = new Range(hotStart + k * c, (long) c * (1 + r.nextInt(2)));
      }
      if (dice < 70) {
        ops.add(new Write(g.offset(), (int) g.length(), r.nextLong(), r.nextInt(8) == 0 ? r.nextInt(256) : -1,
            r.nextInt(10) == 0));
      } else if (dice < 80) {
        ops.add(new Zero(g.offset(), g.length(), r.nextBoolean(), false));
      } else if (dice < 85) {
        ops.add(new Discard(g.offset(), g.length()));
      } else if (dice < 88) {
        ops.add(new Flush());
      } else {
        ops.add(new Read(g.offset(), (int) g.length()));
      }
    }
    return ops;
  }

  @ParameterizedTest(name = "{0}-byte clusters")
  @ValueSource(ints = {65536, 4096, 512}) // with 512-byte clusters each round's hot clusters also need a new L2 table
  void rangeLockedRequestsFromEightThreadsMatchTheSerializedModel(int c) throws Exception {
    long size = c == 65536 ? 64L << 20 : 4L << 20;
    int hotClusters = 12;
    int rounds = 20;
    int perThread = 40;
    Path path = dir.resolve("concurrent.qcow2");
    Qcow2Image img = Qcow2Image.create(path, Qcow2CreateOptions.of(size).withClusterSize(c));
    ModelRunner m = new ModelRunner(img, new byte[(int) size], null);
    RangeLock lock = new RangeLock();
    long expectedEvents = 0;
    AtomicLong seq = new AtomicLong();
    ConcurrentLinkedQueue<Event> log = new ConcurrentLinkedQueue<>();
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(DEADLINE_SECONDS);
    ExecutorService pool = pool();
    boolean finished = false;
    try {
      SplittableRandom seeds = new SplittableRandom(c * 31L + 7);
      for (int round = 0; round < rounds; round++) {
        long hotStart = (long) round * (hotClusters + 2) * c;
        List<List<Op>> perThreadOps = new ArrayList<>();
        for (int t = 0; t < THREADS; t++) {
          List<Op> ops = roundOps(seeds.split(), t, hotStart, hotClusters, size, c, perThread);
          expectedEvents += ops.stream().filter(op -> !(op instanceof Flush)).count();
          perThreadOps.add(ops);
        }
        CountDownLatch go = new CountDownLatch(1);
        List<Future<?>> futures = new ArrayList<>();
        for (int t = 0; t < THREADS; t++) {
          int thread = t;
          futures.add(pool.submit(() -> {
            go.await();
            for (Op op : perThreadOps.get(thread)) {
              if (op instanceof Flush) { // no range: runs alongside everything, changes no byte
                img.flush();
                continue;
              }
              RangeLock.Held held = lock.acquire(start(op), length(op), RangeLock.Mode.EXCLUSIVE);
              try {
                byte[] seen = execute(img, op);
                log.add(new Event(seq.getAndIncrement(), thread, op, seen));
              } catch (Exception e) {
                throw new AssertionError("thread " + thread + ": " + op + " failed: " + e, e);
              } finally {
                held.close();
              }
            }
            return null;
          }));
        }
        go.countDown();
        awaitAll(futures, deadline, "round " + round);
      }
      finished = true;
    } finally {
      pool.shutdownNow();
      if (!finished) {
        try {
          img.close();
        } catch (Exception ignored) {
          // the failure that got us here is the one to report
        }
      }
    }
    List<Event> ordered = new ArrayList<>(log);
    ordered.sort((a, b) -> Long.compare(a.seq(), b.seq()));
    assertThat(ordered.size()).as("completed requests").isEqualTo(expectedEvents);
    for (Event e : ordered) {
      if (e.op() instanceof Read r) {
        ModelRunner.assertSameBytes(e.seen(), 0, m.model, r.offset(), r.length(),
            "thread " + e.thread() + "'s read #" + e.seq() + " " + r + " against the model replayed up to it");
      } else {
        m.record(e.op());
      }
    }
    m.verifyContent("after " + ordered.size() + " requests from " + THREADS + " threads");
    m.verifyBlockStatus("after the concurrent requests");
    m.closeAndJudge(dir);
  }

  /**
   * {@code start}: "fresh" (a new image of ours), "raw" (ours over a raw base: first writes copy the
   * rest of the cluster from it), "snapshot" (qemu-made, every cluster shared with an internal
   * snapshot: writes must copy it and its L2 table exactly once), "compressed" (qemu convert -c:
   * writes must decompress the cluster into a new one exactly once).
   */
  @ParameterizedTest(name = "{0}-byte clusters, with zeroes: {1}, start: {2}")
  @CsvSource({"65536, false, fresh", "65536, true, fresh", "4096, false, fresh", "4096, true, fresh",
      "65536, false, raw", "4096, false, raw", "65536, false, snapshot", "4096, true, snapshot",
      "65536, false, compressed", "4096, true, compressed", "512, false, fresh", "512, true, fresh",
      "512, false, raw"})
  void unlockedWritesToDisjointPiecesOfSharedClustersAllLand(int c, boolean withZeroes, String start)
      throws Exception {
    long size = c == 65536 ? 64L << 20 : 4L << 20;
    int regionClusters = c == 65536 ? 24 : 64;
    int regions = 10;
    long area = (long) regions * (regionClusters + 3) * c;
    int piecesPerRegion = THREADS * 40;
    Path path = dir.resolve("disjoint.qcow2");
    Qcow2CreateOptions options = Qcow2CreateOptions.of(size).withClusterSize(c);
    byte[] base = null;
    byte[] initial = new byte[(int) size];
    Qcow2Image img;
    switch (start) {
      case "fresh" -> img = Qcow2Image.create(path, options);
      case "raw" -> {
        base = Qcow2ModelPropertyTest.baseContent(size, c);
        ModelRunner.writeRaw(dir.resolve("base.raw"), base);
        initial = base.clone();
        img = Qcow2Image.create(path, options.withBacking("base.raw", "raw"));
      }
      case "snapshot" -> {
        QemuImg.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=" + c, path, size).assertExit(0);
        QemuImg.io("-f", "qcow2", "-c", "write -P 0x5a 0 " + area, "-c", "write -P 0xa5 " + c / 3 + " " + area / 2,
            path).assertExit(0);
        QemuImg.img("snapshot", "-c", "s1", path).assertExit(0);
        initial = ModelRunner.qemuContent(path, "qcow2", dir);
        img = Qcow2Image.open(path, false);
      }
      case "compressed" -> {
        for (int k = 0; (long) k * c < area; k++) {
          System.arraycopy(Qcow2CompressedWritesTest.content(Qcow2CompressedWritesTest.Kind.TEXT, k, c), 0, initial,
              k * c, c);
        }
        Path src = dir.resolve("src.raw");
        ModelRunner.writeRaw(src, initial);
        QemuImg.img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=" + c, src, path).assertExit(0);
        img = Qcow2Image.open(path, false);
      }
      default -> throw new IllegalArgumentException(start);
    }
    byte[] atStart = initial.clone();
    ModelRunner m = new ModelRunner(img, initial, base);
    SplittableRandom r = new SplittableRandom(c * 17L + 3);
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(DEADLINE_SECONDS);
    ExecutorService pool = pool();
    boolean finished = false;
    int total = 0;
    try {
      for (int region = 0; region < regions; region++) {
        long regionStart = (long) region * (regionClusters + 3) * c;
        long regionEnd = regionStart + (long) regionClusters * c;
        // some clusters of the region already allocated, wholly or partly, the rest not
        for (int k = 0; k < regionClusters; k += 3) {
          int len = k % 2 == 0 ? c : c / 3;
          m.apply(new Write(regionStart + (long) k * c, len, r.nextLong(), -1, false));
        }
        TreeSet<Long> cuts = new TreeSet<>();
        while (cuts.size() < piecesPerRegion - 1) {
          long cut = regionStart + 1 + r.nextLong(regionEnd - regionStart - 1);
          cuts.add(r.nextInt(3) == 0 ? cut / 512 * 512 : cut);
        }
        cuts.remove(regionStart);
        cuts.add(regionEnd);
        List<List<Op>> perThread = new ArrayList<>();
        for (int t = 0; t < THREADS; t++) {
          perThread.add(new ArrayList<>());
        }
        long from = regionStart;
        for (long to : cuts) {
          int dice = r.nextInt(10);
          if (dice < 2) {
            // a piece nobody writes in this phase: read it (three times) while its neighbours are being
            // allocated, copied and zeroed; it must read as before all along
            Read read = new Read(from, (int) (to - from));
            for (int i = 0; i < 3; i++) {
              perThread.get(r.nextInt(THREADS)).add(read);
            }
          } else {
            Op op = withZeroes && dice == 2
                ? new Zero(from, to - from, r.nextBoolean(), false)
                : new Write(from, (int) (to - from), r.nextLong(), -1, false);
            perThread.get(r.nextInt(THREADS)).add(op);
          }
          from = to;
        }
        for (List<Op> ops : perThread) {
          Collections.shuffle(ops, new java.util.Random(r.nextLong()));
          total += ops.size();
        }
        CountDownLatch go = new CountDownLatch(1);
        List<Future<?>> futures = new ArrayList<>();
        AtomicInteger thread = new AtomicInteger();
        for (List<Op> ops : perThread) {
          int t = thread.getAndIncrement();
          futures.add(pool.submit(() -> {
            go.await();
            for (Op op : ops) {
              byte[] seen;
              try {
                seen = execute(img, op);
              } catch (Exception e) {
                throw new AssertionError("thread " + t + ": " + op + " failed: " + e, e);
              }
              if (op instanceof Read read) { // nobody writes it now: the model still holds its content
                ModelRunner.assertSameBytes(seen, 0, m.model, read.offset(), read.length(),
                    "thread " + t + "'s " + read + " of a piece nobody was writing, during concurrent writes around it");
              }
            }
            return null;
          }));
        }
        go.countDown();
        awaitAll(futures, deadline, "region " + region);
        for (List<Op> ops : perThread) {
          for (Op op : ops) {
            m.record(op); // disjoint: any order gives the same bytes
          }
        }
      }
      finished = true;
    } finally {
      pool.shutdownNow();
      if (!finished) {
        try {
          img.close();
        } catch (Exception ignored) {
          // the failure that got us here is the one to report
        }
      }
    }
    m.verifyContent("after " + total + " unlocked disjoint requests from " + THREADS + " threads");
    m.verifyBlockStatus("after the unlocked requests");
    m.closeAndJudge(dir);
    if (start.equals("snapshot")) {
      Path snap = dir.resolve("s1.raw");
      QemuImg.img("convert", "-f", "qcow2", "-O", "raw", "-l", "snapshot.name=s1", path, snap).assertExit(0);
      ModelRunner.assertSameBytes(java.nio.file.Files.readAllBytes(snap), 0, atStart, 0, atStart.length,
          "internal snapshot s1 after the concurrent writes");
    }
  }

  @ParameterizedTest(name = "{0}-byte clusters")
  @ValueSource(ints = {65536, 4096, 512})
  void concurrentCompressedAndNormalWritesPackWithoutOverlap(int c) throws Exception {
    int compressedClusters = 192;
    int clusters = 256;
    long size = (long) clusters * c;
    Path path = dir.resolve("compressed.qcow2");
    Qcow2Image img = Qcow2Image.create(path, Qcow2CreateOptions.of(size).withClusterSize(c));
    ModelRunner m = new ModelRunner(img, new byte[(int) size], null);
    SplittableRandom r = new SplittableRandom(c * 13L + 5);
    List<List<Op>> perThread = new ArrayList<>();
    for (int t = 0; t < THREADS; t++) {
      perThread.add(new ArrayList<>());
    }
    for (int k = 0; k < compressedClusters; k++) { // content from compressedContent(k), not from the seed
      perThread.get(k % THREADS).add(new Compress(k, k));
    }
    for (int k = compressedClusters; k < clusters; k++) { // normal writes: allocations racing the byte allocator
      for (int piece = 0; piece < 2; piece++) {
        perThread.get(r.nextInt(THREADS)).add(new Write((long) k * c + piece * (c / 2), c / 2, r.nextLong(), -1, false));
      }
    }
    for (List<Op> ops : perThread) {
      Collections.shuffle(ops, new java.util.Random(r.nextLong()));
    }
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(DEADLINE_SECONDS);
    ExecutorService pool = pool();
    boolean finished = false;
    try {
      CountDownLatch go = new CountDownLatch(1);
      List<Future<?>> futures = new ArrayList<>();
      for (int t = 0; t < THREADS; t++) {
        List<Op> ops = perThread.get(t);
        int thread = t;
        futures.add(pool.submit(() -> {
          go.await();
          for (Op op : ops) {
            try {
              if (op instanceof Compress z) {
                int k = (int) z.index();
                img.writeCompressed((long) k * c, ByteBuffer.wrap(compressedContent(k, c)));
              } else {
                execute(img, op);
              }
            } catch (Exception e) {
              throw new AssertionError("thread " + thread + ": " + op + " failed: " + e, e);
            }
          }
          return null;
        }));
      }
      go.countDown();
      awaitAll(futures, deadline, "the compressed writers");
      finished = true;
    } finally {
      pool.shutdownNow();
      if (!finished) {
        try {
          img.close();
        } catch (Exception ignored) {
          // the failure that got us here is the one to report
        }
      }
    }
    for (List<Op> ops : perThread) {
      for (Op op : ops) {
        if (op instanceof Compress z) {
          int k = (int) z.index();
          System.arraycopy(compressedContent(k, c), 0, m.model, k * c, c);
        } else {
          m.record(op);
        }
      }
    }
    m.verifyContent("after concurrent compressed and normal writes");
    m.closeAndJudge(dir);
    List<QemuImg.MapEntry> map = QemuImg.map(path, "qcow2");
    for (int k = 0; k < compressedClusters; k++) {
      Qcow2CompressedWritesTest.Kind kind = compressedKind(k);
      long off = (long) k * c;
      QemuImg.MapEntry e = map.stream().filter(x -> x.start() <= off && off < x.start() + x.length()).findFirst()
          .orElseThrow();
      assertThat(e.offset() == null).as("cluster %d (%s) stored compressed; qemu-img map says %s", k, kind, e)
          .isEqualTo(kind != Qcow2CompressedWritesTest.Kind.RANDOM);
    }
  }

  private static Qcow2CompressedWritesTest.Kind compressedKind(int k) {
    return k % 4 == 3 ? Qcow2CompressedWritesTest.Kind.RANDOM
        : k % 4 == 2 ? Qcow2CompressedWritesTest.Kind.SPARSE : Qcow2CompressedWritesTest.Kind.TEXT;
  }

  private static byte[] compressedContent(int k, int c) {
    return Qcow2CompressedWritesTest.content(compressedKind(k), k, c);
  }

  private static ExecutorService pool() {
    return Executors.newFixedThreadPool(THREADS, Workers.daemonThreads(THREAD_NAME));
  }

  /** Waits for every future until {@code deadline}; fails with the pool's stacks if it passes. */
  private static void awaitAll(List<Future<?>> futures, long deadline, String what) throws Exception {
    Workers.awaitAll(futures, deadline, what, "the writers of " + what + " did not finish within "
        + DEADLINE_SECONDS + " s of the test's start; the driver may have deadlocked. Writer threads:\n", THREAD_NAME);
  }

}
