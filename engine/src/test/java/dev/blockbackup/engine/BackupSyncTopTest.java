package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.QemuImg;
import dev.blockbackup.testkit.QemuImg.MapEntry;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * sync=top (iotest 056's test_sync_top, and backup_run's skip-unallocated scan): the backup copies
 * the job clusters that hold any byte allocated in the source's top layer, nothing else, so a
 * target that shares the source's backing file reads the same as the source. Images are built and
 * judged by qemu-img and qemu-io.
 */
@Tag("interop")
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class BackupSyncTopTest {

  static final long SIZE = 4L << 20;
  /** The job cluster: targets here have 64 KiB clusters, so max(64 KiB, target cluster). */
  static final int JOB_CLUSTER = 64 * 1024;
  static final Duration TIMEOUT = Duration.ofSeconds(30);

  @TempDir Path dir;

  /**
   * The backing file: a pattern everywhere for raw; for qcow2 the same, except an unallocated hole
   * at [3M, 3.5M) and a zeroed cluster right after it, so the overlay also sits over "nothing".
   */
  private String makeBacking(String format) {
    String name = "base." + format;
    Path p = dir.resolve(name);
    QemuImg.img("create", "-q", "-f", format, p, SIZE).assertExit(0);
    if (format.equals("raw")) {
      QemuImg.io("-f", "raw", "-c", "write -P 0x11 0 2M", "-c", "write -P 0x22 2M 2M", p).assertExit(0);
    } else {
      QemuImg.io("-f", "qcow2", "-c", "write -P 0x11 0 2M", "-c", "write -P 0x22 2M 1M",
          "-c", "write -z 3584k 64k", "-c", "write -P 0x33 3648k 448k", p).assertExit(0);
    }
    return name;
  }

  /** An overlay over {@code backing} with {@code clusterSize}, then qemu-io {@code commands} on it. */
  private Path makeOverlay(String backing, String format, int clusterSize, String... commands) {
    Path overlay = dir.resolve("overlay.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=" + clusterSize,
        "-b", backing, "-F", format, overlay, SIZE).assertExit(0);
    List<Object> args = new ArrayList<>(List.of("-f", "qcow2"));
    for (String c : commands) {
      args.add("-c");
      args.add(c);
    }
    args.add(overlay);
    QemuImg.io(args.toArray()).assertExit(0);
    return overlay;
  }

  /** 64 KiB clusters: written, zeroed (also over the qcow2 backing's hole) and untouched ones. */
  private static final String[] OVERLAY_64K = {
    "write -P 0xa1 0 64k",
    "write -P 0xa2 192k 128k",
    "write -z 512k 64k",
    "write -z 1M 192k",
    "write -P 0xa3 1536k 64k",
    "write -P 0xa5 3136k 64k",
    "write -z 3200k 64k",
    "write -P 0xa6 4032k 64k",
  };

  /**
   * 4 KiB clusters, so one 64 KiB job cluster spans sixteen source clusters: parts of job clusters
   * written or zeroed (mixed with backing data), whole job clusters, a run across five job
   * clusters, a job cluster zeroed entirely, and one half zeroed, half written.
   */
  private static final String[] OVERLAY_4K = {
    "write -P 0xb1 4k 4k",
    "write -z 200k 8k",
    "write -P 0xb2 1M 64k",
    "write -P 0xb3 1100k 300k",
    "write -z 2M 64k",
    "write -z 2112k 32k",
    "write -P 0xb4 2144k 32k",
    "write -P 0xb5 4092k 4k",
  };

  /** Runs a sync=top backup of {@code source} into {@code target} and waits for its end. */
  private static BackupJob backup(BlockNode node, BlockDevice target, BackupOptions options) throws Exception {
    BackupJob job = BackupJob.create(new JobManager(), node, target, options);
    job.start();
    assertThat(job.awaitConcluded(TIMEOUT)).as("job concluded").isTrue();
    assertThat(job.error()).isNull();
    assertThat(node.device()).as("filter removed").isSameAs(node.unfiltered());
    return job;
  }

  /**
   * Per job cluster, what {@code qemu-img map} shows at depth 0 (this layer): 'D' data, 'Z' zero,
   * '-' nothing, 'M' a mix of data and zero.
   */
  private static char[] depth0(Path image) {
    char[] out = new char[(int) (SIZE / JOB_CLUSTER)];
    Arrays.fill(out, '?');
    for (MapEntry e : QemuImg.map(image, "qcow2")) {
      char k = e.depth() == 0 && e.present() ? (e.data() ? 'D' : 'Z') : '-';
      for (long p = e.start(); p < e.start() + e.length(); ) {
        int i = (int) (p / JOB_CLUSTER);
        out[i] = out[i] == '?' || out[i] == k ? k : mix(out[i], k);
        p = (long) (i + 1) * JOB_CLUSTER;
      }
    }
    return out;
  }

  private static char mix(char a, char b) {
    if (a == '-' || b == '-') {
      return 'P'; // partly allocated: only the source's map may show that
    }
    return 'M';
  }

  /**
   * What QEMU's backup leaves on the target for a source with {@code overlay}'s map: every job
   * cluster with any byte allocated in the overlay is copied whole; one that the overlay holds all
   * as zeros is written as zeros, any other as data (the backing's data fills its gaps).
   */
  private static char[] expectedTarget(char[] overlay) {
    char[] out = new char[overlay.length];
    for (int i = 0; i < overlay.length; i++) {
      out[i] = switch (overlay[i]) {
        case '-' -> '-';
        case 'Z' -> 'Z';
        default -> 'D';
      };
    }
    return out;
  }

  private static long allocatedBytes(char[] clusters) {
    long n = 0;
    for (char c : clusters) {
      if (c != '-') {
        n += JOB_CLUSTER;
      }
    }
    return n;
  }

  @ParameterizedTest(name = "{0} backing, {1}-byte overlay clusters")
  @CsvSource({"raw, 65536", "qcow2, 65536", "raw, 4096", "qcow2, 4096"})
  void copiesExactlyTheJobClustersTheTopLayerAllocates(String backingFormat, int overlayCluster) throws Exception {
    String backing = makeBacking(backingFormat);
    Path overlay = makeOverlay(backing, backingFormat, overlayCluster,
        overlayCluster == 65536 ? OVERLAY_64K : OVERLAY_4K);
    char[] source = depth0(overlay);
    if (overlayCluster == 65536) {
      assertThat(new String(source)).as("overlay map").doesNotContain("P", "M", "?");
    } else {
      assertThat(new String(source)).as("overlay map has partly allocated job clusters").contains("P");
    }
    char[] expected = expectedTarget(source);
    assertThat(new String(expected)).contains("D", "Z", "-");

    Path targetPath = dir.resolve("target.qcow2");
    BackupJob job;
    try (Qcow2Image tgt = Qcow2Image.create(targetPath, Qcow2CreateOptions.of(SIZE).withBacking(backing, backingFormat))) {
      BlockNode node = BlockNode.of("drive0", Qcow2Image.open(overlay, false));
      try {
        job = backup(node, tgt, BackupOptions.of(MirrorSyncMode.top));
      } finally {
        node.close();
      }
    }

    assertThat(new String(depth0(targetPath))).as("target map, per job cluster").isEqualTo(new String(expected));
    // QEMU sets the job's total to what the scan left to copy, and copies all of it
    assertThat(job.totalProgress()).isEqualTo(allocatedBytes(expected));
    assertThat(job.currentProgress()).isEqualTo(job.totalProgress());
    QemuImg.assertIdentical(targetPath, "qcow2", overlay, "qcow2");
    QemuImg.assertCheckClean(targetPath);
    QemuImg.assertCheckClean(overlay);
  }

  @Test
  void guestWritesDuringTheBackupLeaveThePointInTimeOnTheTarget() throws Exception {
    String backing = makeBacking("raw");
    Path overlay = makeOverlay(backing, "raw", 65536, OVERLAY_64K);
    Path pointInTime = dir.resolve("pit.qcow2");
    Files.copy(overlay, pointInTime);
    char[] pitMap = depth0(pointInTime);

    Path targetPath = dir.resolve("target.qcow2");
    boolean[] written = new boolean[pitMap.length];
    try (Qcow2Image tgt = Qcow2Image.create(targetPath, Qcow2CreateOptions.of(SIZE).withBacking(backing, "raw"))) {
      BlockNode node = BlockNode.of("drive0", Qcow2Image.open(overlay, false));
      try {
        // one 64 KiB chunk per second: the background copy is nowhere near done while we write
        BackupJob job = BackupJob.create(new JobManager(), node, tgt,
            BackupOptions.of(MirrorSyncMode.top).withSpeed(64 * 1024).withMaxChunk(64 * 1024));
        job.start();
        SplittableRandom r = new SplittableRandom(56);
        for (int i = 0; i < 120; i++) {
          byte[] w = new byte[1 + r.nextInt(100_000)];
          r.nextBytes(w);
          long off = r.nextLong(SIZE - w.length);
          if (i % 10 == 9) {
            node.writeZeroes(off, w.length);
          } else {
            node.write(off, ByteBuffer.wrap(w));
          }
          mark(written, off, w.length);
        }
        // an unallocated cluster and the (last copied) allocated last cluster, for sure
        node.write(2L * JOB_CLUSTER + 10, ByteBuffer.wrap(new byte[] {1, 2, 3}));
        node.write(SIZE - 100, ByteBuffer.wrap(new byte[] {4, 5, 6}));
        mark(written, 2L * JOB_CLUSTER + 10, 3);
        mark(written, SIZE - 100, 3);
        assertThat(job.status()).as("still copying while the guest wrote").isEqualTo(JobStatus.running);
        job.setSpeed(0);
        assertThat(job.awaitConcluded(TIMEOUT)).isTrue();
        assertThat(job.error()).isNull();
      } finally {
        node.close();
      }
    }

    QemuImg.assertIdentical(targetPath, "qcow2", pointInTime, "qcow2");
    assertThat(QemuImg.img("compare", "-q", "-f", "qcow2", "-F", "qcow2", overlay, pointInTime).exit())
        .as("the guest did change the source")
        .isEqualTo(1);
    QemuImg.assertCheckClean(targetPath);
    // nothing beyond the top layer's clusters and those copied before a guest write got in
    char[] target = depth0(targetPath);
    for (int i = 0; i < target.length; i++) {
      if (target[i] != '-') {
        assertThat(pitMap[i] != '-' || written[i]).as("target cluster %d allocated", i).isTrue();
      }
    }
  }

  private static void mark(boolean[] clusters, long off, long len) {
    for (long c = off / JOB_CLUSTER; c <= (off + len - 1) / JOB_CLUSTER; c++) {
      clusters[(int) c] = true;
    }
  }

  @Test
  void rawSourceHasNoBackingSoTopCopiesEverythingLikeFull() throws Exception {
    Path srcPath = dir.resolve("src.raw");
    QemuImg.img("create", "-q", "-f", "raw", srcPath, SIZE).assertExit(0);
    QemuImg.io("-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0x6b 3M 512k", srcPath).assertExit(0);
    Path targetPath = dir.resolve("target.qcow2");
    BackupJob job;
    try (Qcow2Image tgt = Qcow2Image.create(targetPath, Qcow2CreateOptions.of(SIZE))) {
      BlockNode node = BlockNode.of("drive0", RawImage.open(srcPath, false));
      try {
        job = backup(node, tgt, BackupOptions.of(MirrorSyncMode.top));
      } finally {
        node.close();
      }
    }
    assertThat(job.totalProgress()).as("nothing skipped").isEqualTo(SIZE);
    assertThat(job.currentProgress()).isEqualTo(SIZE);
    QemuImg.assertIdentical(targetPath, "qcow2", srcPath, "raw");
    QemuImg.assertCheckClean(targetPath);
  }
}
