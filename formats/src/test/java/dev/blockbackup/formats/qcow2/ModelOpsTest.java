package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.qcow2.ModelOps.Range;
import java.util.SplittableRandom;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/** The op generator the qcow2 tests rely on draws only valid, varied ranges. */
class ModelOpsTest {

  @ParameterizedTest(name = "{0}-byte clusters, {1} bytes")
  @CsvSource({"512, 512", "4096, 4608", "4096, 3147264", "65536, 16776704", "2097152, 25169408", "2097152, 1048576"})
  void rangesLieInsideTheImageAndCoverTheInterestingShapes(int cluster, long size) {
    SplittableRandom r = new SplittableRandom(cluster + size);
    int unaligned = 0;
    int wholeClusters = 0;
    int reachingEnd = 0;
    int crossing = 0;
    for (int i = 0; i < 20_000; i++) {
      Range g = ModelOps.range(r, size, cluster);
      assertThat(g.offset()).as("offset of %s", g).isBetween(0L, size - 1);
      assertThat(g.length()).as("length of %s", g).isBetween(1L, size - g.offset());
      long end = g.offset() + g.length();
      unaligned += g.offset() % 512 != 0 ? 1 : 0;
      wholeClusters += g.offset() % cluster == 0 && (end % cluster == 0 || end == size) ? 1 : 0;
      reachingEnd += end == size ? 1 : 0;
      crossing += g.offset() / cluster != (end - 1) / cluster ? 1 : 0;
    }
    assertThat(unaligned).as("unaligned ranges").isGreaterThan(1000);
    assertThat(wholeClusters).as("whole-cluster ranges").isGreaterThan(1000);
    assertThat(reachingEnd).as("ranges reaching the end").isGreaterThan(1000);
    if (size > cluster) {
      assertThat(crossing).as("cluster-crossing ranges").isGreaterThan(1000);
    }
  }
}
