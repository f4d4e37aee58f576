package dev.blockbackup.engine;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.formats.ImageFormat;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Objects;
import java.util.Set;

/**
 * QEMU's {@code transaction} command: a list of actions on several nodes applied at one point in
 * time, all or none. Every node an action names is drained first, so no guest request is in flight
 * on any of them and none starts; then each action is prepared in order, seeing what the ones
 * before it did (a bitmap added, then a backup that uses it). If one is refused, those already
 * prepared are undone in reverse order and the error is the refused action's; otherwise all are
 * committed (the backup jobs start) and the nodes are released together.
 *
 * <p>With {@link CompletionMode#grouped}, the backup jobs of the transaction also end together:
 * one failing or being cancelled cancels the others, and each puts its bitmap back as a failed job
 * of its bitmap-mode does; they are finalized only once all have succeeded.
 */
public final class Transaction {

  /** QAPI ActionCompletionMode. */
  public enum CompletionMode {
    /** Each job ends on its own (the default). */
    individual,
    /** The jobs succeed together or fail together. */
    grouped
  }

  /** One action of a transaction: a bitmap command, or a backup. */
  public abstract static class Action {
    private Action() {}

    /** The nodes the action touches: drained for the whole transaction. */
    abstract List<BlockNode> nodes();

    /** Applies the action; throws, with QEMU's message, when it is refused. */
    abstract void prepare();

    /** Makes a prepared action final. */
    void commit() {}

    /** Undoes a prepared action. */
    void abort() {}
  }

  private final List<Action> actions;
  private final CompletionMode mode;

  private Transaction(List<Action> actions, CompletionMode mode) {
    this.actions = List.copyOf(actions);
    this.mode = Objects.requireNonNull(mode, "mode");
  }

  /** The transaction of {@code actions}, in order, each job ending on its own. */
  public static Transaction of(List<Action> actions) {
    return new Transaction(actions, CompletionMode.individual);
  }

  /** The transaction of {@code actions}, with the jobs' completion mode. */
  public static Transaction of(List<Action> actions, CompletionMode mode) {
    return new Transaction(actions, mode);
  }

  /**
   * Runs the transaction: all actions take effect at one instant, or none does.
   *
   * @return the backup jobs it started, in action order
   * @throws RuntimeException the refused action's error (a {@link JobException} or {@link
   *     BitmapException} with QEMU's message); nothing of the transaction remains then
   */
  public List<BackupJob> run() {
    Set<BlockNode> nodes = new LinkedHashSet<>();
    for (Action a : actions) {
      nodes.addAll(a.nodes());
    }
    List<BlockNode.Drained> drains = new ArrayList<>();
    try {
      for (BlockNode n : nodes) {
        drains.add(n.drain());
      }
      List<Action> prepared = new ArrayList<>();
      try {
        for (Action a : actions) {
          a.prepare();
          prepared.add(a);
        }
      } catch (RuntimeException e) {
        for (int i = prepared.size() - 1; i >= 0; i--) {
          try {
            prepared.get(i).abort();
          } catch (RuntimeException suppressed) {
            e.addSuppressed(suppressed);
          }
        }
        throw e;
      }
      List<BackupJob> jobs = new ArrayList<>();
      for (Action a : actions) {
        if (a instanceof Backup b) {
          jobs.add(b.job);
        }
      }
      if (mode == CompletionMode.grouped && jobs.size() > 1) {
        JobTxn txn = new JobTxn();
        for (BackupJob j : jobs) {
          j.joinTxn(txn);
        }
      }
      for (Action a : actions) {
        a.commit();
      }
      return jobs;
    } finally {
      for (int i = drains.size() - 1; i >= 0; i--) {
        drains.get(i).close();
      }
    }
  }

  // ---------------------------------------------------------------- the actions

  /** block-dirty-bitmap-add (granularity null for QEMU's default). */
  public static Action bitmapAdd(BlockNode node, String name, Integer granularity, boolean persistent,
      boolean disabled) {
    return new BitmapAction(node, name) {
      @Override
      void prepare() {
        node.bitmaps().add(name, granularity, persistent, disabled);
      }

      @Override
      void abort() {
        node.bitmaps().remove(name);
      }
    };
  }

  /** block-dirty-bitmap-remove: the bitmap goes at commit; until then it is busy. */
  public static Action bitmapRemove(BlockNode node, String name) {
    return new BitmapAction(node, name) {
      private BlockDirtyBitmap bitmap;

      @Override
      void prepare() {
        DirtyBitmaps r = node.bitmaps();
        synchronized (r) {
          bitmap = r.lookup(name);
          DirtyBitmaps.check(bitmap, java.util.EnumSet.of(DirtyBitmaps.Refuse.BUSY, DirtyBitmaps.Refuse.READONLY));
          r.setBusy(bitmap, true);
        }
      }

      @Override
      void commit() {
        DirtyBitmaps r = node.bitmaps();
        synchronized (r) {
          r.setBusy(bitmap, false);
          r.remove(name);
        }
      }

      @Override
      void abort() {
        node.bitmaps().setBusy(bitmap, false);
      }
    };
  }

  /** block-dirty-bitmap-clear: the old bits come back on abort. */
  public static Action bitmapClear(BlockNode node, String name) {
    return new BitsChange(node, name) {
      @Override
      void change() {
        node.bitmaps().clear(name);
      }
    };
  }

  /** block-dirty-bitmap-merge into {@code target} of this node: the old bits come back on abort. */
  public static Action bitmapMerge(BlockNode node, String target, List<BlockDirtyBitmapMergeSource> sources) {
    List<BlockDirtyBitmapMergeSource> from = List.copyOf(sources);
    return new BitsChange(node, target) {
      @Override
      List<BlockNode> nodes() {
        List<BlockNode> all = new ArrayList<>(List.of(node));
        for (BlockDirtyBitmapMergeSource s : from) {
          if (s.node() != null) {
            all.add(s.node());
          }
        }
        return all;
      }

      @Override
      void change() {
        node.bitmaps().merge(target, from);
      }
    };
  }

  /** block-dirty-bitmap-enable. */
  public static Action bitmapEnable(BlockNode node, String name) {
    return new EnableChange(node, name, true);
  }

  /** block-dirty-bitmap-disable. */
  public static Action bitmapDisable(BlockNode node, String name) {
    return new EnableChange(node, name, false);
  }

  /**
   * blockdev-backup of {@code node} into {@code target}: the job is created (its filter on the
   * node, its bitmap frozen) at prepare and started at commit; an abort cancels it unstarted.
   */
  public static Action backup(JobManager jobs, BlockNode node, BlockDevice target, BackupOptions options) {
    return new Backup(jobs, node, Objects.requireNonNull(target, "target"), options);
  }

  /**
   * drive-backup of {@code node} into a new image at {@code target} (mode=absolute-paths, no
   * backing file): the image is created at prepare (a file already there is refused) and removed
   * on abort; the job owns it and closes it once it has concluded.
   */
  public static Action driveBackup(JobManager jobs, BlockNode node, Path target, ImageFormat format,
      BackupOptions options) {
    return new DriveBackup(jobs, node, target, format, options);
  }

  private abstract static class BitmapAction extends Action {
    final BlockNode node;
    final String name;

    BitmapAction(BlockNode node, String name) {
      this.node = Objects.requireNonNull(node, "node");
      this.name = name;
    }

    @Override
    List<BlockNode> nodes() {
      return List.of(node);
    }
  }

  /** An action that changes a bitmap's bits: a copy of them is kept until commit. */
  private abstract static class BitsChange extends BitmapAction {
    private BlockDirtyBitmap bitmap;
    private DirtyBitmap saved;

    BitsChange(BlockNode node, String name) {
      super(node, name);
    }

    abstract void change();

    @Override
    void prepare() {
      DirtyBitmaps r = node.bitmaps();
      synchronized (r) {
        bitmap = r.lookup(name);
        saved = bitmap.copyOfBits();
      }
      change();
    }

    @Override
    void commit() {
      saved = null;
    }

    @Override
    void abort() {
      // the node is drained for the whole transaction: no write marks the bits meanwhile
      synchronized (node.bitmaps()) {
        bitmap.bits().clear();
        bitmap.bits().mergeDirtyAreas(saved);
      }
    }
  }

  private static final class EnableChange extends BitmapAction {
    private final boolean enable;
    private boolean was;

    EnableChange(BlockNode node, String name, boolean enable) {
      super(node, name);
      this.enable = enable;
    }

    @Override
    void prepare() {
      DirtyBitmaps r = node.bitmaps();
      synchronized (r) {
        was = r.lookup(name).isEnabled();
        r.setEnabled(name, enable);
      }
    }

    @Override
    void abort() {
      node.bitmaps().setEnabled(name, was);
    }
  }

  /** drive-backup: a {@link Backup} into an image the action creates and the job closes. */
  private static final class DriveBackup extends Backup {
    private final Path path;
    private final ImageFormat format;

    DriveBackup(JobManager jobs, BlockNode node, Path path, ImageFormat format, BackupOptions options) {
      super(jobs, node, null, options);
      this.path = Objects.requireNonNull(path, "target");
      this.format = Objects.requireNonNull(format, "format");
    }

    @Override
    void prepare() {
      if (Files.exists(path, LinkOption.NOFOLLOW_LINKS)) {
        throw new JobException("Could not create '" + path + "': File exists");
      }
      try {
        target = format == ImageFormat.QCOW2
            ? Qcow2Image.create(path, Qcow2CreateOptions.of(node.size()))
            : RawImage.create(path, node.size());
      } catch (BlockIOException e) {
        throw new JobException("Could not create '" + path + "': " + e.getMessage());
      }
      try {
        super.prepare();
      } catch (RuntimeException e) {
        removeImage(e);
        throw e;
      }
    }

    @Override
    void commit() {
      job.ownTarget(); // closed by the job's clean-up, before it concludes
      super.commit();
    }

    @Override
    void abort() {
      super.abort();
      removeImage(null);
    }

    private void removeImage(RuntimeException failure) {
      try {
        target.close();
        Files.deleteIfExists(path);
      } catch (IOException e) {
        if (failure != null) {
          failure.addSuppressed(e);
        }
      }
    }
  }

  private static class Backup extends Action {
    private final JobManager jobs;
    final BlockNode node;
    private final BackupOptions options;
    /** Given (blockdev-backup), or made at prepare (drive-backup). */
    BlockDevice target;
    BackupJob job;

    Backup(JobManager jobs, BlockNode node, BlockDevice target, BackupOptions options) {
      this.jobs = Objects.requireNonNull(jobs, "jobs");
      this.node = Objects.requireNonNull(node, "node");
      this.target = target;
      this.options = Objects.requireNonNull(options, "options");
    }

    @Override
    List<BlockNode> nodes() {
      return List.of(node);
    }

    @Override
    void prepare() {
      job = BackupJob.create(jobs, node, target, options);
    }

    @Override
    void commit() {
      job.start();
    }

    @Override
    void abort() {
      // a job cancelled before it started aborts at once, on this thread: filter removed,
      // bitmap given back, job gone from the manager
      job.cancel();
    }
  }
}
