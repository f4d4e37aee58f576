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
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Locale;

/**
 * A full backup of a qcow2 image into a new qcow2 image, timed inside the JVM, for
 * backup-vs-convert.sh until the CLI has a {@code backup} command:
 *
 * <pre>java -cp benchmarks.jar dev.blockbackup.benchmarks.FullBackupMain SRC.qcow2 TARGET.qcow2 [max-workers]</pre>
 *
 * <p>Opens the source with our qcow2 driver, creates the target with the same size and 64 KiB
 * clusters and {@code cache=unsafe} (what qemu-img convert uses for its target), runs a
 * blockdev-backup sync=full job without a speed limit and closes both. Prints on stderr
 * {@code backup: S s (job J s) ...}: S from just before opening the source to after closing the
 * target, J from job start to its conclusion.
 */
public final class FullBackupMain {

  private FullBackupMain() {}

  public static void main(String[] args) throws Exception {
    if (args.length < 2 || args.length > 3) {
      System.err.println("usage: FullBackupMain SRC.qcow2 TARGET.qcow2 [max-workers]");
      System.exit(2);
    }
    Path src = Path.of(args[0]);
    Path dst = Path.of(args[1]);
    BackupOptions options = BackupOptions.of(MirrorSyncMode.full);
    if (args.length == 3) {
      options = options.withMaxWorkers(Integer.parseInt(args[2]));
    }
    if (Files.exists(dst)) {
      System.err.println("FullBackupMain: " + dst + " exists; refusing to overwrite it");
      System.exit(1);
    }
    long t0 = System.nanoTime();
    long jobNanos;
    long size;
    BlockNode node = BlockNode.of("drive0", Qcow2Image.open(src, true));
    try (BlockDevice target = Qcow2Image.create(dst, Qcow2CreateOptions.of(node.size()), CacheMode.UNSAFE)) {
      size = node.size();
      BackupJob job = BackupJob.create(new JobManager(), node, target, options);
      long j0 = System.nanoTime();
      job.start();
      if (!job.awaitConcluded(Duration.ofHours(1))) {
        throw new IllegalStateException("the backup did not end within an hour");
      }
      jobNanos = System.nanoTime() - j0;
      if (job.error() != null) {
        System.err.println("FullBackupMain: the backup failed: " + job.error());
        System.exit(1);
      }
    } finally {
      node.close();
    }
    double s = (System.nanoTime() - t0) / 1e9;
    System.err.printf(Locale.ROOT, "backup: %.3f s (job %.3f s) for %d MiB, %.0f MiB/s%n", s, jobNanos / 1e9,
        size >> 20, (size >> 20) / s);
  }
}
