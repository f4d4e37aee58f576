package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.testkit.Property;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Random write / writeZeroes / discard / flush / reopen sequences on images with an external data
 * file read back as a byte-array model says and leave an image qemu-img check finds clean and
 * compare finds equal to the model; with data_file_raw the raw file alone is the model too.
 * Compressed writes are left out: such images refuse them.
 */
@Tag("interop")
class Qcow2DataFilePropertyTest {

  private static final int K = 1024;
  private static final int M = 1024 * 1024;

  @TempDir Path dir;

  record Case(String name, int cluster, long size, boolean raw, int tries) {
    @Override
    public String toString() {
      return name;
    }
  }

  static Stream<Case> cases() {
    return Stream.of(
        new Case("data_file_raw, 64K, 8 MiB over random bytes", 64 * K, 8 * M, true, 15),
        new Case("data_file_raw, 4K, 2 MiB + 1.5 KiB over random bytes", 4 * K, 2 * M + 1536, true, 15),
        new Case("data_file, 64K, 4 MiB", 64 * K, 4 * M, false, 15));
  }

  @ParameterizedTest(name = "{0}")
  @MethodSource("cases")
  void randomOperationsMatchTheModelAndQemu(Case c) throws Exception {
    Path caseDir = Files.createDirectory(dir.resolve("case"));
    Property.check(
        "qcow2 with a data file matches a byte-array model: " + c,
        c.tries(),
        r -> ModelOps.generate(r, c.size(), c.cluster(), 40, 30).stream()
            .filter(op -> !(op instanceof ModelOps.Compress)).toList(),
        ops -> {
          Path meta = caseDir.resolve("meta.qcow2");
          // an absolute name: QEMU 7.2 resolves a relative one against its working directory
          Path data = caseDir.resolve("disk.raw");
          byte[] initial = new byte[(int) c.size()];
          try {
            if (c.raw()) {
              new SplittableRandom(ops.size()).nextBytes(initial);
              Files.write(data, initial);
            }
            Qcow2CreateOptions options = Qcow2CreateOptions.of(c.size()).withClusterSize(c.cluster())
                .withDataFile(data.toString(), c.raw());
            try (ModelRunner m = new ModelRunner(Qcow2Image.create(meta, options), initial, null)) {
              m.verifyBlockStatus("fresh image");
              m.applyAll(ops);
              m.verifyContent("after the ops");
              m.verifyBlockStatus("after the ops");
              m.closeAndJudge(caseDir);
              if (c.raw()) {
                assertThat(Files.readAllBytes(data)).as("the raw data file").isEqualTo(m.model);
              }
            }
          } finally {
            Files.deleteIfExists(meta);
            Files.deleteIfExists(data);
          }
        });
  }
}
