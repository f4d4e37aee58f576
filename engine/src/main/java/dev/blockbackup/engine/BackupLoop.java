package dev.blockbackup.engine;

import dev.blockbackup.engine.JobEvent.ErrorAction;
import dev.blockbackup.engine.JobEvent.IoOperation;
import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Semaphore;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;

/**
 * The body of a {@link BackupJob} (QEMU's backup_run and backup_loop): sync=top's scan of what the
 * source's top layer allocates, then the background copier, which claims dirty runs in order and
 * copies them on worker threads under the job's rate limit; sync=none only waits for a cancel.
 * Background errors follow on-source-error (reads) and on-target-error (writes). It runs on the
 * job's thread, and pauses, sleeps and reports errors through the job.
 */
final class BackupLoop {

  /** Upper bound on background worker threads: blocking file I/O on more only contends. */
  private static final int MAX_THREADS = Math.max(2, 2 * Runtime.getRuntime().availableProcessors());

  private final BackupJob job;
  private final BlockDevice source;
  private final BlockDevice target;
  private final BackupOptions options;
  private final BlockCopy bcs;
  private final CopyBeforeWrite cbw;

  private final RateLimit rateLimit = new RateLimit();
  /** A new speed for the body to apply (-1 for none): set-speed comes from other threads. */
  private final AtomicLong newSpeed = new AtomicLong(-1);
  private final int threads;
  private final Semaphore slots;
  private final ExecutorService workers;
  /** The first failure of a background copy since the body last looked. */
  private final AtomicReference<BlockCopyException> backgroundError = new AtomicReference<>();

  BackupLoop(BackupJob job, String id, BlockDevice source, BlockDevice target, BackupOptions options, BlockCopy bcs,
      CopyBeforeWrite cbw) {
    this.job = job;
    this.source = source;
    this.target = target;
    this.options = options;
    this.bcs = bcs;
    this.cbw = cbw;
    this.threads = Math.min(options.maxWorkers(), MAX_THREADS);
    this.slots = new Semaphore(threads);
    this.workers = Executors.newFixedThreadPool(threads, r -> {
      Thread t = new Thread(r, "backup-" + id + "-worker");
      t.setDaemon(true);
      return t;
    });
    rateLimit.setSpeed(options.speed());
  }

  /** block-job-set-speed: the body applies the new speed when it next looks. */
  void setSpeed(long bytesPerSecond) {
    newSpeed.set(bytesPerSecond);
    job.wake();
  }

  /** The job's body, on the job's thread: the copy for the job's sync mode, then a flush of the target. */
  void run() throws Exception {
    applySpeed();
    bcs.updateRemaining();
    switch (options.sync()) {
      case none -> waitForCancel();
      case top -> {
        bcs.setSkipUnallocated(true);
        try {
          dropUnallocated();
        } finally {
          bcs.setSkipUnallocated(false);
        }
        bcs.updateRemaining();
        backgroundCopy();
      }
      default -> backgroundCopy();
    }
    checkSnapshot();
    target.flush();
  }

  /**
   * sync=none: nothing to do in the background; copy-before-write goes on until cancel. The body
   * waits for what can change that: a cancel or a pause (each wakes the job) or a broken snapshot
   * (copy-before-write wakes the job after it set the error).
   */
  private void waitForCancel() throws BlockIOException {
    while (true) {
      checkSnapshot();
      job.pausePoint();
      job.sleepUntil(() -> cbw.snapshotError() != null, Long.MAX_VALUE);
    }
  }

  /**
   * sync=top's scan (backup_run's skip-unallocated pass): clears the clusters that the source's
   * top layer does not allocate at all; a cluster with any allocated byte is kept.
   */
  private void dropUnallocated() throws BlockIOException {
    long len = bcs.size();
    long pos = 0;
    // Neighbouring unallocated extents (a backing file's data beside its holes) are one run: a
    // cluster they share between them is unallocated too.
    long runStart = -1;
    while (pos < len) {
      job.pausePoint();
      checkSnapshot();
      // The whole rest at once: the driver answers as many extents as it will, and an empty
      // multi-TiB top layer is one answer.
      List<Extent> extents = source.blockStatus(pos, len - pos);
      for (Extent e : extents) {
        if (!e.allocated() && runStart < 0) {
          runStart = e.offset();
        } else if (e.allocated() && runStart >= 0) {
          resetWholeClusters(runStart, e.offset());
          runStart = -1;
        }
        pos = e.end();
      }
      if (extents.isEmpty()) {
        break;
      }
    }
    if (runStart >= 0) {
      resetWholeClusters(runStart, pos);
    }
  }

  /** Clears the clusters wholly inside {@code [from, to)}; the last one counts as whole at the end. */
  private void resetWholeClusters(long from, long to) {
    long len = bcs.size();
    int c = bcs.clusterSize();
    long s = (from + c - 1) / c * c;
    long end = to == len ? len : to / c * c;
    if (end > s) {
      bcs.resetRange(s, end - s);
    }
  }

  private void applySpeed() {
    long s = newSpeed.getAndSet(-1);
    if (s >= 0) {
      rateLimit.setSpeed(s);
    }
  }

  /**
   * The background copier (backup_loop with block-copy's task loop): walks the copy bitmap in
   * offset order, so a failed job leaves everything from the failed cluster on still to copy, as
   * QEMU's does. Per dirty run, the source's block status picks how: a run that reads as zero goes
   * to the target as write-zeroes, a whole dirty run per request, on this thread (zeroing costs the
   * target its metadata, so an empty disk costs a few requests rather than a copy per chunk); data
   * is claimed up to the end of its extent, at most a chunk, and copied on a worker. Either takes
   * one of the job's worker slots, so with one worker nothing goes on past a copy that fails. Under
   * a speed limit zero runs are claimed chunk by chunk too: there, as in QEMU, zeroed bytes count
   * against the limit.
   */
  private void backgroundCopy() throws BlockIOException {
    long len = bcs.size();
    int c = bcs.clusterSize();
    StatusCursor status = new StatusCursor(source);
    long pos = 0;
    try {
      while (true) {
        checkSnapshot();
        if (job.isPaused()) {
          // a pause stops the background copy: let what runs finish, then stop (copy-before-write
          // goes on meanwhile)
          awaitWorkers();
          job.pausePoint();
          pos = 0;
          continue;
        }
        job.pausePoint();
        BlockCopyException err = backgroundError.get();
        if (err != null) {
          awaitWorkers();
          backgroundError.set(null);
          handleError(err);
          pos = 0;
          continue;
        }
        applySpeed();
        long delay = rateLimit.delayNanos(System.nanoTime());
        if (delay > 0) {
          job.sleep(delay);
          continue;
        }
        if (!slots.tryAcquire()) {
          // every worker is busy: wait until one is done (each wakes the job when it ends) or
          // something else needs the body (a pause, a cancel, a failed copy)
          job.sleepUntil(() -> slots.availablePermits() > 0 || backgroundError.get() != null, Long.MAX_VALUE);
          if (Thread.interrupted()) {
            throw new InterruptedException(); // a sleep that ends at once would spin
          }
          continue;
        }
        long d = bcs.nextDirty(pos);
        if (d < 0) {
          slots.release();
          if (pos > 0) {
            pos = 0; // failed copies may have left dirty clusters behind us
            continue;
          }
          awaitWorkers();
          bcs.awaitIdle(0, len); // copy-before-write copies too: one may fail and leave work
          if (backgroundError.get() == null && bcs.remainingBytes() == 0) {
            return;
          }
          continue;
        }
        Extent e = status.at(d);
        long limit = len;
        if (e != null) {
          long whole = e.end() == len ? len - d : (e.end() - d) / c * c;
          limit = d + Math.max(c, whole);
          if (e.zero() && !e.data() && whole > 0 && !rateLimit.isLimited()) {
            // at most one zero task per turn, so a pause or cancel is seen between them
            limit = Math.min(limit, d + BlockCopy.MAX_ZERO_TASK);
            long stop = -1;
            try {
              stop = bcs.copyZeroes(d, limit);
            } catch (BlockCopyException failed) {
              backgroundError.compareAndSet(null, failed); // handled at the top, like a worker's
            } finally {
              slots.release();
            }
            bcs.updateRemaining();
            if (stop >= 0 && stop < limit) {
              bcs.awaitIdle(stop, limit); // the tail of a copy still in flight: wait for that copy
            }
            pos = Math.max(stop, d);
            continue;
          }
        }
        BlockCopy.Task t = bcs.claim(d, limit);
        if (t == null) {
          // what is dirty here is the tail of a copy still in flight: wait for that copy
          slots.release();
          bcs.awaitIdle(d, limit);
          continue;
        }
        pos = t.end();
        rateLimit.account(t.length);
        workers.execute(() -> {
          try {
            bcs.run(t);
          } catch (BlockCopyException ex) {
            backgroundError.compareAndSet(null, ex);
          } finally {
            slots.release();
            job.wake(); // after the release: a body waiting for a free worker must see it
          }
        });
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new BlockIOException(dev.blockbackup.formats.BlockError.ECANCELED, "interrupted");
    } finally {
      awaitWorkers();
    }
  }

  private void awaitWorkers() {
    slots.acquireUninterruptibly(threads);
    slots.release(threads);
  }

  /**
   * block_job_error_action for a failed background copy: BLOCK_JOB_ERROR always; then fail
   * (report), retry (ignore), or pause until job-resume and retry (stop).
   */
  private void handleError(BlockCopyException err) throws BlockIOException {
    BlockdevOnError policy = err.isRead() ? options.onSourceError() : options.onTargetError();
    ErrorAction action = policy.actionFor(err.error());
    job.blockJobError(err.isRead() ? IoOperation.read : IoOperation.write, action);
    switch (action) {
      case report -> throw new BlockIOException(err.error(), err.error().strerror(), err);
      case stop -> job.pausePoint(); // blockJobError user-paused us; job-resume retries
      case ignore -> { }
    }
  }

  /** Fails the job once copy-before-write has broken the snapshot (on-cbw-error=break-snapshot). */
  private void checkSnapshot() throws BlockIOException {
    BlockIOException broken = cbw.snapshotError();
    if (broken != null) {
      throw new BlockIOException(broken.error(), broken.error().strerror(), broken);
    }
  }

  /** The workers stop once the job is over. */
  void shutDown() {
    workers.shutdown();
  }
}
