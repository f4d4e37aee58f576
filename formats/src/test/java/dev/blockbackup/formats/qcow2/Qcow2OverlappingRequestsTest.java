package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.WriteFlag;
import dev.blockbackup.testkit.Property;
import dev.blockbackup.testkit.QemuImg;
import dev.blockbackup.testkit.Workers;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.BitSet;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Eight threads issue overlapping reads, writes, write-zeroes (with and without MAY_UNMAP),
 * discards, compressed writes and flushes on one qcow2 image, with nothing ordering them but the
 * driver, over images with and without a backing file (raw, or qcow2 with compressed clusters of
 * its own) whose top layer starts with compressed clusters. Writes race reads of the compressed
 * clusters they copy, discards race reads of the clusters they free. No request may fail, and the
 * outcome must be one that the requests run one at a time in some order would give.
 *
 * <p>Every request works on whole 512-byte sectors, and every sector a write (or compressed write)
 * puts down holds one 8-byte tag repeated, naming the request and the sector; the backing file and
 * the serial set-up have tags of their own. So any sector read back names exactly who wrote it, or
 * is zero.
 *
 * <p>The final image, criterion: it equals a serial order of the writes if and only if the mutating
 * requests can be ordered so that, for every sector, the last request covering it is one whose
 * content there is what the image holds (a write's tag, or zero for write-zeroes and for the whole
 * clusters a discard covers), and a sector no request covers holds what it held before. Such an
 * order is found, or shown not to exist, by building it from the end: any request that agrees with
 * the image on every sector not yet claimed by a request placed after it can be placed next
 * (earlier); it claims its sectors. An order exists exactly when this never gets stuck: if one
 * exists, its last unplaced request always qualifies, and placing any qualifying request only
 * unclaims fewer sectors, so a greedy choice never spoils it. This is exact even for overlapping
 * zeroing requests, whose zeros cannot be told apart.
 *
 * <p>Reads, criterion: every sector a read returns is whole (one tag repeated, or zeros) and holds
 * a value some serial order could show there: its content before the concurrent requests, the tag
 * of a write covering it, or zero if a zeroing request covers it. Never an error, never bytes of a
 * freed or reused host cluster. And each read as a whole must fit one serial order together with
 * the final image: the orderings the reads and the image force (see
 * {@link #assertReadsFitOneOrder}) must have no cycle, which catches a read that saw part of a
 * write, or two writes in opposite orders.
 *
 * <p>Compressed writes go only into clusters not allocated yet, the only ones QEMU compresses into:
 * a reserved last quarter of the image where nothing else allocates (each of its clusters gets at
 * most one compressed write; whole-cluster discards and write-zeroes there leave no host cluster).
 */
class Qcow2OverlappingRequestsTest {

  private static final int THREADS = 8;
  private static final int SECTOR = 512;
  /** Every run must be done by then, or it fails as a likely deadlock. */
  private static final long DEADLINE_SECONDS = 120;
  private static final String THREAD_NAME = "qcow2-overlap-";
  /** Tags of the backing file's sectors. */
  private static final int BACKING_ID = 1;
  /** Tags of the backing file's compressed clusters. */
  private static final int BACKING_COMPRESSED_ID = 2;
  private static final int FIRST_ID = 3;
  /** The thread of set-up requests, run one at a time before the concurrent ones. */
  private static final int SETUP = -1;

  @TempDir Path dir;

  /** One configuration: cluster size, image size in clusters, backing file (null, "raw" or "qcow2"). */
  record Case(String name, int cluster, int clusters, String backing, int tries) {
    long size() {
      return (long) cluster * clusters;
    }

    /** Guest clusters below this one take every kind of request; from it on, only compressed writes allocate. */
    int reservedFrom() {
      return clusters * 3 / 4;
    }

    @Override
    public String toString() {
      return name;
    }
  }

  static Stream<Case> cases() {
    return Stream.of(
        new Case("512 B clusters (two L2 tables), no backing", 512, 128, null, 6),
        new Case("4K clusters, raw backing", 4096, 48, "raw", 6),
        new Case("4K clusters, qcow2 backing with compressed clusters", 4096, 48, "qcow2", 6),
        new Case("64K clusters, no backing", 65536, 16, null, 5),
        new Case("64K clusters, qcow2 backing with compressed clusters", 65536, 16, "qcow2", 5));
  }

  enum Kind { WRITE, ZERO, ZERO_UNMAP, DISCARD, COMPRESS, READ, FLUSH }

  /** One request; {@code thread} is {@link #SETUP} for the serial set-up. */
  record Req(int id, int thread, Kind kind, long offset, long length, boolean fua) {
    boolean mutates() {
      return kind != Kind.READ && kind != Kind.FLUSH;
    }
  }

  @ParameterizedTest(name = "{0}")
  @MethodSource("cases")
  void overlappingRequestsFromEightThreadsEqualASerialOrder(Case c) {
    Property.check("overlapping qcow2 requests, " + c, c.tries(), r -> generate(r, c), ops -> run(c, ops, false));
  }

  @Tag("interop")
  @ParameterizedTest(name = "{0}")
  @MethodSource("cases")
  void overlappingRequestsLeaveAnImageQemuFindsCleanAndEqual(Case c) {
    Property.check("overlapping qcow2 requests judged by qemu-img, " + c, Math.max(2, c.tries() / 2),
        r -> generate(r, c), ops -> run(c, ops, true));
  }

  // ---------------------------------------------------------------------------------------------
  // requests

  static List<Req> generate(SplittableRandom r, Case c) {
    List<Req> ops = new ArrayList<>();
    int id = FIRST_ID;
    int reserved = c.reservedFrom();
    // set-up: compressed clusters in the shared part, some of them then partly overwritten
    for (int k = 0; k < reserved; k++) {
      if (r.nextInt(3) != 0) {
        ops.add(new Req(id++, SETUP, Kind.COMPRESS, (long) k * c.cluster(), c.cluster(), false));
      }
    }
    for (int i = 0; i < 4; i++) {
      Range g = range(r, c, 0, reserved);
      ops.add(new Req(id++, SETUP, Kind.WRITE, g.offset, g.length, false));
    }
    boolean[] compressedLater = new boolean[c.clusters()];
    int perThread = 24;
    for (int t = 0; t < THREADS; t++) {
      for (int i = 0; i < perThread; i++) {
        int dice = r.nextInt(100);
        Req op;
        if (dice < 30) {
          Range g = range(r, c, 0, reserved);
          op = new Req(id++, t, Kind.WRITE, g.offset, g.length, r.nextInt(10) == 0);
        } else if (dice < 38) {
          Range g = range(r, c, 0, reserved);
          op = new Req(id++, t, Kind.ZERO, g.offset, g.length, false);
        } else if (dice < 43) {
          Range g = range(r, c, 0, reserved);
          op = new Req(id++, t, Kind.ZERO_UNMAP, g.offset, g.length, false);
        } else if (dice < 50) {
          Range g = range(r, c, 0, reserved);
          op = new Req(id++, t, Kind.DISCARD, g.offset, g.length, false);
        } else if (dice < 60) {
          int k = reserved + r.nextInt(c.clusters() - reserved);
          if (compressedLater[k]) {
            Range g = range(r, c, 0, c.clusters());
            op = new Req(id++, t, Kind.READ, g.offset, g.length, false);
          } else {
            compressedLater[k] = true;
            op = new Req(id++, t, Kind.COMPRESS, (long) k * c.cluster(), c.cluster(), false);
          }
        } else if (dice < 65) { // whole clusters of the reserved part: they hold no host cluster afterwards
          int k = reserved + r.nextInt(c.clusters() - reserved);
          int n = 1 + r.nextInt(Math.min(2, c.clusters() - k));
          Kind kind = r.nextBoolean() ? Kind.DISCARD : r.nextBoolean() ? Kind.ZERO : Kind.ZERO_UNMAP;
          op = new Req(id++, t, kind, (long) k * c.cluster(), (long) n * c.cluster(), false);
        } else if (dice < 96) {
          Range g = range(r, c, 0, c.clusters());
          op = new Req(id++, t, Kind.READ, g.offset, g.length, false);
        } else {
          op = new Req(id++, t, Kind.FLUSH, 0, 0, false);
        }
        ops.add(op);
      }
    }
    return ops;
  }

  private record Range(long offset, long length) {}

  /** A sector-aligned range inside guest clusters {@code [from, to)}: inside one cluster, whole clusters, or across a few. */
  private static Range range(SplittableRandom r, Case c, int from, int to) {
    int spc = c.cluster() / SECTOR;
    long lo = (long) from * spc;
    long hi = (long) to * spc;
    long start;
    long sectors;
    switch (r.nextInt(3)) {
      case 0 -> {
        start = lo + r.nextLong(hi - lo);
        sectors = 1 + r.nextInt(Math.max(1, spc / 2));
      }
      case 1 -> {
        start = lo + (long) r.nextInt(to - from) * spc;
        sectors = (long) spc * (1 + r.nextInt(2));
      }
      default -> {
        start = lo + r.nextLong(hi - lo);
        sectors = 1 + r.nextInt(3 * spc);
      }
    }
    sectors = Math.min(sectors, hi - start);
    return new Range(start * SECTOR, sectors * SECTOR);
  }

  // ---------------------------------------------------------------------------------------------
  // sectors and their tags

  private static long tag(int id, long sector) {
    return ((long) id << 32) | (sector + 1);
  }

  private static String describe(long value) {
    if (value == 0) {
      return "zeros";
    }
    int id = (int) (value >>> 32);
    long sector = (value & 0xFFFFFFFFL) - 1;
    String who = id == BACKING_ID ? "the backing file" : id == BACKING_COMPRESSED_ID ? "the backing file's compressed data"
        : "request #" + id;
    return "the tag of " + who + " for sector " + sector;
  }

  /** The content request {@code op} (a write or compressed write) puts down. */
  private static ByteBuffer content(int id, long offset, long length) {
    ByteBuffer b = ByteBuffer.allocate((int) length);
    for (long s = offset / SECTOR; s < (offset + length) / SECTOR; s++) {
      long t = tag(id, s);
      for (int i = 0; i < SECTOR / 8; i++) {
        b.putLong(t);
      }
    }
    return b.flip();
  }

  /** The first and one-past-last sector a mutating request sets, or an empty range. */
  private static long[] sectorsSet(Req op, Case c) {
    if (op.kind() == Kind.DISCARD) { // only the whole clusters inside the range
      long first = (op.offset() + c.cluster() - 1) / c.cluster();
      long end = (op.offset() + op.length()) / c.cluster();
      int spc = c.cluster() / SECTOR;
      return first >= end ? new long[] {0, 0} : new long[] {first * spc, end * spc};
    }
    return new long[] {op.offset() / SECTOR, (op.offset() + op.length()) / SECTOR};
  }

  /** What a mutating request sets sector {@code s} to. */
  private static long valueAt(Req op, long s) {
    return op.kind() == Kind.WRITE || op.kind() == Kind.COMPRESS ? tag(op.id(), s) : 0;
  }

  /** Decodes whole sectors; fails on a sector that is not one value repeated. */
  private static long[] sectorValues(ByteBuffer b, long offset, String what) {
    long[] v = new long[b.remaining() / SECTOR];
    for (int i = 0; i < v.length; i++) {
      long first = b.getLong(b.position() + i * SECTOR);
      for (int j = 1; j < SECTOR / 8; j++) {
        long x = b.getLong(b.position() + i * SECTOR + j * 8);
        if (x != first) {
          throw new AssertionError(what + ": sector " + (offset / SECTOR + i) + " is torn: it holds "
              + describe(first) + " and, at byte " + j * 8 + ", " + describe(x));
        }
      }
      v[i] = first;
    }
    return v;
  }

  // ---------------------------------------------------------------------------------------------
  // one run

  private void run(Case c, List<Req> ops, boolean judgeWithQemu) throws Exception {
    Path tryDir = Files.createTempDirectory(dir, "try");
    int sectors = (int) (c.size() / SECTOR);
    long[] before = new long[sectors];
    Path path = tryDir.resolve("top.qcow2");
    Qcow2CreateOptions options = Qcow2CreateOptions.of(c.size()).withClusterSize(c.cluster());
    if (c.backing() != null) {
      makeBacking(c, tryDir, before);
      options = options.withBacking("base." + c.backing(), c.backing());
    }
    Qcow2Image img = Qcow2Image.create(path, options);
    boolean closed = false;
    try {
      List<Req> concurrent = new ArrayList<>();
      for (Req op : ops) {
        if (op.thread() == SETUP) {
          execute(img, op);
          long[] set = sectorsSet(op, c);
          for (long s = set[0]; s < set[1]; s++) {
            before[(int) s] = valueAt(op, s);
          }
        } else {
          concurrent.add(op);
        }
      }
      List<List<Long>> possible = possibleValues(c, concurrent, before);
      List<Seen> seen = runConcurrently(img, concurrent, possible);

      ByteBuffer all = ByteBuffer.allocate((int) c.size());
      img.read(0, all);
      long[] fin = sectorValues(all.flip(), 0, "the image after the concurrent requests");
      assertSomeSerialOrder(c, concurrent, before, fin);
      assertReadsFitOneOrder(c, concurrent, before, fin, seen);

      img.close();
      closed = true;
      try (Qcow2Image again = Qcow2Image.open(path, true)) {
        ByteBuffer reread = ByteBuffer.allocate((int) c.size());
        again.read(0, reread);
        assertThat(reread.flip()).as("the image reopened after close").isEqualTo(all.rewind());
      }
      if (judgeWithQemu) {
        QemuImg.assertCheckClean(path);
        byte[] qemu = ModelRunner.qemuContent(path, "qcow2", tryDir);
        ModelRunner.assertSameBytes(qemu, 0, all.array(), 0, all.capacity(), "qemu-img convert of the final image");
      }
    } finally {
      if (!closed) {
        img.close();
      }
    }
    ModelRunner.deleteTree(tryDir);
  }

  /** Writes the backing file: tagged sectors, some clusters left as holes; a qcow2 one has compressed clusters too. */
  private static void makeBacking(Case c, Path tryDir, long[] before) throws IOException {
    Path base = tryDir.resolve("base." + c.backing());
    BlockDevice dev = c.backing().equals("raw") ? RawImage.create(base, c.size())
        : Qcow2Image.create(base, Qcow2CreateOptions.of(c.size()).withClusterSize(c.cluster()));
    try (dev) {
      int spc = c.cluster() / SECTOR;
      for (int k = 0; k < c.clusters(); k++) {
        if (k % 5 == 4) {
          continue; // a hole: reads as zero
        }
        long off = (long) k * c.cluster();
        boolean compress = dev instanceof Qcow2Image && k % 3 == 0;
        int id = compress ? BACKING_COMPRESSED_ID : BACKING_ID;
        ByteBuffer data = content(id, off, c.cluster());
        if (compress) {
          dev.writeCompressed(off, data);
        } else {
          dev.write(off, data);
        }
        for (int s = 0; s < spc; s++) {
          before[k * spc + s] = tag(id, (long) k * spc + s);
        }
      }
    }
  }

  private static void execute(Qcow2Image img, Req op) throws IOException {
    switch (op.kind()) {
      case WRITE -> img.write(op.offset(), content(op.id(), op.offset(), op.length()),
          op.fua() ? new WriteFlag[] {WriteFlag.FUA} : new WriteFlag[0]);
      case ZERO -> img.writeZeroes(op.offset(), op.length());
      case ZERO_UNMAP -> img.writeZeroes(op.offset(), op.length(), WriteFlag.MAY_UNMAP);
      case DISCARD -> img.discard(op.offset(), op.length());
      case COMPRESS -> img.writeCompressed(op.offset(), content(op.id(), op.offset(), op.length()));
      case FLUSH -> img.flush();
      case READ -> throw new IllegalArgumentException("reads are checked where they run");
    }
  }

  /** Per sector, the values a read may see: the content before, any covering write's tag, zero if a zeroing request covers it. */
  private static List<List<Long>> possibleValues(Case c, List<Req> concurrent, long[] before) {
    List<List<Long>> possible = new ArrayList<>();
    for (long v : before) {
      List<Long> p = new ArrayList<>(2);
      p.add(v);
      possible.add(p);
    }
    for (Req op : concurrent) {
      if (op.mutates()) {
        long[] set = sectorsSet(op, c);
        for (long s = set[0]; s < set[1]; s++) {
          List<Long> p = possible.get((int) s);
          long v = valueAt(op, s);
          if (!p.contains(v)) {
            p.add(v);
          }
        }
      }
    }
    return possible;
  }

  /** What one read returned, sector by sector. */
  private record Seen(Req read, long[] values) {}

  private static List<Seen> runConcurrently(Qcow2Image img, List<Req> concurrent, List<List<Long>> possible)
      throws Exception {
    ConcurrentLinkedQueue<Seen> seen = new ConcurrentLinkedQueue<>();
    ExecutorService pool = Executors.newFixedThreadPool(THREADS, Workers.daemonThreads(THREAD_NAME));
    try {
      CountDownLatch go = new CountDownLatch(1);
      List<Future<?>> futures = new ArrayList<>();
      for (int t = 0; t < THREADS; t++) {
        int thread = t;
        List<Req> mine = concurrent.stream().filter(op -> op.thread() == thread).toList();
        futures.add(pool.submit(() -> {
          go.await();
          for (Req op : mine) {
            try {
              if (op.kind() == Kind.READ) {
                ByteBuffer b = ByteBuffer.allocate((int) op.length());
                img.read(op.offset(), b);
                long[] values = sectorValues(b.flip(), op.offset(), "thread " + thread + "'s " + op);
                checkRead(op, values, possible);
                seen.add(new Seen(op, values));
              } else {
                execute(img, op);
              }
            } catch (IOException | RuntimeException e) {
              throw new AssertionError("thread " + thread + ": " + op + " failed: " + e, e);
            }
          }
          return null;
        }));
      }
      go.countDown();
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(DEADLINE_SECONDS);
      Workers.awaitAll(futures, deadline, "the overlapping requests", "the requests did not finish within "
          + DEADLINE_SECONDS + " s; the driver may have deadlocked. Threads:\n", THREAD_NAME);
    } finally {
      pool.shutdownNow();
    }
    return new ArrayList<>(seen);
  }

  private static void checkRead(Req read, long[] seen, List<List<Long>> possible) {
    long first = read.offset() / SECTOR;
    for (int i = 0; i < seen.length; i++) {
      List<Long> p = possible.get((int) (first + i));
      if (!p.contains(seen[i])) {
        throw new AssertionError(read + " saw " + describe(seen[i]) + " in sector " + (first + i)
            + ", which no serial order shows there; possible: "
            + p.stream().map(Qcow2OverlappingRequestsTest::describe).toList());
      }
    }
  }

  /** Builds a serial order from its end, as the class comment explains; fails when none explains {@code fin}. */
  private static void assertSomeSerialOrder(Case c, List<Req> concurrent, long[] before, long[] fin) {
    boolean[] claimed = new boolean[fin.length];
    List<Req> unplaced = new ArrayList<>(concurrent.stream().filter(Req::mutates).toList());
    boolean progress = true;
    while (!unplaced.isEmpty() && progress) {
      progress = false;
      for (Iterator<Req> it = unplaced.iterator(); it.hasNext(); ) {
        Req op = it.next();
        long[] set = sectorsSet(op, c);
        if (disagreement(op, set, claimed, fin) < 0) {
          for (long s = set[0]; s < set[1]; s++) {
            claimed[(int) s] = true;
          }
          it.remove();
          progress = true;
        }
      }
    }
    if (!unplaced.isEmpty()) {
      StringBuilder why = new StringBuilder();
      for (Req op : unplaced.subList(0, Math.min(6, unplaced.size()))) {
        long s = disagreement(op, sectorsSet(op, c), claimed, fin);
        why.append("\n  ").append(op).append(" covers sector ").append(s).append(", which holds ")
            .append(describe(fin[(int) s])).append(", not ").append(describe(valueAt(op, s)));
      }
      throw new AssertionError("no serial order of the " + concurrent.size() + " requests gives the final image: "
          + unplaced.size() + " of them can be neither last over their sectors nor overwritten there:" + why);
    }
    for (int s = 0; s < fin.length; s++) {
      if (!claimed[s] && fin[s] != before[s]) {
        throw new AssertionError("sector " + s + ", which no concurrent request covers, holds " + describe(fin[s])
            + " instead of " + describe(before[s]));
      }
    }
  }

  /** The first unclaimed sector of {@code op} where the final image differs from what it sets, or -1. */
  private static long disagreement(Req op, long[] set, boolean[] claimed, long[] fin) {
    for (long s = set[0]; s < set[1]; s++) {
      if (!claimed[(int) s] && fin[(int) s] != valueAt(op, s)) {
        return s;
      }
    }
    return -1;
  }
  /**
   * Checks that the reads and the final image fit one serial order, through orderings that every
   * serial order explaining them must have: a request whose tag the final image holds at a sector
   * comes after every other request covering it; a read that saw a value only one request puts
   * there comes after that request; a read that saw a sector's content from before, which no
   * concurrent request puts there, comes before every request covering it. A cycle among these
   * proves that no serial order explains what was seen (a read saw part of a write, or parts of two
   * writes in opposite orders); no cycle is necessary, not sufficient, for one to exist.
   */
  private static void assertReadsFitOneOrder(Case c, List<Req> concurrent, long[] before, long[] fin,
      List<Seen> seen) {
    int n = concurrent.size();
    Map<Integer, Integer> index = new HashMap<>();
    for (int i = 0; i < n; i++) {
      index.put(concurrent.get(i).id(), i);
    }
    List<List<Req>> covering = new ArrayList<>();
    for (int s = 0; s < fin.length; s++) {
      covering.add(new ArrayList<>(2));
    }
    for (Req op : concurrent) {
      if (op.mutates()) {
        long[] set = sectorsSet(op, c);
        for (long s = set[0]; s < set[1]; s++) {
          covering.get((int) s).add(op);
        }
      }
    }
    BitSet[] after = new BitSet[n]; // after[i] holds j when request i must come before request j
    long[][] why = new long[n][n]; // sector * 4 + reason of the first such edge
    for (int i = 0; i < n; i++) {
      after[i] = new BitSet(n);
    }
    for (int s = 0; s < fin.length; s++) {
      for (Req w : covering.get(s)) {
        if (fin[s] != 0 && valueAt(w, s) == fin[s]) {
          for (Req x : covering.get(s)) {
            if (x != w) {
              edge(after, why, index.get(x.id()), index.get(w.id()), s, 1);
            }
          }
        }
      }
    }
    for (Seen r : seen) {
      int ri = index.get(r.read().id());
      long first = r.read().offset() / SECTOR;
      for (int i = 0; i < r.values().length; i++) {
        int s = (int) (first + i);
        long v = r.values()[i];
        List<Req> producers = covering.get(s).stream().filter(x -> valueAt(x, s) == v).toList();
        if (producers.isEmpty()) {
          for (Req x : covering.get(s)) {
            edge(after, why, ri, index.get(x.id()), s, 3);
          }
        } else if (producers.size() == 1 && v != before[s]) {
          edge(after, why, index.get(producers.get(0).id()), ri, s, 2);
        }
      }
    }
    List<Integer> cycle = findCycle(after);
    if (cycle != null) {
      StringBuilder b = new StringBuilder("the reads and the final image fit no serial order; each request below must"
          + " come before the next, and the last before the first:");
      for (int k = 0; k < cycle.size(); k++) {
        int from = cycle.get(k);
        int to = cycle.get((k + 1) % cycle.size());
        long reason = why[from][to];
        long s = reason / 4;
        String because = switch ((int) (reason % 4)) {
          case 1 -> "the final image holds the next one's tag in sector " + s + ", which this one covers too";
          case 2 -> "the next one (a read) saw this one's data in sector " + s;
          default -> "this read saw sector " + s + " as it was before the concurrent requests";
        };
        b.append("\n  ").append(concurrent.get(from)).append(": ").append(because);
      }
      throw new AssertionError(b.toString());
    }
  }

  private static void edge(BitSet[] after, long[][] why, int from, int to, long sector, int reason) {
    if (from != to && !after[from].get(to)) {
      after[from].set(to);
      why[from][to] = sector * 4 + reason;
    }
  }

  /** A cycle in the graph (as its nodes in order), or null. */
  private static List<Integer> findCycle(BitSet[] after) {
    int n = after.length;
    int[] state = new int[n]; // 0 new, 1 on the current path, 2 done
    int[] parent = new int[n];
    int[] next = new int[n]; // where a node's scan of its successors resumes
    for (int root = 0; root < n; root++) {
      if (state[root] != 0) {
        continue;
      }
      List<Integer> stack = new ArrayList<>();
      stack.add(root);
      state[root] = 1;
      while (!stack.isEmpty()) {
        int v = stack.get(stack.size() - 1);
        int w = after[v].nextSetBit(next[v]);
        if (w < 0) {
          state[v] = 2;
          stack.remove(stack.size() - 1);
          continue;
        }
        next[v] = w + 1;
        if (state[w] == 1) {
          List<Integer> cycle = new ArrayList<>();
          for (int u = v; u != w; u = parent[u]) {
            cycle.add(0, u);
          }
          cycle.add(0, w);
          return cycle;
        }
        if (state[w] == 0) {
          state[w] = 1;
          parent[w] = v;
          stack.add(w);
        }
      }
    }
    return null;
  }
}
