package dev.blockbackup.benchmarks;

import dev.blockbackup.engine.BackupJob;
import dev.blockbackup.engine.BackupOptions;
import dev.blockbackup.engine.BlockNode;
import dev.blockbackup.engine.JobManager;
import dev.blockbackup.engine.MirrorSyncMode;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
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
import org.openjdk.jmh.annotations.Warmup;

/**
 * An incremental backup against a full one of the same disk: a raw source of {@code sizeMiB}
 * (4 GiB by default) with random data in every cluster, whose node carries a bitmap with
 * {@code dirtyPercent} (1%) of its 64 KiB clusters dirty in scattered places. {@code full} copies
 * the whole disk into a fresh qcow2 (cache=unsafe); {@code incremental} copies only the dirty
 * clusters into a fresh qcow2, with bitmap-mode never so that every invocation finds the same
 * bits. One job per invocation, in-process times. Target: incremental at most 5% of full.
 */
@BenchmarkMode(Mode.SingleShotTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 2, batchSize = 1)
@Measurement(iterations = 5, batchSize = 1)
@Fork(value = 1, jvmArgsAppend = {"-Xms1g", "-Xmx1g"})
@State(Scope.Benchmark)
public class IncrementalBackupBenchmark {

  static final int CLUSTER = 64 * 1024;

  @Param({"4096"})
  public long sizeMiB;

  @Param({"1"})
  public double dirtyPercent;

  @Param({"/var/tmp/blockbackup-bench-incremental"})
  public String dir;

  private BlockNode node;
  private Path target;
  private final JobManager jobs = new JobManager();

  @Setup(Level.Trial)
  public void source() throws Exception {
    Path d = Files.createDirectories(Path.of(dir));
    Path src = d.resolve("src-" + sizeMiB + "m.raw");
    long size = sizeMiB << 20;
    if (!Files.exists(src) || Files.size(src) != size) {
      Path tmp = d.resolve("src.tmp");
      try (RawImage img = RawImage.create(tmp, size, CacheMode.UNSAFE)) {
        SplittableRandom r = new SplittableRandom(1);
        byte[] mib = new byte[1 << 20];
        for (long off = 0; off < size; off += mib.length) {
          r.nextBytes(mib);
          img.write(off, ByteBuffer.wrap(mib));
        }
      }
      Files.move(tmp, src, java.nio.file.StandardCopyOption.REPLACE_EXISTING);
    }
    node = BlockNode.of("drive0", RawImage.open(src, true));
    node.addBitmap("b0");
    // the node is read-only: set the dirty clusters in a bitmap merged from a scratch node's writes
    Path scratch = d.resolve("scratch.raw");
    try (RawImage s = RawImage.create(scratch, size, CacheMode.UNSAFE)) {
      BlockNode sn = BlockNode.of("scratch", s);
      sn.addBitmap("marks");
      SplittableRandom r = new SplittableRandom(2);
      long clusters = size / CLUSTER;
      long dirty = (long) (clusters * dirtyPercent / 100);
      for (long i = 0; i < dirty; i++) {
        sn.write(r.nextLong(clusters) * CLUSTER, ByteBuffer.allocate(1));
      }
      node.mergeBitmaps("b0", java.util.List.of(
          dev.blockbackup.engine.BlockDirtyBitmapMergeSource.external(sn, "marks")));
    }
    Files.deleteIfExists(scratch);
    target = d.resolve("target.qcow2");
  }

  @TearDown(Level.Trial)
  public void close() throws Exception {
    node.close();
    Files.deleteIfExists(target);
  }

  private long backup(BackupOptions options) throws Exception {
    Files.deleteIfExists(target);
    try (Qcow2Image t = Qcow2Image.create(target, Qcow2CreateOptions.of(node.size()), CacheMode.UNSAFE)) {
      BackupJob job = BackupJob.create(jobs, node, t, options);
      job.start();
      if (!job.awaitConcluded(Duration.ofMinutes(10)) || job.error() != null) {
        throw new IllegalStateException("backup failed: " + job.error());
      }
      return job.currentProgress();
    }
  }

  @Benchmark
  public long full() throws Exception {
    return backup(BackupOptions.of(MirrorSyncMode.full));
  }

  @Benchmark
  public long incremental() throws Exception {
    return backup(BackupOptions.of(MirrorSyncMode.bitmap).withBitmap("b0")
        .withBitmapMode(dev.blockbackup.engine.BitmapSyncMode.never));
  }
}
