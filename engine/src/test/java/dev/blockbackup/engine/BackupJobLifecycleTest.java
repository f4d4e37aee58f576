package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;
import static org.assertj.core.api.Assertions.fail;

import dev.blockbackup.engine.JobEvent.BlockJobCancelled;
import dev.blockbackup.engine.JobEvent.BlockJobCompleted;
import dev.blockbackup.engine.JobEvent.JobStatusChange;
import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.formats.ForwardingBlockDevice;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.WriteFlag;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.Parked;
import dev.blockbackup.testkit.QemuImg;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.LockSupport;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * A real {@link BackupJob} driven through QEMU's job states (reference §3; iotests 055, 056, 185,
 * 219): every verb in every state a backup can be held in, the exact event sequences, what pause
 * and cancel do to the copy, and the arguments blockdev-backup refuses.
 */
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class BackupJobLifecycleTest {

  static final long SIZE = 4L << 20;
  static final int CLUSTER = BackupJob.MIN_CLUSTER_SIZE;
  static final Duration TIMEOUT = EventRecorder.TIMEOUT;
  /** Slow enough that a job is still copying whenever a test looks: one cluster a second. */
  static final long SLOW = 64 * 1024;

  /** The statuses a backup can be held in (it never is READY/STANDBY; WAITING is passed through). */
  private static final JobStatus[] HOLDABLE = {
    JobStatus.created, JobStatus.running, JobStatus.paused, JobStatus.pending, JobStatus.aborting,
    JobStatus.concluded,
  };

  @TempDir Path dir;

  private JobManager manager;
  private EventRecorder recorder;
  private final List<AutoCloseable> cleanups = new ArrayList<>();
  private int images;
  /** The source of the job {@link #holdIn} made last. */
  private Source held;
  /** The thread the job body of the last {@link #startOnOwnThread} runs on. */
  private Thread jobThread;

  @BeforeEach
  void setUp() {
    manager = new JobManager();
    recorder = new EventRecorder();
    manager.addListener(recorder);
  }

  @AfterEach
  void tearDown() throws Exception {
    for (int i = cleanups.size() - 1; i >= 0; i--) {
      cleanups.get(i).close();
    }
  }

  // ---------------------------------------------------------------- fixtures

  /** A node over a raw source full of seeded random bytes, and what it held at the start. */
  private record Source(BlockNode node, byte[] original) {}

  private Source source(String name) throws Exception {
    RawImage img = RawImage.create(dir.resolve("src" + images++ + ".raw"), SIZE);
    byte[] data = new byte[(int) SIZE];
    new SplittableRandom(SIZE + images).nextBytes(data);
    Arrays.fill(data, (int) SIZE / 2, (int) SIZE / 2 + 3 * CLUSTER, (byte) 0); // some zero clusters
    img.write(0, ByteBuffer.wrap(data));
    BlockNode node = BlockNode.of(name, img);
    cleanups.add(node::close);
    return new Source(node, data);
  }

  private RawImage rawTarget(long size) throws Exception {
    RawImage t = RawImage.create(dir.resolve("tgt" + images++ + ".raw"), size);
    cleanups.add(t::close);
    return t;
  }

  /** Cancels the job if it still runs and waits for its end, before its images are closed. */
  private BackupJob track(BackupJob job) {
    cleanups.add(() -> {
      while (job.isPaused() && !job.isUserPaused() && job.status() != JobStatus.created
          && job.status() != JobStatus.concluded && job.status() != JobStatus.null_) {
        job.pauses().resume();
      }
      try {
        job.cancel();
      } catch (JobException ignored) {
        // past the point where cancel applies
      }
      job.awaitStatus(TIMEOUT, JobStatus.concluded, JobStatus.null_);
    });
    return job;
  }

  private BackupJob backup(Source src, BlockDevice target, BackupOptions options) {
    BackupOptions o = options.jobId() == null ? options.withJobId("job0") : options;
    return track(BackupJob.create(manager, src.node(), target, o));
  }

  private static void awaitStatus(Job job, JobStatus status) throws InterruptedException {
    if (!job.awaitStatus(TIMEOUT, status)) {
      fail("job did not reach " + status.qapiName() + " within " + TIMEOUT + "; it is "
          + job.status().qapiName());
    }
  }

  /** Starts {@code job} on a thread the test keeps, so it can see where the body waits. */
  private void startOnOwnThread(Job job) {
    job.start(body -> {
      jobThread = new Thread(body, "job-" + job.id());
      jobThread.start();
    });
  }

  private static void awaitProgress(Job job) throws InterruptedException {
    long deadline = System.nanoTime() + TIMEOUT.toNanos();
    while (job.currentProgress() == 0) {
      if (System.nanoTime() > deadline) {
        fail("no progress within " + TIMEOUT);
      }
      Thread.sleep(5);
    }
  }

  /**
   * Waits until every live pool thread called {@code name} is parked waiting for a task. (A pool of
   * an earlier test's job0 may still be shutting down: its threads end rather than park.)
   */
  private static void awaitIdle(String name) {
    long deadline = System.nanoTime() + TIMEOUT.toNanos();
    while (!Thread.getAllStackTraces().keySet().stream()
        .filter(t -> t.getName().equals(name))
        .allMatch(t -> !t.isAlive() || Parked.isParkedIn(t, "ThreadPoolExecutor", "getTask"))) {
      if (System.nanoTime() > deadline) {
        fail("threads '" + name + "' still busy after " + TIMEOUT);
      }
      LockSupport.parkNanos(1_000_000);
    }
  }

  private static byte[] readAll(BlockDevice d) throws BlockIOException {
    ByteBuffer b = ByteBuffer.allocate((int) d.size());
    d.read(0, b);
    return b.array();
  }

  private static byte[] read(BlockDevice d, long off, int len) throws BlockIOException {
    ByteBuffer b = ByteBuffer.allocate(len);
    d.read(off, b);
    return b.array();
  }

  /** Events as strings: a status for JOB_STATUS_CHANGE, the event name otherwise. */
  private List<String> eventNames() {
    return recorder.events().stream()
        .map(e -> e instanceof JobStatusChange c ? c.status().qapiName() : e.name())
        .toList();
  }

  /**
   * A target whose writes wait while its gate is closed: a copy-before-write into it, and so the
   * guest write that caused it, stays in flight as long as the test wants.
   */
  static final class GatedTarget extends ForwardingBlockDevice {
    final CountDownLatch entered = new CountDownLatch(1);
    final CountDownLatch gate = new CountDownLatch(1);

    GatedTarget(BlockDevice target) {
      super(target);
    }

    @Override
    public void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
      hold();
      super.write(offset, src, flags);
    }

    @Override
    public void writeZeroes(long offset, long length, WriteFlag... flags) throws BlockIOException {
      hold();
      super.writeZeroes(offset, length, flags);
    }

    private void hold() throws BlockIOException {
      entered.countDown();
      try {
        if (!gate.await(TIMEOUT.toSeconds(), TimeUnit.SECONDS)) {
          throw new BlockIOException(BlockError.ETIMEDOUT, "the test never opened the gate");
        }
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw new BlockIOException(BlockError.ECANCELED, "interrupted at the gate");
      }
    }
  }

  // ---------------------------------------------------------------- holding a job in a status

  /** A fresh backup "job0", driven into {@code status} and held there. */
  private BackupJob holdIn(JobStatus status) throws Exception {
    Source src = source("drive0");
    held = src;
    BackupOptions slow = BackupOptions.of(MirrorSyncMode.full).withSpeed(SLOW).withMaxChunk(CLUSTER);
    switch (status) {
      case created -> {
        return backup(src, rawTarget(SIZE), slow);
      }
      case running -> {
        BackupJob job = backup(src, rawTarget(SIZE), slow);
        job.start();
        awaitStatus(job, JobStatus.running);
        return job;
      }
      case paused -> {
        BackupJob job = backup(src, rawTarget(SIZE), slow);
        job.start();
        job.pauses().pause(); // a drain's pause, so that the user's pause verb stays open
        awaitStatus(job, JobStatus.paused);
        return job;
      }
      case pending -> {
        BackupJob job = backup(src, rawTarget(SIZE), BackupOptions.of(MirrorSyncMode.full).withAutoFinalize(false));
        job.start();
        awaitStatus(job, JobStatus.pending);
        return job;
      }
      case concluded -> {
        BackupJob job = backup(src, rawTarget(SIZE), BackupOptions.of(MirrorSyncMode.full).withAutoDismiss(false));
        job.start();
        awaitStatus(job, JobStatus.concluded);
        return job;
      }
      case aborting -> {
        // sync=none copies only before guest writes; hold one such copy at the target, cancel, and
        // the job's clean (which drains the node to take its filter out) waits for that write
        GatedTarget target = new GatedTarget(rawTarget(SIZE));
        BackupJob job = backup(src, target, BackupOptions.of(MirrorSyncMode.none));
        startOnOwnThread(job);
        Thread guest = new Thread(() -> {
          try {
            src.node().write(0, ByteBuffer.wrap(new byte[4096]));
          } catch (BlockIOException e) {
            throw new IllegalStateException(e);
          }
        }, "guest");
        guest.start();
        cleanups.add(() -> {
          target.gate.countDown();
          guest.join(TIMEOUT.toMillis());
        });
        assertThat(target.entered.await(TIMEOUT.toSeconds(), TimeUnit.SECONDS)).as("copy reached the target").isTrue();
        job.cancel();
        awaitStatus(job, JobStatus.aborting);
        return job;
      }
      default -> throw new IllegalArgumentException("a backup cannot be held in " + status);
    }
  }

  // ---------------------------------------------------------------- the verb table

  /** QEMU's verb table, as JobTransitionTableTest writes it out independently of JobTables. */
  private static boolean allowed(JobVerb verb, JobStatus status) {
    return JobTransitionTableTest.verbAllowed(verb, status);
  }

  static Stream<Arguments> verbAndStatus() {
    List<Arguments> out = new ArrayList<>();
    for (JobStatus status : HOLDABLE) {
      for (JobVerb verb : JobVerb.values()) {
        out.add(Arguments.of(verb, status));
      }
    }
    return out.stream();
  }

  @ParameterizedTest(name = "{0} in {1}")
  @MethodSource("verbAndStatus")
  void verbIsAcceptedOrRefusedAsQemusTableSays(JobVerb verb, JobStatus status) throws Exception {
    BackupJob job = holdIn(status);
    assertThat(job.status()).isEqualTo(status);

    if (allowed(verb, status)) {
      applyAndCheckAccepted(job, verb, status);
      return;
    }
    JobTransitionTableTest.assertRefused(job, verb, status);
  }

  private void applyAndCheckAccepted(BackupJob job, JobVerb verb, JobStatus status) throws Exception {
    switch (verb) {
      case cancel -> {
        job.cancel();
        awaitStatus(job, JobStatus.null_);
        recorder.awaitStatus(JobStatus.null_); // events go out after the status changes
        assertThat(job.error()).isEqualTo("Operation canceled");
        assertThat(job.node().device()).as("filter removed").isSameAs(job.node().unfiltered());
        if (status == JobStatus.created) {
          // never started: aborted on the spot, and no BLOCK_JOB_* event (job_cancel of a CREATED job)
          assertThat(eventNames()).containsExactly("created", "aborting", "concluded", "null");
        } else {
          recorder.await("BLOCK_JOB_CANCELLED", e -> e instanceof BlockJobCancelled);
          assertThat(eventNames()).doesNotContain("BLOCK_JOB_COMPLETED");
        }
      }
      case pause -> {
        job.pause();
        assertThat(job.isUserPaused()).isTrue();
        if (status == JobStatus.created) {
          job.start(); // a job paused before it starts stops at its first pause point
        }
        if (status != JobStatus.paused) { // (held paused by a drain, it stays so after resume)
          awaitStatus(job, JobStatus.paused);
          job.setSpeed(0);
          job.resume();
          awaitStatus(job, JobStatus.null_); // and, resumed, finishes the backup
          assertThat(job.error()).isNull();
        }
      }
      case resume -> {
        job.pause(); // only a user-paused job can be resumed
        job.resume();
        assertThat(job.isUserPaused()).isFalse();
        assertThat(job.status()).isEqualTo(status);
      }
      case set_speed -> {
        job.setSpeed(4096);
        assertThat(job.speed()).isEqualTo(4096);
      }
      case change -> {
        // the table lets the verb through; then backup, which has nothing to change, refuses
        assertThatThrownBy(job::change).isInstanceOf(JobException.class)
            .hasMessage("Job type does not support change");
        assertThat(job.status()).isEqualTo(status);
      }
      case complete -> fail("a backup never reaches a status that accepts complete: " + status);
      case finalize -> {
        job.finalizeJob();
        awaitStatus(job, JobStatus.null_);
        assertThat(job.error()).isNull();
        assertThat(job.node().device()).as("filter removed at finalize").isSameAs(job.node().unfiltered());
      }
      case dismiss -> {
        job.dismiss();
        assertThat(job.status()).isEqualTo(JobStatus.null_);
        assertThat(manager.get("job0")).isEmpty();
      }
    }
  }

  @Test
  void abortingWaitsForGuestWritesInFlightThenConcludesCancelled() throws Exception {
    BackupJob job = holdIn(JobStatus.aborting);
    GatedTarget target = (GatedTarget) job.target();
    // clean's drain waits for the guest write held at the target: the job thread is parked there,
    // so it cannot conclude before the gate opens
    Parked.awaitParkedIn(jobThread, "BlockNode", "drain", TIMEOUT);
    assertThat(job.status()).isEqualTo(JobStatus.aborting);
    assertThat(held.node().device()).as("filter still in place").isSameAs(job.filter());

    target.gate.countDown();
    assertThat(job.awaitConcluded(TIMEOUT)).isTrue();
    recorder.awaitStatus(JobStatus.null_);
    assertThat(eventNames()).containsExactly("created", "running", "aborting", "BLOCK_JOB_CANCELLED",
        "concluded", "null");
    assertThat(held.node().device()).isSameAs(held.node().unfiltered());
    // the guest write went through, after its cluster's old content reached the target
    assertThat(read(held.node(), 0, 4096)).isEqualTo(new byte[4096]);
    assertThat(read(target, 0, CLUSTER)).isEqualTo(Arrays.copyOf(held.original(), CLUSTER));
  }

  // ---------------------------------------------------------------- event sequences (iotest 219)

  @ParameterizedTest(name = "auto-finalize={0} auto-dismiss={1}")
  @CsvSource({"true, true", "false, true", "true, false", "false, false"})
  void successEmitsQemusEventSequence(boolean autoFinalize, boolean autoDismiss) throws Exception {
    Source src = source("drive0");
    RawImage tgt = rawTarget(SIZE);
    BackupJob job = backup(src, tgt,
        BackupOptions.of(MirrorSyncMode.full).withAutoFinalize(autoFinalize).withAutoDismiss(autoDismiss));
    job.start();

    List<String> expected = new ArrayList<>(List.of("created", "running", "waiting", "pending"));
    if (!autoFinalize) {
      awaitStatus(job, JobStatus.pending);
      recorder.await("BLOCK_JOB_PENDING", e -> e instanceof JobEvent.BlockJobPending);
      // iotest 283: the filter stays in the graph until job-finalize
      assertThat(src.node().device()).isSameAs(job.filter());
      assertThat(eventNames()).doesNotContain("BLOCK_JOB_COMPLETED");
      job.finalizeJob();
      expected.add("BLOCK_JOB_PENDING");
    }
    expected.addAll(List.of("BLOCK_JOB_COMPLETED", "concluded"));
    awaitStatus(job, autoDismiss ? JobStatus.null_ : JobStatus.concluded);
    if (!autoDismiss) {
      assertThat(manager.get("job0")).contains(job);
      job.dismiss();
    }
    expected.add("null");
    assertThat(job.status()).isEqualTo(JobStatus.null_);
    recorder.awaitStatus(JobStatus.null_); // events go out after the status changes
    assertThat(manager.get("job0")).isEmpty();

    assertThat(eventNames()).containsExactlyElementsOf(expected);
    assertThat(recorder.events()).filteredOn(e -> e instanceof BlockJobCompleted)
        .containsExactly(new BlockJobCompleted("backup", "job0", SIZE, SIZE, 0, null));
    assertThat(src.node().device()).isSameAs(src.node().unfiltered());
    assertThat(readAll(tgt)).isEqualTo(src.original());
  }

  // ---------------------------------------------------------------- pause

  @Test
  void pauseStopsTheBackgroundCopyButNotCopyBeforeWrite() throws Exception {
    Source src = source("drive0");
    Path tgtPath = dir.resolve("target.qcow2");
    Qcow2Image tgt = Qcow2Image.create(tgtPath, Qcow2CreateOptions.of(SIZE));
    cleanups.add(tgt::close);
    BackupJob job = backup(src, tgt, BackupOptions.of(MirrorSyncMode.full).withSpeed(4 * SLOW).withMaxChunk(CLUSTER));
    DirtyBitmap copyBitmap = job.filter().blockCopy().copyBitmap();
    startOnOwnThread(job);
    awaitProgress(job);
    job.pause();
    awaitStatus(job, JobStatus.paused);
    // The background copier stops for the pause: its body is parked at the pause point (which it
    // reaches only after its copies finished) and every worker is idle, so nothing but
    // copy-before-write can change the target until job-resume.
    Parked.awaitParkedIn(jobThread, "Job", "pausePoint", TIMEOUT);
    awaitIdle("backup-job0-worker");

    long progress = job.currentProgress();
    long dirty = copyBitmap.count();
    byte[] target = readAll(tgt);
    assertThat(dirty).as("still to copy when paused").isGreaterThan(CLUSTER);
    assertThat(job.currentProgress()).as("progress while paused").isEqualTo(progress);
    assertThat(copyBitmap.count()).as("copy bitmap while paused").isEqualTo(dirty);
    assertThat(readAll(tgt)).as("target while paused").isEqualTo(target);

    // iotest 056: a guest write to a cluster not yet copied still gets the old data copied first
    long last = SIZE - CLUSTER;
    assertThat(copyBitmap.isDirty(last)).isTrue();
    byte[] guest = new byte[1000];
    Arrays.fill(guest, (byte) 0x5c);
    src.node().write(last + 100, ByteBuffer.wrap(guest));
    assertThat(read(src.node(), last + 100, guest.length)).isEqualTo(guest);
    assertThat(read(tgt, last, CLUSTER))
        .isEqualTo(Arrays.copyOfRange(src.original(), (int) last, (int) SIZE));
    assertThat(copyBitmap.isDirty(last)).isFalse();
    assertThat(copyBitmap.count()).isEqualTo(dirty - CLUSTER);
    assertThat(job.currentProgress()).as("copy-before-write counts as progress").isEqualTo(progress + CLUSTER);
    assertThat(job.status()).isEqualTo(JobStatus.paused);

    job.setSpeed(0);
    job.resume();
    assertThat(job.awaitConcluded(TIMEOUT)).isTrue();
    assertThat(job.error()).isNull();
    recorder.awaitStatus(JobStatus.null_);
    assertThat(eventNames()).containsSubsequence("running", "paused", "running", "waiting", "pending",
        "BLOCK_JOB_COMPLETED", "concluded", "null");
    assertThat(readAll(tgt)).as("target holds the point in time").isEqualTo(src.original());
  }

  // ---------------------------------------------------------------- cancel

  @Test
  @Tag("interop")
  void cancelMidCopyLeavesTheSourceAloneAndTheTargetConsistent() throws Exception {
    Source src = source("drive0");
    Path tgtPath = dir.resolve("target.qcow2");
    Qcow2Image tgt = Qcow2Image.create(tgtPath, Qcow2CreateOptions.of(SIZE));
    cleanups.add(tgt::close); // closing twice is harmless
    BackupJob job = backup(src, tgt, BackupOptions.of(MirrorSyncMode.full).withSpeed(4 * SLOW).withMaxChunk(CLUSTER));
    job.start();
    awaitProgress(job);
    job.cancel();
    assertThat(job.awaitConcluded(TIMEOUT)).isTrue();
    recorder.awaitStatus(JobStatus.null_);

    assertThat(eventNames()).containsExactly("created", "running", "aborting", "BLOCK_JOB_CANCELLED",
        "concluded", "null");
    BlockJobCancelled c = (BlockJobCancelled) recorder.await("BLOCK_JOB_CANCELLED", e -> e instanceof BlockJobCancelled);
    assertThat(c.type()).isEqualTo("backup");
    assertThat(c.device()).isEqualTo("job0");
    assertThat(c.len()).isEqualTo(SIZE);
    assertThat(c.speed()).isEqualTo(4 * SLOW);
    assertThat(c.offset()).isEqualTo(job.currentProgress()).isPositive().isLessThan(SIZE);
    assertThat(c.offset() % CLUSTER).isZero();
    assertThat(job.error()).isEqualTo("Operation canceled");

    assertThat(src.node().device()).as("filter removed").isSameAs(src.node().unfiltered());
    assertThat(readAll(src.node())).as("source untouched").isEqualTo(src.original());
    // what was copied is the source's data; the rest was never written
    DirtyBitmap copied = job.filter().blockCopy().copiedBitmap();
    assertThat(copied.count()).isEqualTo(c.offset());
    byte[] target = readAll(tgt);
    for (long off = 0; off < SIZE; off += CLUSTER) {
      byte[] want = copied.isDirty(off)
          ? Arrays.copyOfRange(src.original(), (int) off, (int) (off + CLUSTER))
          : new byte[CLUSTER];
      assertThat(Arrays.copyOfRange(target, (int) off, (int) (off + CLUSTER))).as("target at %d", off).isEqualTo(want);
    }
    tgt.close();
    QemuImg.assertCheckClean(tgtPath);

    // the node is free again for the next backup
    RawImage again = rawTarget(SIZE);
    BackupJob next = backup(src, again, BackupOptions.of(MirrorSyncMode.full));
    next.start();
    assertThat(next.awaitConcluded(TIMEOUT)).isTrue();
    assertThat(next.error()).isNull();
    assertThat(readAll(again)).isEqualTo(src.original());
  }

  // ---------------------------------------------------------------- creation refusals

  @Test
  void targetOfAnotherSizeIsRefused() throws Exception {
    Source src = source("drive0");
    for (long size : new long[] {SIZE - CLUSTER, SIZE + CLUSTER}) {
      RawImage tgt = rawTarget(size);
      assertThatThrownBy(() -> BackupJob.create(manager, src.node(), tgt, BackupOptions.of(MirrorSyncMode.full)))
          .isInstanceOf(JobException.class)
          .hasMessageContaining("same size")
          .hasMessageContaining(String.valueOf(SIZE))
          .hasMessageContaining(String.valueOf(size));
    }
    assertNothingHappened(src);
  }

  @Test
  void sourceAsItsOwnTargetIsRefused() throws Exception {
    Source src = source("drive0");
    for (BlockDevice tgt : List.of(src.node(), src.node().base())) {
      assertThatThrownBy(() -> BackupJob.create(manager, src.node(), tgt, BackupOptions.of(MirrorSyncMode.full)))
          .isInstanceOf(JobException.class)
          .hasMessage("Source and target cannot be the same");
    }
    assertNothingHappened(src);
  }

  @Test
  void compressIntoARawTargetIsRefused() throws Exception {
    Source src = source("drive0");
    RawImage tgt = rawTarget(SIZE);
    assertThatThrownBy(() -> BackupJob.create(manager, src.node(), tgt,
            BackupOptions.of(MirrorSyncMode.full).withCompress(true)))
        .isInstanceOf(JobException.class)
        .hasMessage("Compression is not supported for this drive");
    assertNothingHappened(src);
  }

  @Test
  void secondBackupOfABusyNodeIsRefused() throws Exception {
    Source src = source("drive0");
    BackupJob first = backup(src, rawTarget(SIZE), BackupOptions.of(MirrorSyncMode.full).withSpeed(SLOW).withMaxChunk(CLUSTER));
    first.start();
    RawImage other = rawTarget(SIZE);
    assertThatThrownBy(() -> BackupJob.create(manager, src.node(), other,
            BackupOptions.of(MirrorSyncMode.full).withJobId("job1")))
        .isInstanceOf(JobException.class)
        .hasMessage("Node 'drive0' is busy: block device is in use by block job: backup");
    assertThat(manager.list()).containsExactly(first);
    assertThat(src.node().device()).isSameAs(first.filter());
    assertThat(first.status()).isEqualTo(JobStatus.running);
  }

  @Test
  void idOfAConcludedJobIsStillTaken() throws Exception {
    Source src = source("drive0");
    BackupJob first = backup(src, rawTarget(SIZE), BackupOptions.of(MirrorSyncMode.full).withAutoDismiss(false));
    first.start();
    awaitStatus(first, JobStatus.concluded);

    Source other = source("drive1");
    for (Source s : List.of(src, other)) {
      RawImage tgt = rawTarget(SIZE);
      assertThatThrownBy(() -> BackupJob.create(manager, s.node(), tgt,
              BackupOptions.of(MirrorSyncMode.full).withJobId("job0")))
          .isInstanceOf(JobException.class)
          .hasMessage("Job ID 'job0' already in use");
      assertThat(s.node().device()).isSameAs(s.node().unfiltered());
    }
    assertThat(manager.list()).containsExactly(first);

    // backup_clean released the node already: a concluded job does not keep it busy
    BackupJob third = backup(src, rawTarget(SIZE), BackupOptions.of(MirrorSyncMode.full).withJobId("job1"));
    third.start();
    assertThat(third.awaitConcluded(TIMEOUT)).isTrue();
    assertThat(third.error()).isNull();

    // once dismissed, the id is free too
    first.dismiss();
    BackupJob second = backup(src, rawTarget(SIZE), BackupOptions.of(MirrorSyncMode.full));
    second.start();
    assertThat(second.awaitConcluded(TIMEOUT)).isTrue();
    assertThat(second.error()).isNull();
  }

  @Test
  void speedArgumentIsTheJobsSpeedFromCreation() throws Exception {
    // iotest 055 test_set_speed: speed defaults to 0, and the speed argument shows in query and events
    Source idle = source("drive1");
    assertThat(backup(idle, rawTarget(SIZE), BackupOptions.of(MirrorSyncMode.full).withJobId("job1")).speed())
        .isZero();
    Source src = source("drive0");
    BackupJob job = backup(src, rawTarget(SIZE), BackupOptions.of(MirrorSyncMode.full).withSpeed(SLOW).withMaxChunk(CLUSTER));
    assertThat(job.speed()).isEqualTo(SLOW);
    job.start();
    awaitProgress(job);
    job.cancel();
    recorder.await("BLOCK_JOB_CANCELLED", e -> e instanceof BlockJobCancelled c && c.device().equals("job0"));
    assertThat(recorder.events()).filteredOn(e -> e instanceof BlockJobCancelled)
        .singleElement().extracting(e -> ((BlockJobCancelled) e).speed()).isEqualTo(SLOW);
  }

  @Test
  void negativeSpeedIsRefused() throws Exception {
    assertThatThrownBy(() -> BackupOptions.of(MirrorSyncMode.full).withSpeed(-1))
        .isInstanceOf(JobException.class)
        .hasMessage("Parameter 'speed' expects a non-negative value");

    BackupJob job = holdIn(JobStatus.running);
    assertThatThrownBy(() -> job.setSpeed(-1))
        .isInstanceOf(JobException.class)
        .hasMessage("Parameter 'speed' expects a non-negative value");
    assertThat(job.speed()).isEqualTo(SLOW);
  }

  /** After a refused create: no job, no filter, no events, the node free for a backup. */
  private void assertNothingHappened(Source src) throws Exception {
    assertThat(manager.list()).isEmpty();
    assertThat(recorder.events()).isEmpty();
    assertThat(src.node().device()).isSameAs(src.node().unfiltered());
    BackupJob job = backup(src, rawTarget(SIZE), BackupOptions.of(MirrorSyncMode.full));
    job.start();
    assertThat(job.awaitConcluded(TIMEOUT)).isTrue();
    assertThat(job.error()).isNull();
  }
}
