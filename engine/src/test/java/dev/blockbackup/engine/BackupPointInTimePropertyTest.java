package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.RangeLock;
import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.WriteFlag;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.Property;
import dev.blockbackup.testkit.QemuImg;
import dev.blockbackup.testkit.Workers;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.stream.Stream;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Acceptance 1 of the backup issue, the point-in-time property: four writer threads issue random
 * writes, zeroes and discards to the node while a backup runs; afterwards the target holds the
 * source exactly as it was when {@link BackupJob#create} inserted the filter, and the source holds
 * every write. Overlapping writes of different threads are ordered by a test-side range lock that
 * also records the order they reached the node in; the model replays that order.
 *
 * <p>For sync=top (qcow2 source over a backing file) and sync=none the target starts as the job
 * expects it: a qcow2 overlay of the same backing file (top) or of a raw copy of the point in time
 * (none), or a raw file holding that content. So in every mode "target equals the point in time"
 * is the whole claim. sync=none, and sync=full or top without auto-finalize (the filter then stays
 * while the job is PENDING), also read the {@link SnapshotView} while the writers run and after.
 *
 * <p>The default run tries {@value #TRIES} random cases for each of the 12 (sync, source format,
 * target format) combinations; {@code -Dprops.tries=N} changes that, {@code -Dbackup.soak=true}
 * adds a longer run over bigger images.
 */
@Tag("interop")
class BackupPointInTimePropertyTest {

  /** Tries per combination in the default run: 12 combinations, so 192 backups (about 30 s on 2 cores). */
  static final int TRIES = 16;
  static final int WRITERS = 4;
  static final int KIB = 1024;
  static final int MIB = 1024 * KIB;
  /** Everything a try waits for (writers, the job) must be done by then, or the try fails. */
  static final Duration DEADLINE = Duration.ofSeconds(90);

  @TempDir Path dir;

  enum Fmt { raw, qcow2 }

  enum Kind { write, writeZeroBytes, zeroes, zeroesUnmap, discard }

  /** One request of one writer thread; a write's bytes come from {@code seed}. */
  record Op(int thread, Kind kind, long offset, long length, long seed) {
    @Override
    public String toString() {
      return "t" + thread + " " + kind + "(" + offset + ", +" + length + ")" + (kind == Kind.write ? " #" + seed : "");
    }
  }

  /**
   * One generated case besides its operations. {@code backingFmt} is set for sync=top over a qcow2
   * source; {@code dirtyTarget} fills a full-copy target with garbage first, which the job must
   * overwrite everywhere; without {@code autoFinalize} a sync=full or top job waits in PENDING with
   * its filter in place, so the snapshot view is read during the writes and after them, as for
   * sync=none.
   */
  record Case(MirrorSyncMode sync, Fmt src, int srcCluster, String backingFmt, int backingCluster, Fmt tgt,
      int tgtCluster, long size, long speed, int maxWorkers, long maxChunk, boolean startBeforeWriters,
      boolean dirtyTarget, boolean autoFinalize, long layoutSeed) {

    int jobCluster() {
      return tgt == Fmt.qcow2 ? Math.max(BackupJob.MIN_CLUSTER_SIZE, tgtCluster) : BackupJob.MIN_CLUSTER_SIZE;
    }

    boolean overBacking() {
      return backingFmt != null;
    }
  }

  /** Set by the generator for the try in progress: shrinking re-runs the same case with fewer ops. */
  private Case current;
  private final AtomicInteger runs = new AtomicInteger();

  static Stream<Arguments> combinations() {
    List<Arguments> out = new ArrayList<>();
    for (MirrorSyncMode sync : List.of(MirrorSyncMode.full, MirrorSyncMode.top, MirrorSyncMode.none)) {
      for (Fmt src : Fmt.values()) {
        for (Fmt tgt : Fmt.values()) {
          out.add(Arguments.of(sync, src, tgt));
        }
      }
    }
    return out.stream();
  }

  @ParameterizedTest(name = "sync={0}, source {1}, target {2}")
  @MethodSource("combinations")
  @Timeout(value = 10, unit = TimeUnit.MINUTES) // room for shrinking; a hang fails long before
  void targetHoldsThePointInTimeWhileFourWritersRace(MirrorSyncMode sync, Fmt src, Fmt tgt) {
    Property.check("backup point in time, sync=" + sync + ", " + src + " -> " + tgt, TRIES,
        r -> {
          current = randomCase(r, sync, src, tgt, false);
          return randomOps(r, current, 4 + r.nextInt(20));
        },
        ops -> runCase(current, ops));
  }

  /** The soak variant: bigger images, longer operation lists, every combination drawn at random. */
  @Test
  @Timeout(value = 60, unit = TimeUnit.MINUTES)
  void soakTargetHoldsThePointInTime() {
    Assumptions.assumeTrue(Boolean.getBoolean("backup.soak"), "soak run only with -Dbackup.soak=true");
    List<Arguments> all = combinations().toList();
    Property.check("backup point in time (soak)", 200,
        r -> {
          Object[] a = all.get(r.nextInt(all.size())).get();
          current = randomCase(r, (MirrorSyncMode) a[0], (Fmt) a[1], (Fmt) a[2], true);
          return randomOps(r, current, 20 + r.nextInt(100));
        },
        ops -> runCase(current, ops));
  }

  // ---------------------------------------------------------------- generation

  static Case randomCase(SplittableRandom r, MirrorSyncMode sync, Fmt src, Fmt tgt, boolean big) {
    int[] srcClusters = {4 * KIB, 16 * KIB, 64 * KIB, 128 * KIB, 256 * KIB};
    int[] tgtClusters = {4 * KIB, 64 * KIB, 128 * KIB, 256 * KIB};
    long size = (big ? 8L + r.nextInt(25) : 1L + r.nextInt(3)) * MIB + (long) r.nextInt(16) * 64 * KIB;
    if (r.nextInt(3) == 0) {
      size += 512L * (1 + r.nextInt(127)); // not a multiple of any cluster size
    }
    int srcCluster = src == Fmt.qcow2 ? srcClusters[r.nextInt(srcClusters.length)] : 0;
    String backingFmt = sync == MirrorSyncMode.top && src == Fmt.qcow2 ? (r.nextBoolean() ? "raw" : "qcow2") : null;
    int backingCluster = "qcow2".equals(backingFmt) ? srcClusters[r.nextInt(srcClusters.length)] : 0;
    int tgtCluster = tgt == Fmt.qcow2 ? tgtClusters[r.nextInt(tgtClusters.length)] : 0;
    int jobCluster = tgt == Fmt.qcow2 ? Math.max(BackupJob.MIN_CLUSTER_SIZE, tgtCluster) : BackupJob.MIN_CLUSTER_SIZE;
    // a speed low enough that the copier takes a few hundred ms, so the writers meet it mid-way
    long speed = r.nextBoolean() ? 0 : size * (2 + r.nextInt(6));
    int[] workers = {1, 2, 4, 64};
    long maxChunk = r.nextBoolean() ? 0 : (long) jobCluster << r.nextInt(5);
    boolean fullCopy = sync == MirrorSyncMode.full || (sync == MirrorSyncMode.top && backingFmt == null);
    return new Case(sync, src, srcCluster, backingFmt, backingCluster, tgt, tgtCluster, size, speed,
        workers[r.nextInt(workers.length)], maxChunk, r.nextBoolean(), fullCopy && r.nextBoolean(),
        sync == MirrorSyncMode.none || r.nextBoolean(), r.nextLong());
  }

  /**
   * {@code perThread} requests for each writer. Many start near a few hot spots shared by all
   * threads, so threads overlap each other and the same job clusters; lengths and offsets are
   * unaligned, 512-, 4K- or 64K-aligned, some reach the end of the image.
   */
  static List<Op> randomOps(SplittableRandom r, Case c, int perThread) {
    long size = c.size();
    long[] hot = new long[3];
    for (int i = 0; i < hot.length; i++) {
      hot[i] = r.nextLong(size);
    }
    List<Op> ops = new ArrayList<>();
    for (int t = 0; t < WRITERS; t++) {
      for (int i = 0; i < perThread; i++) {
        int align = new int[] {1, 1, 512, 4 * KIB, 64 * KIB}[r.nextInt(5)];
        long len = switch (r.nextInt(10)) {
          case 0, 1, 2, 3 -> 1 + r.nextInt(8 * KIB);
          case 4, 5, 6, 7, 8 -> 1 + r.nextInt(256 * KIB);
          default -> 1 + r.nextInt(MIB);
        };
        long off = r.nextInt(5) < 2 ? hot[r.nextInt(hot.length)] + r.nextInt(128 * KIB) - 64 * KIB : r.nextLong(size);
        off = Math.max(0, Math.min(size - 1, off)) / align * align;
        len = Math.max(align, len / align * align);
        if (r.nextInt(12) == 0 || off + len > size) {
          len = size - off; // through the end: raw discard and zeroing cut the file there
        }
        int dice = r.nextInt(20);
        Kind kind = dice < 10 ? Kind.write : dice < 11 ? Kind.writeZeroBytes : dice < 14 ? Kind.zeroes
            : dice < 17 ? Kind.zeroesUnmap : Kind.discard;
        ops.add(new Op(t, kind, off, len, r.nextLong()));
      }
    }
    return ops;
  }

  static byte[] data(Op op) {
    byte[] b = new byte[(int) op.length()];
    if (op.kind() == Kind.write) {
      new SplittableRandom(op.seed()).nextBytes(b);
    }
    return b;
  }

  // ---------------------------------------------------------------- one run

  /** Everything one run opened, so a failure can close it and the shrinker can go on. */
  private static final class Opened implements AutoCloseable {
    final List<AutoCloseable> devices = new ArrayList<>();
    BackupJob job;

    <T extends AutoCloseable> T add(T d) {
      devices.add(d);
      return d;
    }

    @Override
    public void close() {
      if (job != null && job.status() != JobStatus.concluded && job.status() != JobStatus.null_) {
        try {
          job.cancel();
          job.awaitConcluded(Duration.ofSeconds(30));
        } catch (Exception | AssertionError ignored) {
          // the failure that got us here is the one to report
        }
      }
      for (int i = devices.size() - 1; i >= 0; i--) {
        try {
          devices.get(i).close();
        } catch (Exception ignored) {
          // as above
        }
      }
    }
  }

  void runCase(Case c, List<Op> ops) throws Exception {
    Path d = Files.createDirectory(dir.resolve("run" + runs.incrementAndGet()));
    try (Opened opened = new Opened()) {
      runCase(c, ops, d, opened);
    } catch (Throwable t) {
      throw new AssertionError(c + ": " + t, t);
    } finally {
      deleteTree(d);
    }
  }

  private void runCase(Case c, List<Op> ops, Path d, Opened opened) throws Exception {
    long size = c.size();
    SplittableRandom layout = new SplittableRandom(c.layoutSeed());

    // the source, and for sync=top its backing file
    byte[] base = null;
    String baseName = null;
    BlockDevice srcDev;
    Path srcPath = d.resolve("src." + c.src());
    if (c.overBacking()) {
      baseName = "base." + c.backingFmt();
      BlockDevice b = c.backingFmt().equals("raw") ? RawImage.create(d.resolve(baseName), size)
          : Qcow2Image.create(d.resolve(baseName), Qcow2CreateOptions.of(size).withClusterSize(c.backingCluster()));
      base = new byte[(int) size];
      applyLayout(b, base, layout, c.backingFmt().equals("raw") ? 0 : c.backingCluster(), false);
      b.close();
      srcDev = opened.add(Qcow2Image.create(srcPath,
          Qcow2CreateOptions.of(size).withClusterSize(c.srcCluster()).withBacking(baseName, c.backingFmt())));
    } else if (c.src() == Fmt.qcow2) {
      srcDev = opened.add(Qcow2Image.create(srcPath, Qcow2CreateOptions.of(size).withClusterSize(c.srcCluster())));
    } else {
      srcDev = opened.add(RawImage.create(srcPath, size));
    }
    byte[] expectedStart = base == null ? new byte[(int) size] : base.clone();
    applyLayout(srcDev, expectedStart, layout, c.src() == Fmt.qcow2 ? c.srcCluster() : 0, true);
    BlockNode node = BlockNode.of("drive0", srcDev);
    byte[] pit = readAll(node);
    assertSameBytes(expectedStart, pit, "the source before the job against its layout");
    Path pitRaw = d.resolve("pit.raw");
    Files.write(pitRaw, pit);

    // the target, holding what the job relies on: nothing (full), the backing (top), the point in time (none)
    Path tgtPath = d.resolve("tgt." + c.tgt());
    BlockDevice tgt;
    byte[] prefill = switch (c.sync()) {
      case none -> pit;
      case top -> base;
      default -> null;
    };
    String tgtBacking = c.sync() == MirrorSyncMode.none ? "pit.raw" : baseName;
    String tgtBackingFmt = c.sync() == MirrorSyncMode.none ? "raw" : c.backingFmt();
    if (c.tgt() == Fmt.qcow2) {
      Qcow2CreateOptions o = Qcow2CreateOptions.of(size).withClusterSize(c.tgtCluster());
      tgt = opened.add(Qcow2Image.create(tgtPath, prefill == null ? o : o.withBacking(tgtBacking, tgtBackingFmt)));
    } else {
      tgt = opened.add(RawImage.create(tgtPath, size));
      if (prefill != null) {
        tgt.write(0, ByteBuffer.wrap(prefill));
      }
    }
    if (c.dirtyTarget()) {
      byte[] garbage = new byte[(int) size];
      new SplittableRandom(~c.layoutSeed()).nextBytes(garbage);
      tgt.write(0, ByteBuffer.wrap(garbage));
    }

    // the job: its point in time is create()
    JobManager jobs = new JobManager();
    BackupOptions options = BackupOptions.of(c.sync()).withSpeed(c.speed()).withMaxWorkers(c.maxWorkers())
        .withMaxChunk(c.maxChunk()).withAutoFinalize(c.autoFinalize());
    boolean viewStays = c.sync() == MirrorSyncMode.none || !c.autoFinalize(); // the filter stays until we say
    BackupJob job = BackupJob.create(jobs, node, tgt, options);
    opened.job = job;
    assertThat(job.clusterSize()).as("job cluster size").isEqualTo(c.jobCluster());
    ConcurrentLinkedQueue<String> events = new ConcurrentLinkedQueue<>();
    job.addListener(e -> events.add(e.name()));
    SnapshotView view = job.snapshotView();

    // the writers, and for sync=none a reader of the snapshot view racing them
    RangeLock lock = new RangeLock();
    AtomicLong seq = new AtomicLong();
    ConcurrentLinkedQueue<long[]> applied = new ConcurrentLinkedQueue<>(); // {seq, index into ops}
    ExecutorService pool = pool();
    try {
      CountDownLatch go = new CountDownLatch(1);
      List<Future<?>> writers = new ArrayList<>();
      for (int t = 0; t < WRITERS; t++) {
        int thread = t;
        writers.add(pool.submit(() -> {
          go.await();
          for (int i = 0; i < ops.size(); i++) {
            Op op = ops.get(i);
            if (op.thread() != thread) {
              continue;
            }
            RangeLock.Held held = lock.acquire(op.offset(), op.length(), RangeLock.Mode.EXCLUSIVE);
            try {
              apply(node, op);
              applied.add(new long[] {seq.getAndIncrement(), i});
            } catch (Exception e) {
              throw new AssertionError(op + " failed: " + e, e);
            } finally {
              held.close();
            }
          }
          return null;
        }));
      }
      AtomicBoolean writing = new AtomicBoolean(true);
      Future<?> reader = null;
      if (viewStays) {
        reader = pool.submit(() -> {
          SplittableRandom r = new SplittableRandom(c.layoutSeed() + 1);
          go.await();
          do {
            long off = r.nextLong(size);
            int len = (int) Math.min(size - off, 1 + r.nextInt(512 * KIB));
            ByteBuffer b = ByteBuffer.allocate(len);
            view.read(off, b);
            assertSameBytes(pit, off, b.array(), "a snapshot view read during the writes");
          } while (writing.get());
          return null;
        });
      }
      if (c.startBeforeWriters()) {
        job.start();
        go.countDown();
      } else {
        go.countDown();
        job.start();
      }
      awaitAll(writers, "the writers");
      writing.set(false);
      if (reader != null) {
        awaitAll(List.of(reader), "the snapshot view reader");
      }
    } finally {
      pool.shutdownNow();
    }
    assertThat(applied).as("requests applied").hasSize(ops.size());

    // the target holds the point in time
    if (c.sync() == MirrorSyncMode.none) {
      assertSameBytes(pit, readAll(view), "the snapshot view after the writes");
      job.cancel();
      awaitConcludedWithEvents(job);
      assertThat(job.error()).isEqualTo("Operation canceled");
      assertThat(events).contains("BLOCK_JOB_CANCELLED");
    } else {
      if (!c.autoFinalize()) {
        assertThat(job.awaitStatus(DEADLINE, JobStatus.pending)).as("job pending, status %s", job.status()).isTrue();
        assertSameBytes(pit, readAll(view), "the snapshot view of the pending job after the writes");
        job.finalizeJob();
      }
      awaitConcludedWithEvents(job);
      assertThat(job.error()).as("job error").isNull();
      assertThat(events).contains("BLOCK_JOB_COMPLETED").doesNotContain("BLOCK_JOB_ERROR");
      assertThat(job.currentProgress()).as("progress").isEqualTo(job.totalProgress());
    }
    assertThat(node.device()).as("the filter is gone").isSameAs(node.unfiltered());
    assertSameBytes(pit, readAll(tgt), "the target after the job");

    // the source holds every request, in the order the range lock let them through
    byte[] model = pit.clone();
    List<long[]> order = new ArrayList<>(applied);
    order.sort((a, b) -> Long.compare(a[0], b[0]));
    for (long[] e : order) {
      replay(model, ops.get((int) e[1]), c);
    }
    assertSameBytes(model, readAll(node), "the source after " + ops.size() + " requests against the model");

    // and both survive a close: our reader and qemu-img agree, qcow2 metadata is clean
    node.close();
    tgt.close();
    if (c.tgt() == Fmt.qcow2) {
      QemuImg.assertCheckClean(tgtPath);
      try (Qcow2Image reopened = Qcow2Image.open(tgtPath, true)) {
        assertSameBytes(pit, readAll(reopened), "the target reopened, read through its backing");
      }
    }
    if (c.src() == Fmt.qcow2) {
      QemuImg.assertCheckClean(srcPath);
    }
    QemuImg.assertIdentical(pitRaw, "raw", tgtPath, c.tgt().name());
    Path modelRaw = d.resolve("model.raw");
    Files.write(modelRaw, model);
    QemuImg.assertIdentical(modelRaw, "raw", srcPath, c.src().name());
  }

  /** Waits for the job to conclude and its last events to be delivered (concludedFuture's contract). */
  private static void awaitConcludedWithEvents(BackupJob job) throws Exception {
    try {
      job.concludedFuture().get(DEADLINE.toNanos(), TimeUnit.NANOSECONDS);
    } catch (TimeoutException e) {
      throw new AssertionError("the job did not conclude within " + DEADLINE + "; status " + job.status());
    }
  }

  /**
   * Writes a random layout of data, zero and untouched regions (qcow2: also discarded ones) to
   * {@code dev} and to {@code model}, in runs of up to a few clusters, aligned or not.
   */
  static void applyLayout(BlockDevice dev, byte[] model, SplittableRandom r, int cluster, boolean discards)
      throws Exception {
    long size = model.length;
    long pos = 0;
    while (pos < size) {
      long len = Math.min(size - pos, r.nextBoolean() ? 1 + r.nextInt(256 * KIB) : (1 + r.nextInt(8)) * 64L * KIB);
      int kind = r.nextInt(discards ? 5 : 4);
      switch (kind) {
        case 0, 1 -> {
          byte[] b = new byte[(int) len];
          r.nextBytes(b);
          dev.write(pos, ByteBuffer.wrap(b));
          System.arraycopy(b, 0, model, (int) pos, b.length);
        }
        case 2 -> {
          dev.writeZeroes(pos, len, r.nextBoolean() ? new WriteFlag[] {WriteFlag.MAY_UNMAP} : new WriteFlag[0]);
          Arrays.fill(model, (int) pos, (int) (pos + len), (byte) 0);
        }
        case 3 -> { } // left as it is: unallocated, or the backing file's
        default -> {
          dev.discard(pos, len);
          replayDiscard(model, pos, len, cluster);
        }
      }
      pos += len;
    }
  }

  static void apply(BlockDevice node, Op op) throws Exception {
    switch (op.kind()) {
      case write, writeZeroBytes -> node.write(op.offset(), ByteBuffer.wrap(data(op)));
      case zeroes -> node.writeZeroes(op.offset(), op.length());
      case zeroesUnmap -> node.writeZeroes(op.offset(), op.length(), WriteFlag.MAY_UNMAP);
      case discard -> node.discard(op.offset(), op.length());
    }
  }

  static void replay(byte[] model, Op op, Case c) {
    int off = (int) op.offset();
    int end = (int) (op.offset() + op.length());
    switch (op.kind()) {
      case write, writeZeroBytes -> System.arraycopy(data(op), 0, model, off, end - off);
      case zeroes, zeroesUnmap -> Arrays.fill(model, off, end, (byte) 0);
      case discard -> replayDiscard(model, op.offset(), op.length(), c.src() == Fmt.qcow2 ? c.srcCluster() : 0);
    }
  }

  /**
   * What discard does, exactly as the drivers document it. Raw ({@code cluster == 0}): a punched
   * hole, so the whole range reads zero (Linux, whose file systems here punch holes; where they
   * cannot, the data would stay except through the end of the file). qcow2: the whole
   * clusters inside the range (the last one counting as whole at the end of the image) read zero;
   * the partial clusters at either side keep their content.
   */
  static void replayDiscard(byte[] model, long offset, long length, int cluster) {
    long size = model.length;
    long end = offset + length;
    if (cluster == 0) {
      Arrays.fill(model, (int) offset, (int) end, (byte) 0);
      return;
    }
    long from = (offset + cluster - 1) / cluster * cluster;
    long to = end == size ? size : end / cluster * cluster;
    if (from < to) {
      Arrays.fill(model, (int) from, (int) to, (byte) 0);
    }
  }

  // ---------------------------------------------------------------- helpers

  static byte[] readAll(BlockDevice d) throws Exception {
    ByteBuffer b = ByteBuffer.allocate((int) d.size());
    d.read(0, b);
    return b.array();
  }

  static void assertSameBytes(byte[] expected, byte[] actual, String what) {
    assertThat(actual.length).as("%s: length", what).isEqualTo(expected.length);
    assertSameBytes(expected, 0, actual, what);
  }

  /**
   * Fails when {@code actual} differs from {@code expected[at, at + actual.length)}, naming the
   * first differing offset and how many bytes differ (AssertJ would print megabytes).
   */
  static void assertSameBytes(byte[] expected, long at, byte[] actual, String what) {
    int first = Arrays.mismatch(expected, (int) at, (int) at + actual.length, actual, 0, actual.length);
    if (first < 0) {
      return;
    }
    long differing = 0;
    long last = first;
    for (int i = first; i < actual.length; i++) {
      if (expected[(int) at + i] != actual[i]) {
        differing++;
        last = i;
      }
    }
    throw new AssertionError(String.format(
        "%s: %d bytes differ in [%d, %d]; first at %d: expected 0x%02x, got 0x%02x", what, differing, at + first,
        at + last, at + first, expected[(int) at + first], actual[first]));
  }

  private static ExecutorService pool() {
    return Executors.newCachedThreadPool(Workers.daemonThreads("pit-writer-"));
  }

  /** Waits for every future until the deadline; fails with every thread's stack if it passes. */
  private static void awaitAll(List<Future<?>> futures, String what) throws Exception {
    Workers.awaitAll(futures, System.nanoTime() + DEADLINE.toNanos(), what,
        what + " did not finish within " + DEADLINE + "; threads:\n", "");
  }


  private static void deleteTree(Path p) {
    try (Stream<Path> s = Files.walk(p)) {
      s.sorted(Comparator.reverseOrder()).forEach(x -> x.toFile().delete());
    } catch (Exception ignored) {
      // @TempDir removes what is left
    }
  }
}
