package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.qcow2.ModelOps.Discard;
import dev.blockbackup.formats.qcow2.ModelOps.Write;
import dev.blockbackup.formats.qcow2.ModelOps.Zero;
import dev.blockbackup.testkit.QemuImg;
import java.nio.file.Path;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Images whose host file outgrows what one refcount-table cluster describes: with 512-byte
 * clusters and 16-bit refcounts a refcount block covers 256 clusters (128 KiB) and one table
 * cluster 64 blocks (8 MiB), so filling a 12 MiB image must grow the refcount table.
 */
@Tag("interop")
class Qcow2GrowthTest {

  private static final int C = 512;
  private static final long SIZE = 12L << 20;

  @TempDir Path dir;

  @ParameterizedTest(name = "image made by {0}")
  @ValueSource(strings = {"us", "qemu-img"})
  void fillingA512ByteClusterImageGrowsTheRefcountTableAndStaysClean(String maker) throws Exception {
    Path path = dir.resolve("grow.qcow2");
    if (maker.equals("us")) {
      Qcow2Image.create(path, Qcow2CreateOptions.of(SIZE).withClusterSize(C)).close();
    } else {
      QemuImg.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=" + C, path, SIZE).assertExit(0);
    }
    SplittableRandom r = new SplittableRandom(11);
    try (ModelRunner m = new ModelRunner(Qcow2Image.open(path, false), new byte[(int) SIZE], null)) {
      int chunk = 256 << 10;
      for (long off = 0; off < SIZE; off += chunk) {
        m.apply(new Write(off, chunk, r.nextLong(), -1, false));
        if (off % (2 << 20) == 0) { // free some clusters so that allocation reuses holes as the file grows
          m.apply(new Discard(off + 3 * C, 40 * C));
          m.apply(new Zero(off + 100 * C, 20 * C, true, false));
        }
      }
      m.apply(new ModelOps.Reopen());
      for (int i = 0; i < 200; i++) { // rewrite what was freed, and more, after reopening
        ModelOps.Range g = ModelOps.range(r, SIZE, C);
        m.apply(new Write(g.offset(), (int) g.length(), r.nextLong(), -1, false));
      }
      m.verifyContent("after filling the image");
      assertThat(m.img.info().hostClustersInUse()).as("host clusters in use")
          .isGreaterThan((8L << 20) / C);
      m.closeAndJudge(dir);
    }
    try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(path.toFile(), "r")) {
      f.seek(56);
      assertThat(f.readInt()).as("refcount_table_clusters in the header").isGreaterThan(1);
    }
  }
}
