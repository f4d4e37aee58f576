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
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
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

  /** §3 verb table, written out again: verb, then the statuses that accept it. */
  private static final String[] VERBS = {
    "cancel:    created running paused ready standby waiting pending",
    "pause:     created running paused ready standby",
    "resume:    created running paused ready standby",
    "set-speed: created running paused ready standby",
    "change:    created running paused ready standby",
    "complete:  ready standby",
    "finalize:  pending",
    "dismiss:   concluded",
  };

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
        job.resumeInternal();
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

  private static void awaitProgress(Job job) throws InterruptedException {
    long deadline = System.nanoTime() + TIMEOUT.toNanos();
    while (job.currentProgress() == 0) {
      if (System.nanoTime() > deadline) {
        fail("no progress within " + TIMEOUT);
      }
      Thread.sleep(5);
    }
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
}
