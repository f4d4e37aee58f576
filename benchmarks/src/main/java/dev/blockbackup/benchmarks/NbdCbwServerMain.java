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
import dev.blockbackup.nbd.NbdExport;
import dev.blockbackup.nbd.NbdServer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Locale;
import java.util.concurrent.CountDownLatch;

/**
 * The server side of cbw-nbd.sh: a guest disk exported over NBD while a backup job runs on it,
 * as qemu-baselines.md section 2 sets up qemu-storage-daemon.
 *
 * <pre>java -cp benchmarks.jar dev.blockbackup.benchmarks.NbdCbwServerMain FORMAT SOURCE SOCKET SYNC [TARGET [PRISTINE]]</pre>
 *
 * <p>Opens SOURCE (a copy the caller made, FORMAT raw or qcow2) with cache=unsafe, as
 * CbwGuestWriteBenchmark does, wraps it in a {@link BlockNode} and exports the node as "export"
 * on the Unix socket SOCKET. Then, for SYNC {@code none} or {@code full} (not {@code nojob}), it
 * starts a backup job on the node into a new qcow2 TARGET: sync=none's target has SOURCE as its
 * backing file (fleecing), sync=full's is a fresh image and the job runs without a speed limit, as
 * QEMU's reference. The job starts after the export is up, so its copy-before-write filter goes
 * under the node the export already uses, as under a running guest. Prints "ready" once all that
 * is done.
 *
 * <p>Before that it serves a second export, "warmup": a 256 MiB scratch image of the same format
 * beside SOURCE with a sync=full job of its own and, once that is done, a sync=none job; prints
 * "warmup" and waits for a line on stdin
 * while the caller writes to it; so the measured writes meet compiled code, not the interpreter.
 *
 * <p>On stdin EOF (or SIGTERM) it cancels sync=none, waits for sync=full to finish, closes the
 * server, the target and the source, and prints the job's figures. Given PRISTINE (the source as
 * it was before the guest's writes), it checks with {@code qemu-img compare} that the sync=full
 * target equals it: the point in time held with the export below the filter. Exit status 1 if
 * the check or the job failed.
 */
public final class NbdCbwServerMain {

  private NbdCbwServerMain() {}

  public static void main(String[] args) throws Exception {
    if (args.length < 4 || args.length > 6) {
      System.err.println("usage: NbdCbwServerMain raw|qcow2 SOURCE SOCKET nojob|none|full [TARGET [PRISTINE]]");
      System.exit(2);
    }
    String format = args[0];
    Path source = Path.of(args[1]);
    Path socket = Path.of(args[2]);
    String sync = args[3];
    Path target = args.length > 4 ? Path.of(args[4]) : null;
    Path pristine = args.length > 5 ? Path.of(args[5]) : null;
    if (!format.equals("raw") && !format.equals("qcow2")) {
      fail("format must be raw or qcow2, not '" + format + "'");
    }
    if (!sync.equals("nojob") && !sync.equals("none") && !sync.equals("full")) {
      fail("sync must be nojob, none or full, not '" + sync + "'");
    }
    if (!sync.equals("nojob") && target == null) {
      fail("sync=" + sync + " needs a TARGET");
    }

    BlockDevice src = format.equals("qcow2") ? Qcow2Image.open(source, false, CacheMode.UNSAFE)
        : RawImage.open(source, false, CacheMode.UNSAFE);
    BlockNode node = BlockNode.of("drive0", src);
    // the warm-up disk: a scratch image of the same format beside the source, with a sync=none
    // job of its own, so the JIT has compiled the NBD, driver and copy-before-write paths before
    // the measured writes (a server runs warm; QEMU needs no warm-up)
    Path scratch = source.resolveSibling("warmup." + format);
    Path scratchTarget = source.resolveSibling("warmup-target.qcow2");
    long scratchSize = 256L << 20;
    BlockDevice warmImage = format.equals("qcow2")
        ? Qcow2Image.create(scratch, Qcow2CreateOptions.of(scratchSize), CacheMode.UNSAFE)
        : RawImage.create(scratch, scratchSize, CacheMode.UNSAFE);
    byte[] junk = new byte[1 << 20];
    new java.util.SplittableRandom(2).nextBytes(junk);
    for (long off = 0; off < scratchSize; off += junk.length) {
      warmImage.write(off, java.nio.ByteBuffer.wrap(junk));
    }
    BlockNode warmNode = BlockNode.of("warmup", warmImage);
    NbdServer server = NbdServer.builder().export(NbdExport.of("export", node))
        .export(NbdExport.of("warmup", warmNode)).unixSocket(socket).build();
    server.start();

    java.io.BufferedReader stdinLines = new java.io.BufferedReader(
        new java.io.InputStreamReader(System.in, java.nio.charset.StandardCharsets.UTF_8));
    // first a sync=full job (its background copier needs compiling too), then sync=none until "go"
    try (BlockDevice fullTarget = Qcow2Image.create(scratchTarget.resolveSibling("warmup-full.qcow2"),
        Qcow2CreateOptions.of(scratchSize), CacheMode.UNSAFE);
        BlockDevice warmTarget = Qcow2Image.create(scratchTarget,
            Qcow2CreateOptions.of(scratchSize), CacheMode.UNSAFE)) {
      BackupJob fullJob = BackupJob.create(new JobManager(), warmNode, fullTarget,
          BackupOptions.of(MirrorSyncMode.full).withJobId("warmup-full"));
      fullJob.start();
      System.out.println("warmup");
      System.out.flush();
      fullJob.awaitConcluded(Duration.ofMinutes(1));
      BackupJob warmJob = BackupJob.create(new JobManager(), warmNode, warmTarget,
          BackupOptions.of(MirrorSyncMode.none).withJobId("warmup"));
      warmJob.start();
      stdinLines.readLine(); // "go" (or EOF)
      warmJob.cancel();
      warmJob.awaitConcluded(Duration.ofMinutes(1));
    }
    Files.deleteIfExists(scratchTarget.resolveSibling("warmup-full.qcow2"));

    BlockDevice targetImage = null;
    BackupJob job = null;
    long jobStart = System.nanoTime();
    if (!sync.equals("nojob")) {
      Files.deleteIfExists(target);
      Qcow2CreateOptions o = Qcow2CreateOptions.of(node.size());
      // No backing file for the sync=none target: opening the source a second time, read-only,
      // beside the node that writes it is refused by the image locks, as QEMU refuses it; QEMU's
      // side names the source node as the backing instead. Guest writes never read the target's
      // backing, so the figure measured is the same.
      targetImage = Qcow2Image.create(target, o, CacheMode.UNSAFE);
      job = BackupJob.create(new JobManager(), node, targetImage,
          BackupOptions.of(sync.equals("none") ? MirrorSyncMode.none : MirrorSyncMode.full));
      jobStart = System.nanoTime();
      job.start();
    }
    System.out.println("ready");
    System.out.flush();

    CountDownLatch stop = new CountDownLatch(1);
    Runtime.getRuntime().addShutdownHook(new Thread(stop::countDown));
    Thread stdin = new Thread(() -> {
      try {
        while (stdinLines.readLine() != null) {
          // the caller closes stdin to stop us
        }
      } catch (java.io.IOException e) {
        // treat as EOF
      }
      stop.countDown();
    }, "stdin-eof");
    stdin.setDaemon(true);
    stdin.start();
    stop.await();

    boolean ok = true;
    if (job != null) {
      if (sync.equals("none")) {
        try {
          job.cancel();
        } catch (JobException e) {
          // already over
        }
      }
      if (!job.awaitConcluded(Duration.ofMinutes(10))) {
        fail("the job did not end within 10 minutes");
      }
      double s = (System.nanoTime() - jobStart) / 1e9;
      String error = job.error();
      if (sync.equals("full") && error != null) {
        System.err.println("NbdCbwServerMain: the sync=full job failed: " + error);
        ok = false;
      }
      System.err.printf(Locale.ROOT, "job sync=%s: %.3f s from start to conclusion (%s)%n", sync, s,
          error == null ? "completed" : error);
    }
    server.close();
    if (targetImage != null) {
      targetImage.close();
    }
    node.close();
    warmNode.close();
    Files.deleteIfExists(scratch);
    Files.deleteIfExists(scratchTarget);
    if (ok && pristine != null && sync.equals("full")) {
      Process p = new ProcessBuilder("qemu-img", "compare", "-q", "-f", "qcow2", "-F", format,
          target.toString(), pristine.toString()).inheritIO().start();
      int rc = p.waitFor();
      System.err.println("check: sync=full target " + (rc == 0 ? "equals" : "DIFFERS FROM (rc " + rc + ")")
          + " the source as it was before the writes");
      ok = rc == 0;
    }
    System.exit(ok ? 0 : 1);
  }

  private static void fail(String message) {
    System.err.println("NbdCbwServerMain: " + message);
    System.exit(2);
  }
}
