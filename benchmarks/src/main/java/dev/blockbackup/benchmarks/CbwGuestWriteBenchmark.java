package dev.blockbackup.benchmarks;

import dev.blockbackup.engine.BackupJob;
import dev.blockbackup.engine.BackupOptions;
import dev.blockbackup.engine.BlockNode;
import dev.blockbackup.engine.JobException;
import dev.blockbackup.engine.JobManager;
import dev.blockbackup.engine.MirrorSyncMode;
import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Threads;
import org.openjdk.jmh.annotations.Warmup;

/**
 * What copy-before-write costs a guest: 4 KiB writes, each to a random 4 KiB slot of a different
 * 64 KiB cluster that the job has not copied yet (the worst case for CBW: every write first copies
 * 64 KiB of old data to the target), through a {@link BlockNode} with no job, under a sync=none job
 * (fleecing: the target is a qcow2 whose backing file is the source) and under a sync=full job (a
 * fresh qcow2 target). The score is guest writes per second.
 *
 * <p>The source is made once per {@code format} and {@code sizeMiB} and kept in {@code dir}: every
 * cluster holds random data, so each first write copies a full cluster (QEMU's reference image is
 * 75% full, so 15% of its writes copied nothing: ours is the harder case). Every iteration gets a
 * fresh job and target and walks a fresh shuffled permutation of the clusters from the start, so
 * every measured write pays copy-before-write; the iteration's teardown reports if a job run's
 * writers ran out of fresh clusters (then make the image bigger or the iterations shorter).
 *
 * <p>sync=full runs its background copier at {@code speed} (default 32 MiB/s, 512 clusters/s)
 * from offset 0 at the same time: slow enough that the writers, which go through tens of
 * thousands of random clusters a second, almost never meet a cluster it has already copied, and
 * still a copier that competes for the two cores. {@code -p speed=0} runs it unlimited, as QEMU's
 * reference run did (there the copier reached many clusters before the guest and made sync=full
 * cheaper for the guest than sync=none).
 *
 * <p>Queue depth: {@code qd16} runs 16 JMH threads that each issue one synchronous write after
 * another, so 16 writes are in flight at any time, like fio's iodepth=16 over NBD in QEMU's
 * reference; an explicit pool would only add a hand-off that no part of the engine has. {@code qd1}
 * is one writer. Ours is measured in process, QEMU's through NBD over a Unix socket with fio on
 * the same two cores: compare the ratios to each one's no-job rate, not the absolute rates.
 *
 * <p>Reference (QEMU 7.2 qemu-storage-daemon, this machine type, queue depth 16): ~46k writes/s
 * with no job, ~17k/s under sync=none (0.37x), ~12k/s under sync=full. Target: our sync=none rate
 * at least 0.4x our no-job rate.
 */
@BenchmarkMode(Mode.Throughput)
@OutputTimeUnit(TimeUnit.SECONDS)
// Short iterations: on a quiet machine CBW writes run at well over 32k/s, which would use up the
// 32768 fresh clusters of the 2 GiB source within a 1 s iteration (the teardown says so).
@Warmup(iterations = 5, time = 200, timeUnit = TimeUnit.MILLISECONDS)
@Measurement(iterations = 10, time = 200, timeUnit = TimeUnit.MILLISECONDS)
@Fork(value = 1, jvmArgsAppend = {"-Xms1g", "-Xmx1g"})
public class CbwGuestWriteBenchmark {

  static final int CLUSTER = 64 * 1024;
  static final int WRITE = 4096;
  static final int MIB = 1024 * 1024;

  /** The source, the job and the walk over the clusters, shared by all writer threads. */
  @State(Scope.Benchmark)
  public static class Guest {
    @Param({"raw", "qcow2"})
    public String format;

    /** nojob, none (sync=none, fleecing target) or full (sync=full, fresh qcow2 target). */
    @Param({"nojob", "none", "full"})
    public String sync;

    /** Source size: at most this many MiB / 64 KiB writes per iteration hit fresh clusters. */
    @Param({"2048"})
    public int sizeMiB;

    /** sync=full's background copy rate in bytes per second; 0 = unlimited. */
    @Param({"33554432"})
    public long speed;

    /** Where the kept source and the per-iteration targets go (not /tmp, which may be a tmpfs). */
    @Param({"/var/tmp/blockbackup-bench-cbw"})
    public String dir;

    Path source;
    Path target;
    BlockDevice sourceImage;
    BlockNode node;
    BlockDevice targetImage;
    BackupJob job;
    /** Cluster indexes in random order; writers take the next one. */
    int[] clusters;
    final AtomicInteger next = new AtomicInteger();
    int iteration;

    @Setup(Level.Trial)
    public void openSource() throws IOException {
      Path d = Path.of(dir);
      Files.createDirectories(d);
      source = d.resolve("cbw-src-" + sizeMiB + "m." + format);
      target = d.resolve("cbw-tgt.qcow2");
      long size = (long) sizeMiB * MIB;
      if (!Files.exists(source)) {
        makeSource(size);
      }
      sourceImage = format.equals("qcow2") ? Qcow2Image.open(source, false, CacheMode.UNSAFE)
          : RawImage.open(source, false, CacheMode.UNSAFE);
      node = BlockNode.of("drive0", sourceImage);
      clusters = new int[(int) (size / CLUSTER)];
      for (int i = 0; i < clusters.length; i++) {
        clusters[i] = i;
      }
    }

    /** Fills every cluster with random data, through a temporary name so a killed run leaves none. */
    private void makeSource(long size) throws IOException {
      Path tmp = source.resolveSibling(source.getFileName() + ".tmp");
      Files.deleteIfExists(tmp);
      try (BlockDevice d = format.equals("qcow2")
          ? Qcow2Image.create(tmp, Qcow2CreateOptions.of(size), CacheMode.UNSAFE)
          : RawImage.create(tmp, size, CacheMode.UNSAFE)) {
        SplittableRandom r = new SplittableRandom(1);
        byte[] b = new byte[MIB];
        ByteBuffer buf = ByteBuffer.allocateDirect(MIB);
        for (long off = 0; off < size; off += MIB) {
          r.nextBytes(b);
          d.write(off, buf.clear().put(b).flip());
        }
      }
      Files.move(tmp, source);
    }

    @Setup(Level.Iteration)
    public void startJob() throws IOException, InterruptedException {
      // every iteration starts with no dirty page cache, as each of QEMU's reference runs did
      // (their settle step): what the last one wrote must not throttle this one's writes
      new ProcessBuilder("sync").inheritIO().start().waitFor();
      // a fresh walk: no cluster of this iteration has been written (or copied) yet
      SplittableRandom r = new SplittableRandom(1000 + iteration++);
      for (int i = clusters.length - 1; i > 0; i--) {
        int j = r.nextInt(i + 1);
        int t = clusters[i];
        clusters[i] = clusters[j];
        clusters[j] = t;
      }
      next.set(0);
      if (sync.equals("nojob")) {
        return;
      }
      Files.deleteIfExists(target);
      long size = sourceImage.size();
      if (sync.equals("none")) {
        // classic fleecing: readers of the target see the source where nothing was copied
        targetImage = Qcow2Image.create(target, Qcow2CreateOptions.of(size).withBacking(source.toString(), format),
            CacheMode.UNSAFE);
        job = BackupJob.create(new JobManager(), node, targetImage, BackupOptions.of(MirrorSyncMode.none));
      } else {
        targetImage = Qcow2Image.create(target, Qcow2CreateOptions.of(size), CacheMode.UNSAFE);
        job = BackupJob.create(new JobManager(), node, targetImage,
            BackupOptions.of(MirrorSyncMode.full).withSpeed(speed));
      }
      job.start();
    }

    @TearDown(Level.Iteration)
    public void stopJob() throws Exception {
      int used = next.get();
      // without a job a write costs the same on any cluster, so only job runs must not wrap
      if (used > clusters.length && job != null) {
        System.out.printf("%n[%s sync=%s] %d writes but only %d clusters: %d writes found copied clusters;"
            + " use a bigger -p sizeMiB%n", format, sync, used, clusters.length, used - clusters.length);
      }
      if (job != null) {
        try {
          job.cancel();
        } catch (JobException e) {
          // an unlimited sync=full may have finished and gone (auto-dismiss) by now
          if (!job.concludedFuture().isDone()) {
            throw e;
          }
        }
        if (!job.awaitConcluded(Duration.ofSeconds(60))) {
          throw new IllegalStateException("the job did not end within 60 s of cancel");
        }
        job = null;
        targetImage.close();
        targetImage = null;
        Files.deleteIfExists(target);
      }
    }

    @TearDown(Level.Trial)
    public void closeSource() throws IOException {
      node.close();
    }

    /** The offset of the next write: a random 4 KiB slot of the next cluster of the walk. */
    long nextOffset(SplittableRandom r) {
      int i = next.getAndIncrement();
      long cluster = clusters[i % clusters.length];
      return cluster * CLUSTER + (long) r.nextInt(CLUSTER / WRITE) * WRITE;
    }
  }

  /** One writer's data and random slot choice. */
  @State(Scope.Thread)
  public static class Writer {
    ByteBuffer data;
    SplittableRandom random;

    @Setup(Level.Trial)
    public void fill() {
      random = new SplittableRandom(Thread.currentThread().getId());
      byte[] b = new byte[WRITE];
      random.nextBytes(b);
      data = ByteBuffer.allocateDirect(WRITE).put(b).flip();
    }
  }

  /** 16 writers, one write in flight each: queue depth 16. */
  @Benchmark
  @Threads(16)
  public void qd16(Guest guest, Writer writer) throws IOException {
    guest.node.write(guest.nextOffset(writer.random), writer.data.duplicate());
  }

  /** One writer: queue depth 1. */
  @Benchmark
  @Threads(1)
  public void qd1(Guest guest, Writer writer) throws IOException {
    guest.node.write(guest.nextOffset(writer.random), writer.data.duplicate());
  }
}
