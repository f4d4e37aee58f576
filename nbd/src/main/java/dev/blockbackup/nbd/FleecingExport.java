package dev.blockbackup.nbd;

import dev.blockbackup.engine.BackupJob;
import dev.blockbackup.engine.BackupOptions;
import dev.blockbackup.engine.BlockDirtyBitmap;
import dev.blockbackup.engine.BlockDirtyBitmapMergeSource;
import dev.blockbackup.engine.BlockNode;
import dev.blockbackup.engine.JobException;
import dev.blockbackup.engine.JobManager;
import dev.blockbackup.engine.MirrorSyncMode;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.NotDirectoryException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;

/**
 * Pull-mode fleecing, as libvirt's pull-mode backup sets it up in QEMU: a backup job with
 * sync=none from the live node to a temporary qcow2 image (the fleecing image), and two exports:
 *
 * <ul>
 *   <li>{@link #liveExport()}, called NAME: the live node, writable; the guest (or anything else)
 *       keeps writing through it;
 *   <li>{@link #snapshotExport()}, called NAME{@value #SNAPSHOT_SUFFIX}: the job's {@code
 *       SnapshotView}, read-only: the disk exactly as it was when the job started, whatever is
 *       written to the live export meanwhile. A backup client reads this one.
 * </ul>
 *
 * <p>The fleecing image needs no backing file: the view reads clusters nobody has overwritten
 * from the live node and only the old content of overwritten clusters from the image, which so
 * holds only what the guest changed while the fleece lives. It has QEMU's default cluster size
 * (64 KiB, the backup job's cluster), is written without syncs (it is thrown away) and is deleted
 * by {@link #close()}.
 *
 * <p>Each bitmap named is offered on the snapshot export as {@code qemu:dirty-bitmap:B}, frozen at
 * the point in time: while the live node is drained for the job's start, a disabled copy of the
 * live node's bitmap B is made on the snapshot's own node (QEMU's snapshot-access is a node with
 * bitmaps of its own too). So the snapshot export's context names the bitmap the client knows,
 * its bits are exactly the changes up to the point in time, and the live bitmap B goes on
 * recording the writes after it, for the next incremental backup.
 *
 * <p>{@link #close()} cancels the job (the view then fails with ESHUTDOWN), removes the copies
 * and deletes the fleecing image: close the NBD server first, since it holds the copies busy.
 */
public final class FleecingExport implements AutoCloseable {

  /** What the snapshot export's name adds to the live export's name. */
  public static final String SNAPSHOT_SUFFIX = "-snapshot";

  /** How long {@link #close()} waits for the cancelled job to end: it has nothing to copy. */
  private static final Duration CANCEL_WAIT = Duration.ofSeconds(60);

  private final BlockNode node;
  private final BackupJob job;
  private final BlockNode snapshotNode;
  private final List<String> bitmaps;
  private final Qcow2Image target;
  private final Path targetPath;
  private final NbdExport live;
  private final NbdExport snapshot;
  private boolean closed;

  private FleecingExport(BlockNode node, BackupJob job, BlockNode snapshotNode, List<String> bitmaps,
      Qcow2Image target, Path targetPath, String name) {
    this.node = node;
    this.job = job;
    this.snapshotNode = snapshotNode;
    this.bitmaps = List.copyOf(bitmaps);
    this.target = target;
    this.targetPath = targetPath;
    this.live = NbdExport.of(name, node);
    NbdExport s = NbdExport.of(name + SNAPSHOT_SUFFIX, snapshotNode).withReadOnly(true)
        .withDescription("point-in-time snapshot of " + (name.isEmpty() ? "the default export" : "'" + name + "'"));
    for (String b : bitmaps) {
      s = s.withBitmap(snapshotNode, b);
    }
    this.snapshot = s;
  }

  /**
   * Starts fleecing {@code node}: creates the fleecing image in {@code dir}, starts the sync=none
   * job with {@code jobs} (job id {@code fleecing-NODE}) and freezes a copy of each of {@code
   * bitmaps} at the same instant. On any failure nothing is left behind: no file, job or bitmap.
   *
   * @param name the live export's name; the snapshot export's is {@code name + SNAPSHOT_SUFFIX}
   * @throws dev.blockbackup.engine.BitmapException a bitmap is missing, busy or inconsistent
   * @throws dev.blockbackup.engine.JobException the node is busy with another job, or the job id
   *     is taken
   * @throws NoSuchFileException {@code dir} does not exist
   * @throws NotDirectoryException {@code dir} is not a directory
   * @throws IOException the fleecing image cannot be created in {@code dir} (for instance
   *     {@link java.nio.file.AccessDeniedException})
   * @throws BlockIOException the fleecing image cannot be written
   */
  public static FleecingExport start(JobManager jobs, BlockNode node, String name, Path dir, List<String> bitmaps)
      throws IOException, BlockIOException {
    Objects.requireNonNull(jobs, "jobs");
    Objects.requireNonNull(node, "node");
    Objects.requireNonNull(name, "name");
    Objects.requireNonNull(dir, "dir");
    List<String> names = List.copyOf(bitmaps);
    if (names.stream().distinct().count() != names.size()) {
      throw new IllegalArgumentException("a bitmap is named twice: " + names);
    }
    List<Integer> granularities = new ArrayList<>();
    for (String b : names) {
      // the checks an export of it makes (missing, busy, inconsistent), with QEMU's messages, before
      // anything is made
      node.useBitmap(b).close();
      granularities.add(node.findBitmap(b).map(BlockDirtyBitmap::granularity).orElseThrow());
    }
    if (!Files.exists(dir)) {
      throw new NoSuchFileException(dir.toString(), null, "the directory for the fleecing image does not exist");
    }
    if (!Files.isDirectory(dir)) {
      throw new NotDirectoryException(dir.toString());
    }
    // createTempFile claims a fresh name atomically: the only file close() will ever delete
    Path path = Files.createTempFile(dir, node.name() + "-fleece-", ".qcow2");
    Qcow2Image target = null;
    BackupJob job = null;
    try {
      target = Qcow2Image.create(path, Qcow2CreateOptions.of(node.size()), CacheMode.UNSAFE);
      BlockNode snapshotNode;
      // One drained section: no write reaches the node between the job's point in time and the
      // bitmaps' copies, so the copies describe exactly the content the snapshot shows.
      try (BlockNode.Drained d = node.drain()) {
        job = BackupJob.create(jobs, node, target,
            BackupOptions.of(MirrorSyncMode.none).withJobId("fleecing-" + node.name()));
        snapshotNode = BlockNode.of(node.name() + SNAPSHOT_SUFFIX, job.snapshotView());
        for (int i = 0; i < names.size(); i++) {
          String b = names.get(i);
          snapshotNode.addBitmap(b, granularities.get(i), false, true);
          snapshotNode.mergeBitmaps(b, List.of(BlockDirtyBitmapMergeSource.external(node, b)));
        }
      }
      job.start();
      return new FleecingExport(node, job, snapshotNode, names, target, path, name);
    } catch (IOException | RuntimeException e) {
      undo(job, target, path, e);
      throw e;
    }
  }

  /** Takes back what {@link #start} made before {@code cause}; what fails here is suppressed. */
  private static void undo(BackupJob job, Qcow2Image target, Path path, Exception cause) {
    if (job != null) {
      try {
        // a job that was never started goes straight to its end on cancel
        job.cancel();
        job.awaitConcluded(CANCEL_WAIT);
      } catch (InterruptedException | RuntimeException e) {
        if (e instanceof InterruptedException) {
          Thread.currentThread().interrupt();
        }
        cause.addSuppressed(e);
      }
    }
    try {
      if (target != null) {
        target.close();
      }
    } catch (BlockIOException e) {
      cause.addSuppressed(e);
    }
    try {
      Files.deleteIfExists(path);
    } catch (IOException e) {
      cause.addSuppressed(e);
    }
  }

  /** The live node, writable, under the name given to {@link #start}. */
  public NbdExport liveExport() {
    return live;
  }

  /** The point-in-time snapshot, read-only, with the frozen bitmaps as its dirty-bitmap contexts. */
  public NbdExport snapshotExport() {
    return snapshot;
  }

  /** Both exports, the live one first. */
  public List<NbdExport> exports() {
    return List.of(live, snapshot);
  }

  /** The node being fleeced. */
  public BlockNode node() {
    return node;
  }

  /** The sync=none job. */
  public BackupJob job() {
    return job;
  }

  /** The fleecing image (deleted by {@link #close()}). */
  public Path targetPath() {
    return targetPath;
  }

  /** The {@code qemu:dirty-bitmap:} contexts the snapshot export offers, in the order given. */
  public List<String> bitmapContexts() {
    return snapshot.bitmaps().stream().map(NbdExport.ExportedBitmap::contextName).toList();
  }

  /**
   * Ends the fleece: cancels the job (the snapshot then fails with ESHUTDOWN), removes the frozen
   * bitmaps, closes and deletes the fleecing image. The live node stays open. A second call does
   * nothing; if a step fails, the others are still done and the first failure is thrown.
   *
   * @throws dev.blockbackup.engine.BitmapException a frozen bitmap is still in use (close the
   *     server first); a later close() retries what is left
   */
  @Override
  public synchronized void close() throws IOException {
    if (closed) {
      return;
    }
    Exception first = null;
    try {
      job.cancel();
    } catch (JobException ending) {
      // it ended on its own (a broken snapshot fails it) or is ending already
    }
    try {
      if (!job.awaitConcluded(CANCEL_WAIT)) {
        first = new IOException("fleecing job '" + job.id() + "' did not end within " + CANCEL_WAIT.toSeconds()
            + " s of its cancel");
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      first = new IOException("interrupted while the fleecing job '" + job.id() + "' ended", e);
    }
    boolean bitmapsLeft = false;
    for (String b : bitmaps) {
      if (snapshotNode.findBitmap(b).isPresent()) {
        try {
          snapshotNode.removeBitmap(b);
        } catch (RuntimeException e) {
          bitmapsLeft = true;
          first = add(first, e);
        }
      }
    }
    try {
      target.close(); // a second close does nothing
    } catch (BlockIOException e) {
      first = add(first, e);
    }
    try {
      Files.deleteIfExists(targetPath);
    } catch (IOException e) {
      first = add(first, e);
    }
    closed = !bitmapsLeft;
    if (first instanceof IOException io) {
      throw io;
    }
    if (first instanceof RuntimeException r) {
      throw r;
    }
  }

  private static Exception add(Exception first, Exception next) {
    if (first == null) {
      return next;
    }
    first.addSuppressed(next);
    return first;
  }

  @Override
  public String toString() {
    return "FleecingExport[" + live.name() + ", " + snapshot.name() + "]";
  }
}
