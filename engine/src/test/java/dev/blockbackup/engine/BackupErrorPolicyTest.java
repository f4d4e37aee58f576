package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.engine.ErrorInjectingDevice.Operation;
import dev.blockbackup.engine.ErrorInjectingDevice.Rule;
import dev.blockbackup.engine.JobEvent.BlockJobCancelled;
import dev.blockbackup.engine.JobEvent.BlockJobCompleted;
import dev.blockbackup.engine.JobEvent.BlockJobError;
import dev.blockbackup.engine.JobEvent.ErrorAction;
import dev.blockbackup.engine.JobEvent.IoOperation;
import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.QemuImg;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * Acceptance item 4 of the backup issue: on-source-error / on-target-error (QAPI BlockdevOnError)
 * with an {@link ErrorInjectingDevice} on the target or under the source node, and on-cbw-error /
 * cbw-timeout for copy-before-write, whose errors those policies do not govern.
 *
 * <p>The source is 4 MiB of random data, the target a qcow2 with 64 KiB clusters, so the job
 * cluster is 64 KiB and the background copier works in 1 MiB chunks; faults sit at {@link #FAULT},
 * inside the third chunk. Every target that a job has left behind must pass qemu-img check.
 */
@Tag("interop")
@Timeout(60)
class BackupErrorPolicyTest {

  static final long SIZE = 4L << 20;
  /** A job cluster in the middle of the disk where the faults are injected. */
  static final long FAULT = (2L << 20) + (64 << 10);
  static final long FAULT_LEN = 64 << 10;
  static final Duration WAIT = Duration.ofSeconds(30);

  @TempDir Path dir;

  private RawImage src;
  /** The filter under the node (source faults); the node is made over it. */
  private ErrorInjectingDevice srcFaults;
  private Qcow2Image tgt;
  /** The filter the job writes through (target faults). */
  private ErrorInjectingDevice tgtFaults;
  private BlockNode node;
  private final JobManager jobs = new JobManager();
  private final EventRecorder events = new EventRecorder();
  /** The source's content when the job was created: what the target must end up holding. */
  private byte[] pointInTime;
  /** What the source must hold: the point in time plus every guest write that succeeded. */
  private byte[] model;
  private final SplittableRandom random = new SplittableRandom(4);

  private BackupJob create(BackupOptions options) throws Exception {
    src = RawImage.create(dir.resolve("src.raw"), SIZE);
    pointInTime = new byte[(int) SIZE];
    new SplittableRandom(1).nextBytes(pointInTime);
    src.write(0, ByteBuffer.wrap(pointInTime));
    model = pointInTime.clone();
    srcFaults = new ErrorInjectingDevice(src);
    node = BlockNode.of("drive0", srcFaults);
    tgt = Qcow2Image.create(dir.resolve("tgt.qcow2"), Qcow2CreateOptions.of(SIZE));
    tgtFaults = new ErrorInjectingDevice(tgt);
    jobs.addListener(events);
    return BackupJob.create(jobs, node, tgtFaults, options);
  }

  @AfterEach
  void closeAll() throws Exception {
    if (srcFaults != null) {
      srcFaults.clear(); // releases anything a delay rule still holds
      tgtFaults.clear();
    }
    if (tgt != null) {
      tgt.close();
      node.close();
    }
  }

  /** A guest write of random data through the node; the model follows it only if it succeeds. */
  private void guestWrite(long offset, int length) throws BlockIOException {
    byte[] data = new byte[length];
    random.nextBytes(data);
    node.write(offset, ByteBuffer.wrap(data));
    System.arraycopy(data, 0, model, (int) offset, length);
  }

  private static byte[] readAll(BlockDevice d) throws Exception {
    ByteBuffer b = ByteBuffer.allocate((int) d.size());
    d.read(0, b);
    return b.array();
  }

  /** {@code d}'s content with the fault range left as zeros, without reading that range. */
  private static byte[] readAroundFault(BlockDevice d) throws Exception {
    ByteBuffer b = ByteBuffer.allocate((int) d.size());
    d.read(0, b.limit((int) FAULT));
    b.limit((int) d.size()).position((int) (FAULT + FAULT_LEN));
    d.read(FAULT + FAULT_LEN, b);
    return b.array();
  }

  private static byte[] aroundFault(byte[] content) {
    byte[] c = content.clone();
    Arrays.fill(c, (int) FAULT, (int) (FAULT + FAULT_LEN), (byte) 0);
    return c;
  }

  private List<BlockJobError> errorEvents() {
    return events.events().stream().filter(BlockJobError.class::isInstance).map(BlockJobError.class::cast).toList();
  }

  private BlockJobCompleted completedEvent() throws InterruptedException {
    return (BlockJobCompleted) events.await("BLOCK_JOB_COMPLETED", BlockJobCompleted.class::isInstance);
  }

  /** After the job has concluded: the filter is gone and the target is a sound qcow2. */
  private void assertLeftCleanly() throws Exception {
    assertThat(node.device()).as("the copy-before-write filter left the node").isSameAs(node.unfiltered());
    tgt.close();
    QemuImg.assertCheckClean(dir.resolve("tgt.qcow2"));
  }

  private void assertSucceededWithThePointInTime(BackupJob job) throws Exception {
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    assertThat(job.error()).isNull();
    assertThat(completedEvent().error()).isNull();
    assertThat(readAll(tgt)).as("target holds the point in time").isEqualTo(pointInTime);
    assertThat(readAll(src)).as("source holds every guest write").isEqualTo(model);
    assertLeftCleanly();
  }

  /** Faults that fire on the background copier: the target write or the source read of FAULT. */
  enum Side {
    target(IoOperation.write),
    source(IoOperation.read);

    final IoOperation operation;

    Side(IoOperation operation) {
      this.operation = operation;
    }
  }

  private void injectBackground(Side side, BlockError error, int times) {
    Rule r = side == Side.target ? Rule.fail(Operation.write, error) : Rule.fail(Operation.read, error);
    r = r.at(FAULT, FAULT_LEN);
    if (times > 0) {
      r = r.times(times);
    }
    (side == Side.target ? tgtFaults : srcFaults).inject(r);
  }

  private static BackupOptions withPolicy(Side side, BlockdevOnError policy) {
    BackupOptions o = BackupOptions.of(MirrorSyncMode.full);
    return side == Side.target ? o.withOnTargetError(policy) : o.withOnSourceError(policy);
  }

  /** Creates the job (the point in time), arms the fault, then starts the background copy. */
  private BackupJob startWithFault(BackupOptions options, Side side, BlockError error, int times) throws Exception {
    BackupJob job = create(options);
    injectBackground(side, error, times);
    job.start();
    return job;
  }

  // ---------------------------------------------------------------- report

  @ParameterizedTest
  @EnumSource(Side.class)
  void reportFailsTheJobWithEio(Side side) throws Exception {
    assertReportFailsTheJob(side, BlockError.EIO, BlockdevOnError.report);
  }

  @ParameterizedTest
  @EnumSource(Side.class)
  void reportFailsTheJobWithEnospcToo(Side side) throws Exception {
    assertReportFailsTheJob(side, BlockError.ENOSPC, BlockdevOnError.report);
  }

  @ParameterizedTest
  @EnumSource(Side.class)
  void enospcPolicyReportsEio(Side side) throws Exception {
    assertReportFailsTheJob(side, BlockError.EIO, BlockdevOnError.enospc);
  }

  /** BLOCK_JOB_ERROR {action: report}, then the job fails with the error's strerror. */
  private void assertReportFailsTheJob(Side side, BlockError error, BlockdevOnError policy) throws Exception {
    BackupJob job = startWithFault(withPolicy(side, policy), side, error, 0);
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    // QEMU's job_update_rc: the job's error is strerror(-ret), e.g. "Input/output error".
    assertThat(job.error()).isEqualTo(error.strerror());
    BlockJobCompleted completed = completedEvent();
    assertThat(completed.error()).isEqualTo(error.strerror());
    assertThat(completed.offset()).isLessThan(completed.len());
    // block_job_error_action emits BLOCK_JOB_ERROR for report too, before the job completes.
    List<BlockJobError> errors = errorEvents();
    assertThat(errors).containsExactly(new BlockJobError("drive0", side.operation, ErrorAction.report));
    assertThat(events.events().indexOf(errors.get(0))).isLessThan(events.events().indexOf(completed));
    assertThat((side == Side.target ? tgtFaults : srcFaults).injections()).isPositive();
    assertThat(readAll(src)).as("source untouched").isEqualTo(pointInTime);
    assertLeftCleanly();
  }

  // ---------------------------------------------------------------- stop / enospc

  @ParameterizedTest
  @EnumSource(Side.class)
  void stopPausesOnEioAndResumeAfterTheFixCompletesThePointInTime(Side side) throws Exception {
    assertStopsThenCompletes(side, BlockError.EIO, BlockdevOnError.stop);
  }

  @ParameterizedTest
  @EnumSource(Side.class)
  void stopPausesOnEnospcToo(Side side) throws Exception {
    assertStopsThenCompletes(side, BlockError.ENOSPC, BlockdevOnError.stop);
  }

  @ParameterizedTest
  @EnumSource(Side.class)
  void enospcPolicyStopsOnEnospc(Side side) throws Exception {
    assertStopsThenCompletes(side, BlockError.ENOSPC, BlockdevOnError.enospc);
  }

  @Test
  void autoPolicyStopsOnEnospcAsEnospcDoes() throws Exception {
    assertStopsThenCompletes(Side.target, BlockError.ENOSPC, BlockdevOnError.auto);
  }

  /**
   * stop: BLOCK_JOB_ERROR {action: stop} and the job pauses as if job-pause had been called; guest
   * writes (and their copy-before-write) go on meanwhile; job-resume after the fault is fixed
   * retries and the target holds the point in time.
   */
  private void assertStopsThenCompletes(Side side, BlockError error, BlockdevOnError policy) throws Exception {
    BackupJob job = startWithFault(withPolicy(side, policy), side, error, 0);
    events.await("BLOCK_JOB_ERROR", BlockJobError.class::isInstance);
    events.awaitStatus(JobStatus.paused);
    assertThat(errorEvents()).containsExactly(new BlockJobError("drive0", side.operation, ErrorAction.stop));
    assertThat(job.status()).isEqualTo(JobStatus.paused);
    assertThat(job.isUserPaused()).isTrue();
    assertThat(job.error()).isNull();

    // Guest writes away from the fault, before and after it, each copied before it lands. The
    // failed chunk was given back whole, so the clusters next to the fault are still to be copied:
    // the writes there show copy-before-write working while the job is stopped.
    BlockCopy bcs = job.filter().blockCopy();
    assertThat(bcs.isCopied(FAULT - FAULT_LEN)).isFalse();
    assertThat(bcs.isCopied(FAULT + FAULT_LEN)).isFalse();
    guestWrite(100, 200_000);
    guestWrite(SIZE - 300_000, 250_000);
    guestWrite(FAULT + FAULT_LEN, 10_000);
    guestWrite(FAULT - 5000, 5000);
    assertThat(bcs.isCopied(FAULT - FAULT_LEN)).isTrue();
    assertThat(bcs.isCopied(FAULT + FAULT_LEN)).isTrue();
    assertThat(bcs.isCopied(FAULT)).isFalse();
    // Read around the fault: a source fault fails reads of it through the node and the snapshot.
    assertThat(readAroundFault(node)).isEqualTo(aroundFault(model));
    assertThat(readAroundFault(job.snapshotView())).as("the snapshot still shows the point in time")
        .isEqualTo(aroundFault(pointInTime));
    assertThat(job.status()).as("stays paused until job-resume").isEqualTo(JobStatus.paused);
    assertThat(job.awaitConcluded(Duration.ofMillis(200))).isFalse();
    assertThat(job.status()).isEqualTo(JobStatus.paused);

    (side == Side.target ? tgtFaults : srcFaults).clear();
    job.resume();
    assertSucceededWithThePointInTime(job);
    assertThat(errorEvents()).hasSize(1);
  }

  @Test
  void resumeWithoutTheFixStopsAgain() throws Exception {
    BackupJob job = startWithFault(withPolicy(Side.target, BlockdevOnError.stop), Side.target, BlockError.EIO, 0);
    events.awaitStatus(JobStatus.paused);
    job.resume();
    events.await("a second BLOCK_JOB_ERROR", e -> errorEvents().size() == 2);
    events.await("a second pause", e -> events.statuses().stream().filter(JobStatus.paused::equals).count() == 2);
    assertThat(errorEvents()).allMatch(e -> e.action() == ErrorAction.stop);
    assertThat(job.isUserPaused()).isTrue();
    tgtFaults.clear();
    job.resume();
    assertSucceededWithThePointInTime(job);
  }

  @Test
  void cancelWhileStoppedEndsCancelled() throws Exception {
    BackupJob job = startWithFault(withPolicy(Side.target, BlockdevOnError.stop), Side.target, BlockError.ENOSPC, 0);
    events.awaitStatus(JobStatus.paused);
    job.cancel();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    assertThat(job.error()).isEqualTo("Operation canceled");
    events.await("BLOCK_JOB_CANCELLED", BlockJobCancelled.class::isInstance);
    assertThat(readAll(src)).isEqualTo(pointInTime);
    assertLeftCleanly();
  }

  /**
   * A failed final target flush is no copy error: on-target-error=ignore does not retry it, and the
   * job fails with strerror like any other error (job_update_rc).
   */
  @Test
  void failedTargetFlushFailsTheJobWithStrerror() throws Exception {
    BackupJob job = create(BackupOptions.of(MirrorSyncMode.full).withOnTargetError(BlockdevOnError.ignore));
    tgtFaults.inject(Rule.fail(Operation.flush, BlockError.EIO));
    job.start();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    assertThat(job.error()).isEqualTo("Input/output error");
    assertThat(completedEvent().error()).isEqualTo("Input/output error");
    assertLeftCleanly();
  }

  // ---------------------------------------------------------------- ignore

  @ParameterizedTest
  @EnumSource(Side.class)
  void ignoreRetriesATransientFaultAndCompletes(Side side) throws Exception {
    BackupJob job = startWithFault(withPolicy(side, BlockdevOnError.ignore), side, BlockError.EIO, 3);
    guestWrite(0, 65536);
    assertSucceededWithThePointInTime(job);
    assertThat((side == Side.target ? tgtFaults : srcFaults).injections()).isEqualTo(3);
    // One event per failed copy pass: failures that land while the job handles another merge, as
    // several failed tasks of one QEMU block-copy call give one error.
    assertThat(errorEvents()).isNotEmpty().hasSizeLessThanOrEqualTo(3)
        .allMatch(e -> e.equals(new BlockJobError("drive0", side.operation, ErrorAction.ignore)));
  }

  @Test
  void ignoreRetriesAPersistentFaultUntilCancelled() throws Exception {
    BackupJob job = startWithFault(withPolicy(Side.target, BlockdevOnError.ignore), Side.target, BlockError.ENOSPC, 0);
    events.await("five BLOCK_JOB_ERROR", e -> errorEvents().size() >= 5);
    assertThat(errorEvents()).allMatch(e -> e.action() == ErrorAction.ignore && e.operation() == IoOperation.write);
    assertThat(job.status()).isEqualTo(JobStatus.running);
    assertThat(job.error()).isNull();
    job.cancel();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    assertThat(job.error()).isEqualTo("Operation canceled");
    events.await("BLOCK_JOB_CANCELLED", BlockJobCancelled.class::isInstance);
    assertThat(events.events()).noneMatch(BlockJobCompleted.class::isInstance);
    assertLeftCleanly();
  }

  // ---------------------------------------------------------------- copy-before-write errors

  private void injectCbwFault() {
    tgtFaults.inject(Rule.fail(Operation.write, BlockError.EIO).at(FAULT, FAULT_LEN));
  }

  /**
   * on-cbw-error=break-guest-write (the default): the guest's write fails with the copy's error and
   * leaves the source as it was; the job's own policies are not consulted (no BLOCK_JOB_ERROR, no
   * pause although on-target-error=stop) and the job carries on to a correct target.
   */
  @Test
  void breakGuestWriteFailsTheGuestWriteAndTheJobCarriesOn() throws Exception {
    BackupJob job = create(BackupOptions.of(MirrorSyncMode.full).withOnTargetError(BlockdevOnError.stop));
    tgtFaults.inject(Rule.fail(Operation.write, BlockError.EIO).at(FAULT, FAULT_LEN).times(1));
    // The filter is in place from create on; the guest write meets the fault before the copier can.
    assertThatThrownBy(() -> guestWrite(FAULT + 1000, 5000))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EIO));
    assertThat(readAll(src)).as("the failed guest write changed nothing").isEqualTo(pointInTime);
    job.start();
    guestWrite(FAULT + 1000, 5000); // the fault is spent: the same write now works
    assertSucceededWithThePointInTime(job);
    assertThat(errorEvents()).isEmpty();
  }

  @Test
  void breakGuestWriteOnARunningJobKeepsTheSnapshotReadable() throws Exception {
    BackupJob job = create(BackupOptions.of(MirrorSyncMode.none).withOnTargetError(BlockdevOnError.stop));
    injectCbwFault();
    job.start();
    events.awaitStatus(JobStatus.running);
    assertThatThrownBy(() -> guestWrite(FAULT, 4096))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EIO));
    guestWrite(0, 4096);
    assertThat(readAll(src)).isEqualTo(model);
    assertThat(readAll(job.snapshotView())).isEqualTo(pointInTime);
    assertThat(job.status()).isEqualTo(JobStatus.running);
    assertThat(job.error()).isNull();
    assertThat(errorEvents()).isEmpty();
    job.cancel();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    assertLeftCleanly();
  }

  /**
   * on-cbw-error=break-snapshot: the guest write that could not be copied goes through, and so do
   * all later ones; snapshot reads fail with EACCES and the job fails, without BLOCK_JOB_ERROR.
   */
  @Test
  void breakSnapshotKeepsGuestWritesWorkingAndFailsTheJob() throws Exception {
    BackupJob job = create(BackupOptions.of(MirrorSyncMode.none)
        .withOnTargetError(BlockdevOnError.stop).withOnCbwError(OnCbwError.break_snapshot));
    injectCbwFault();
    SnapshotView view = job.snapshotView();
    job.start();
    events.awaitStatus(JobStatus.running);
    job.pause(); // a paused job does not look at the snapshot yet: it stays, broken, to be read
    events.awaitStatus(JobStatus.paused);
    guestWrite(FAULT, 4096);
    guestWrite(FAULT + 8192, 4096);
    guestWrite(0, 4096);
    assertThat(readAll(src)).isEqualTo(model);
    assertThatThrownBy(() -> view.read(0, ByteBuffer.allocate(4096)))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EACCES));
    job.resume();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    assertThatThrownBy(() -> view.read(0, ByteBuffer.allocate(4096)))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.ESHUTDOWN));
    assertThat(job.error()).isEqualTo(BlockError.EIO.strerror());
    assertThat(completedEvent().error()).isEqualTo(BlockError.EIO.strerror());
    assertThat(errorEvents()).isEmpty();
    guestWrite(FAULT, 4096); // still working with the filter gone
    assertThat(readAll(src)).isEqualTo(model);
    assertLeftCleanly();
  }

  @Test
  void breakSnapshotFailsAFullBackup() throws Exception {
    BackupJob job = create(BackupOptions.of(MirrorSyncMode.full).withOnCbwError(OnCbwError.break_snapshot));
    injectCbwFault();
    guestWrite(FAULT, 65536);
    assertThatThrownBy(() -> job.snapshotView().read(FAULT, ByteBuffer.allocate(10)))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EACCES));
    job.start();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    assertThat(job.error()).isEqualTo(BlockError.EIO.strerror());
    assertThat(readAll(src)).isEqualTo(model);
    assertLeftCleanly();
  }

  // ---------------------------------------------------------------- cbw-timeout

  /** A target that stops answering in the fault range (QEMU's iotest throttles it instead). */
  private void injectStuckTarget() {
    tgtFaults.inject(Rule.delay(Operation.write, Duration.ofMinutes(5)).at(FAULT, FAULT_LEN));
  }

  /** The timed-out copy keeps running, as in QEMU: let it finish before the target is closed. */
  private void releaseStuckCopy(BackupJob job) {
    tgtFaults.clear();
    job.filter().blockCopy().awaitIdle(0, SIZE);
  }

  @Test
  void cbwTimeoutFailsTheGuestWriteWithEtimedout() throws Exception {
    BackupJob job = create(BackupOptions.of(MirrorSyncMode.none).withCbwTimeout(1));
    injectStuckTarget();
    job.start();
    assertThatThrownBy(() -> guestWrite(FAULT, 4096))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.ETIMEDOUT));
    assertThat(readAll(src)).isEqualTo(pointInTime);
    releaseStuckCopy(job);
    assertThat(readAll(job.snapshotView())).isEqualTo(pointInTime);
    assertThat(job.status()).isEqualTo(JobStatus.running);
    assertThat(job.error()).isNull();
    job.cancel();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    assertLeftCleanly();
  }

  @Test
  void cbwTimeoutBreaksTheSnapshotWithBreakSnapshot() throws Exception {
    BackupJob job = create(BackupOptions.of(MirrorSyncMode.none).withCbwTimeout(1)
        .withOnCbwError(OnCbwError.break_snapshot));
    injectStuckTarget();
    job.start();
    events.awaitStatus(JobStatus.running);
    job.pause(); // a paused job does not look at the snapshot yet: it stays, broken, to be read
    events.awaitStatus(JobStatus.paused);
    guestWrite(FAULT, 4096);
    assertThat(readAll(src)).isEqualTo(model);
    assertThatThrownBy(() -> job.snapshotView().read(0, ByteBuffer.allocate(10)))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EACCES));
    job.resume();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    assertThat(job.error()).isEqualTo(BlockError.ETIMEDOUT.strerror());
    releaseStuckCopy(job);
    assertLeftCleanly();
  }
}
