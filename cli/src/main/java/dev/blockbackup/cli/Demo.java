package dev.blockbackup.cli;

import dev.blockbackup.engine.BackupJob;
import dev.blockbackup.engine.BackupOptions;
import dev.blockbackup.engine.BlockNode;
import dev.blockbackup.engine.JobManager;
import dev.blockbackup.engine.MirrorSyncMode;
import dev.blockbackup.engine.Transaction;
import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.atomic.LongAdder;
import java.util.concurrent.locks.ReentrantReadWriteLock;

/**
 * The project's main job shown end to end, behind {@code bin/demo}: a live disk keeps being written
 * while the backup job copies it, and the copy still equals the disk as it was when the job
 * started. Writers write random 4 KiB blocks through the disk's {@link BlockNode}, as a guest would;
 * the job's copy-before-write filter goes on the node under them.
 *
 * <p>Then an incremental: a bitmap added at the full backup's instant (one transaction with its
 * job) has marked what the writers changed since, and the incremental backup copies only that,
 * into a qcow2 whose backing file is the full backup; the pair equals the disk at the second instant.
 *
 * <p>The point in time is known exactly: the writers are held for an instant (each write holds a
 * shared lock the demo takes exclusively), and in that instant the demo reads the disk into a raw
 * reference file and creates the job. Nothing but Java is needed; when qemu-img is on the PATH it
 * judges the copies too.
 */
final class Demo {

  private static final int BLOCK = 4096;
  private static final int WRITERS = 4;
  /** The bitmap that records what changes after the full backup. */
  private static final String BITMAP = "since-full";

  private final Path dir;
  private final long size;
  private final PrintWriter out;
  /** Writers hold it shared for each write; the demo holds it exclusively to fix a point in time. */
  private final ReentrantReadWriteLock gate = new ReentrantReadWriteLock();
  private final LongAdder writes = new LongAdder();
  private final AtomicReference<Throwable> writerFailure = new AtomicReference<>();
  private volatile boolean stop;

  Demo(Path dir, long size, PrintWriter out) {
    this.dir = dir;
    this.size = size;
    this.out = out;
  }

  public static void main(String[] args) throws Exception {
    if (args.length < 1 || args.length > 2) {
      System.err.println("usage: Demo WORKDIR [SIZE_MIB]");
      System.exit(2);
    }
    long size = (args.length == 2 ? Long.parseLong(args[1]) : 256) << 20;
    PrintWriter out = new PrintWriter(System.out, true, StandardCharsets.UTF_8);
    boolean ok = new Demo(Path.of(args[0]), size, out).run();
    out.flush();
    System.exit(ok ? 0 : 1);
  }

  /** Runs the demo; true when every copy equals its point in time. */
  boolean run() throws Exception {
    Files.createDirectories(dir);
    Path diskPath = dir.resolve("disk.qcow2");
    step("a " + (size >> 20) + " MiB qcow2 disk with data: " + diskPath);
    Qcow2Image disk = Qcow2Image.create(diskPath, Qcow2CreateOptions.of(size));
    fill(disk);
    BlockNode node = BlockNode.of("drive0", disk);
    JobManager jobs = new JobManager();
    List<Thread> writers = startWriters(node);
    boolean ok;
    try {
      step(WRITERS + " writers write random 4 KiB blocks (in the first eighth of the disk) through its node,"
          + " and keep writing");
      pause(Duration.ofMillis(300));
      ok = backup(jobs, node, "full", MirrorSyncMode.full, null);
      step("the writers go on; the bitmap 'since-full', added at the full backup's instant, marks what they change");
      pause(Duration.ofMillis(500));
      ok &= backup(jobs, node, "incremental", MirrorSyncMode.incremental, "backup-full.qcow2");
    } catch (Exception e) {
      stop = true;
      for (Thread t : writers) {
        t.join();
      }
      throw e; // the node stays open: a job may hold it; the process ends with the error
    }
    stop = true;
    for (Thread t : writers) {
      t.join();
    }
    node.close();
    if (writerFailure.get() != null) {
      out.println("a writer failed: " + writerFailure.get());
      ok = false;
    }
    step(ok ? "demo finished: every backup equals the disk at its point in time"
        : "demo FAILED: a backup differs from its point in time");
    return ok;
  }

  /**
   * One backup while the writers run: the job, what it copied, and the comparisons. The full backup
   * adds the bitmap the incremental uses in the same transaction, so both have one instant; the
   * incremental's target has {@code backing} (the full backup) below it.
   */
  private boolean backup(JobManager jobs, BlockNode node, String name, MirrorSyncMode sync, String backing)
      throws Exception {
    Path target = dir.resolve("backup-" + name + ".qcow2");
    Path reference = dir.resolve("point-in-time-" + name + ".raw");
    step("backup --sync " + sync + " into " + target.getFileName()
        + (backing != null ? " (backing file " + backing + ")" : "") + " while the writers write");
    Qcow2CreateOptions create = Qcow2CreateOptions.of(size);
    Qcow2Image tgt = Qcow2Image.create(target, backing == null ? create : create.withBacking(backing, "qcow2"));
    BackupOptions options = BackupOptions.of(sync).withJobId("demo-" + name);
    List<Transaction.Action> actions = new ArrayList<>();
    if (backing == null) {
      actions.add(Transaction.bitmapAdd(node, BITMAP, null, false, false));
    } else {
      options = options.withBitmap(BITMAP);
    }
    actions.add(Transaction.backup(jobs, node, tgt, options));
    BackupJob job;
    long writesBefore;
    long t0;
    gate.writeLock().lock();
    try {
      // the instant: no write in flight, none starts until the job's filter is on the node
      readInto(node, reference);
      writesBefore = writes.sum();
      t0 = System.nanoTime();
      job = Transaction.of(actions).run().get(0); // started
    } finally {
      gate.writeLock().unlock();
    }
    if (!job.awaitConcluded(Duration.ofMinutes(5))) {
      out.println("the job did not end in 5 minutes");
      return false;
    }
    double secs = (System.nanoTime() - t0) / 1e9;
    long guestWrites = writes.sum() - writesBefore;
    if (job.error() != null) {
      out.println("the job failed: " + job.error());
      tgt.close();
      return false;
    }
    long cbw = job.copyBeforeWriteBytes();
    out.printf("job %s: %s copied in %.2f s (of a %s disk); copy-before-write copied %s, the background copier %s%n",
        job.id(), mib(job.currentProgress()), secs, mib(size), mib(cbw), mib(job.currentProgress() - cbw));
    out.printf("guest writes meanwhile: %d (%.0f writes/s)%n", guestWrites, guestWrites / secs);
    tgt.close();
    return judge(reference, target);
  }

  /** Our own byte-for-byte comparison, then qemu-img's when it is installed. */
  private boolean judge(Path reference, Path target) throws IOException, InterruptedException {
    long diff;
    try (Qcow2Image copy = Qcow2Image.open(target, true);
        FileChannel ref = FileChannel.open(reference, StandardOpenOption.READ)) {
      diff = firstDifference(ref, copy);
    }
    boolean ok = diff < 0;
    out.println(ok ? "our compare: the backup equals the point in time, byte for byte"
        : "our compare: the backup DIFFERS from the point in time at byte " + diff);
    List<String> cmd = List.of("qemu-img", "compare", "-f", "raw", "-F", "qcow2", reference.toString(),
        target.toString());
    Process p;
    try {
      p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
    } catch (IOException e) {
      out.println("qemu-img is not installed: skipping its compare (apt-get install qemu-utils)");
      return ok;
    }
    String said = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
    int exit = p.waitFor();
    out.println("qemu-img compare: " + said);
    return ok && exit == 0;
  }

  private static long firstDifference(FileChannel ref, BlockDevice copy) throws IOException {
    int chunk = 4 << 20;
    ByteBuffer a = ByteBuffer.allocateDirect(chunk);
    ByteBuffer b = ByteBuffer.allocateDirect(chunk);
    for (long off = 0; off < copy.size(); off += chunk) {
      int n = (int) Math.min(chunk, copy.size() - off);
      a.clear().limit(n);
      while (a.hasRemaining() && ref.read(a, off + a.position()) >= 0) {
        // read on
      }
      b.clear().limit(n);
      copy.read(off, b);
      a.flip();
      b.flip();
      int at = a.mismatch(b);
      if (at >= 0) {
        return off + at;
      }
    }
    return -1;
  }

  private void readInto(BlockDevice d, Path file) throws IOException {
    int chunk = 4 << 20;
    ByteBuffer buf = ByteBuffer.allocateDirect(chunk);
    try (FileChannel ch = FileChannel.open(file, StandardOpenOption.CREATE, StandardOpenOption.TRUNCATE_EXISTING,
        StandardOpenOption.WRITE)) {
      for (long off = 0; off < d.size(); off += chunk) {
        buf.clear().limit((int) Math.min(chunk, d.size() - off));
        d.read(off, buf);
        buf.flip();
        while (buf.hasRemaining()) {
          ch.write(buf, off + buf.position());
        }
      }
    }
  }

  /** Random data in three of every four MiB, the rest never written. */
  private void fill(BlockDevice d) throws BlockIOException {
    SplittableRandom r = new SplittableRandom(1);
    byte[] mib = new byte[1 << 20];
    for (long off = 0; off + mib.length <= size; off += mib.length) {
      if (r.nextInt(4) != 0) {
        r.nextBytes(mib);
        d.write(off, ByteBuffer.wrap(mib));
      }
    }
  }

  private List<Thread> startWriters(BlockNode node) {
    List<Thread> threads = new ArrayList<>();
    for (int i = 0; i < WRITERS; i++) {
      long seed = 100 + i;
      Thread t = new Thread(() -> write(node, seed), "guest-writer-" + i);
      t.setDaemon(true);
      t.start();
      threads.add(t);
    }
    return threads;
  }

  private void write(BlockNode node, long seed) {
    SplittableRandom r = new SplittableRandom(seed);
    ByteBuffer buf = ByteBuffer.allocateDirect(BLOCK);
    byte[] data = new byte[BLOCK];
    long blocks = size / 8 / BLOCK; // a guest's busy area: the first eighth of the disk
    try {
      while (!stop) {
        r.nextBytes(data);
        buf.clear();
        buf.put(data).flip();
        long off = r.nextLong(blocks) * BLOCK;
        gate.readLock().lock();
        try {
          node.write(off, buf);
        } finally {
          gate.readLock().unlock();
        }
        writes.increment();
      }
    } catch (BlockIOException | RuntimeException e) {
      writerFailure.compareAndSet(null, e);
    }
  }

  private void step(String what) {
    out.println();
    out.println("== " + what);
  }

  private static void pause(Duration d) throws InterruptedException {
    TimeUnit.NANOSECONDS.sleep(d.toNanos());
  }

  private static String mib(long bytes) {
    return String.format("%.1f MiB", bytes / 1048576.0);
  }
}
