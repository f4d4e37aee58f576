package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Arrays;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * sync=top copies nothing for clusters its source's top layer does not allocate. A guest write to
 * such a cluster must still leave the snapshot view showing the point in time: after a successful
 * copy-before-write the cluster reads from the target (QEMU's done bitmap), whose backing file
 * holds that content, not from the source that now holds the new data. Found by {@link
 * BackupPointInTimePropertyTest}.
 */
class SnapshotViewSyncTopTest {

  static final int CLUSTER = 64 * 1024;
  static final long SIZE = 4L * CLUSTER;

  @TempDir Path dir;

  @Test
  @Timeout(30)
  void guestWriteToAClusterTheTopLayerDoesNotAllocateLeavesTheViewAtThePointInTime() throws Exception {
    byte[] base = new byte[(int) SIZE];
    Arrays.fill(base, (byte) 0x5a);
    try (RawImage b = RawImage.create(dir.resolve("base.raw"), SIZE)) {
      b.write(0, ByteBuffer.wrap(base));
    }
    Qcow2Image src = Qcow2Image.create(dir.resolve("src.qcow2"),
        Qcow2CreateOptions.of(SIZE).withBacking("base.raw", "raw"));
    byte[] top = new byte[CLUSTER];
    Arrays.fill(top, (byte) 0x11);
    src.write(0, ByteBuffer.wrap(top)); // cluster 0 in the top layer; clusters 1..3 only in the backing file
    Qcow2Image tgt = Qcow2Image.create(dir.resolve("tgt.qcow2"),
        Qcow2CreateOptions.of(SIZE).withBacking("base.raw", "raw"));
    BlockNode node = BlockNode.of("drive0", src);
    BackupJob job = BackupJob.create(new JobManager(), node, tgt,
        BackupOptions.of(MirrorSyncMode.top).withAutoFinalize(false));
    job.start();
    assertThat(job.awaitStatus(Duration.ofSeconds(20), JobStatus.pending)).isTrue(); // the filter stays meanwhile

    byte[] guest = new byte[CLUSTER];
    Arrays.fill(guest, (byte) 0x77);
    node.write(2L * CLUSTER, ByteBuffer.wrap(guest));

    ByteBuffer seen = ByteBuffer.allocate(CLUSTER);
    job.snapshotView().read(2L * CLUSTER, seen);
    assertThat(seen.array()).as("cluster 2 through the snapshot view").containsOnly((byte) 0x5a);

    job.finalizeJob();
    assertThat(job.awaitConcluded(Duration.ofSeconds(20))).isTrue();
    assertThat(job.error()).isNull();
    tgt.close();
    node.close();
  }
}
