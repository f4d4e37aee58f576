package dev.blockbackup.benchmarks;

import dev.blockbackup.engine.BackupJob;
import dev.blockbackup.engine.BackupOptions;
import dev.blockbackup.engine.BlockNode;
import dev.blockbackup.engine.JobManager;
import dev.blockbackup.engine.MirrorSyncMode;
import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.io.IOException;
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
 * A full backup in a warm JVM: a sync=full job from a qcow2 source into a fresh qcow2 target with
 * cache=unsafe, no speed limit; the score is milliseconds per backup. The source is {@code -p source}
 * if given (backup-vs-convert.sh keeps its 2 GiB image as
 * /var/tmp/blockbackup-bench/src-seed1.qcow2, so the score compares with that script's qemu-img
 * convert time), else a 512 MiB image made here once (75% random data in 64 KiB to 2 MiB regions,
 * 10% zeros written as data, 15% never written: the script's layout, smaller). {@code maxWorkers}
 * shows how the job's speed moves with its threads.
 */
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 2, time = 2)
@Measurement(iterations = 5, time = 2)
@Fork(value = 1, jvmArgsAppend = {"-Xms1g", "-Xmx1g"})
public class FullBackupBenchmark {

  static final int MIB = 1024 * 1024;
  static final int SIZE_MIB = 512;

  @State(Scope.Benchmark)
  public static class Images {
    /** x-perf.max-workers; the job runs at most 2 x cores threads whatever this says. */
    @Param({"64", "2", "1"})
    public int maxWorkers;

    @Param({"/var/tmp/blockbackup-bench-cbw"})
    public String dir;

    /** An existing qcow2 to back up instead of the 512 MiB image made in {@code dir}. */
    @Param({""})
    public String source;

    Path sourcePath;
    Path target;
    BlockNode node;
    BlockDevice targetImage;

    @Setup(Level.Trial)
    public void openSource() throws IOException {
      Path d = Path.of(dir);
      Files.createDirectories(d);
      target = d.resolve("full-tgt.qcow2");
      if (source.isEmpty()) {
        sourcePath = d.resolve("full-src-" + SIZE_MIB + "m.qcow2");
        if (!Files.exists(sourcePath)) {
          makeSource();
        }
      } else {
        sourcePath = Path.of(source);
      }
      node = BlockNode.of("drive0", Qcow2Image.open(sourcePath, true));
    }

    private void makeSource() throws IOException {
      Path tmp = sourcePath.resolveSibling(sourcePath.getFileName() + ".tmp");
      Files.deleteIfExists(tmp);
      long size = (long) SIZE_MIB * MIB;
      try (BlockDevice d = Qcow2Image.create(tmp, Qcow2CreateOptions.of(size), CacheMode.UNSAFE)) {
        SplittableRandom r = new SplittableRandom(1);
        long pos = 0;
        while (pos < size) {
          int n = (int) Math.min(size - pos, 64L * 1024 * (1 + r.nextInt(32)));
          double kind = r.nextDouble();
          if (kind < 0.75) {
            byte[] b = new byte[n];
            r.nextBytes(b);
            d.write(pos, ByteBuffer.wrap(b));
          } else if (kind < 0.85) {
            d.write(pos, ByteBuffer.allocate(n)); // zeros written as data: allocated
          }
          pos += n;
        }
      }
      Files.move(tmp, sourcePath);
    }

    @Setup(Level.Invocation)
    public void createTarget() throws IOException {
      Files.deleteIfExists(target);
      targetImage = Qcow2Image.create(target, Qcow2CreateOptions.of(node.size()), CacheMode.UNSAFE);
    }

    @TearDown(Level.Invocation)
    public void closeTarget() throws IOException {
      targetImage.close();
      Files.deleteIfExists(target);
    }

    @TearDown(Level.Trial)
    public void closeSource() throws IOException {
      node.close();
    }
  }

  /** One full backup of the whole image. */
  @Benchmark
  public void fullBackup(Images images) throws Exception {
    BackupJob job = BackupJob.create(new JobManager(), images.node, images.targetImage,
        BackupOptions.of(MirrorSyncMode.full).withMaxWorkers(images.maxWorkers));
    job.start();
    if (!job.awaitConcluded(Duration.ofMinutes(5))) {
      throw new IllegalStateException("the backup did not end within 5 minutes");
    }
    if (job.error() != null) {
      throw new IllegalStateException("the backup failed: " + job.error());
    }
  }
}
