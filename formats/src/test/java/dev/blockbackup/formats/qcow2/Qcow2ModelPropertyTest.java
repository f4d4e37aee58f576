package dev.blockbackup.formats.qcow2;

import dev.blockbackup.testkit.Property;
import dev.blockbackup.testkit.QemuImg;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Acceptance 1: random write / writeZeroes / discard / flush / reopen sequences on qcow2 images,
 * with and without a backing file, read back exactly as a byte-array model says, and leave an image
 * that qemu-img check finds clean and qemu-img compare finds equal to the model.
 *
 * <p>The default run makes 354 tries in about 30 s. A soak run: {@code -Dprops.tries=250} (2750
 * tries, about 5 minutes); a reported failure replays with its {@code -Dprops.seed}.
 */
@Tag("interop")
class Qcow2ModelPropertyTest {

  private static final int K = 1024;
  private static final int M = 1024 * 1024;

  @TempDir Path dir;

  /**
   * One configuration: the overlay's cluster size and size, and its backing file (none, raw or
   * qcow2, of {@code baseSize} bytes, which may differ from the overlay's).
   */
  record Case(String name, int cluster, long size, String backingFormat, long baseSize, int baseCluster, int tries,
      int maxOps) {
    @Override
    public String toString() {
      return name;
    }
  }

  static Stream<Case> cases() {
    return Stream.of(
        new Case("512 B, no backing, 1 MiB + 512", 512, M + 512, null, 0, 0, 30, 40),
        new Case("512 B, qcow2 backing (4K, smaller), 1 MiB", 512, M, "qcow2", M - 4 * K, 4 * K, 30, 40),
        new Case("4K, no backing, 2 MiB", 4 * K, 2 * M, null, 0, 0, 50, 40),
        new Case("4K, raw backing (smaller), 3 MiB + 1.5 KiB", 4 * K, 3 * M + 1536, "raw", 5 * M / 2, 0, 40, 40),
        new Case("4K, qcow2 backing (64K), 4 MiB", 4 * K, 4 * M, "qcow2", 4 * M, 64 * K, 40, 40),
        new Case("64K, no backing, 16 MiB - 1.5 KiB", 64 * K, 16 * M - 1536, null, 0, 0, 40, 40),
        new Case("64K, raw backing, 16 MiB", 64 * K, 16 * M, "raw", 16 * M, 0, 30, 40),
        new Case("64K, qcow2 backing (4K, smaller), 16 MiB + 512", 64 * K, 16 * M + 512, "qcow2", 12 * M + 512, 4 * K,
            30, 40),
        new Case("2M, no backing, 32 MiB", 2 * M, 32 * M, null, 0, 0, 24, 25),
        new Case("2M, raw backing, 24 MiB + 3.5 KiB", 2 * M, 24 * M + 3584, "raw", 24 * M + 3584, 0, 20, 25),
        new Case("2M, qcow2 backing (64K, larger), 16 MiB", 2 * M, 16 * M, "qcow2", 20 * M, 64 * K, 20, 25));
  }

  @ParameterizedTest(name = "{0}")
  @MethodSource("cases")
  void randomOperationsMatchTheModelAndQemu(Case c) throws Exception {
    Path caseDir = Files.createDirectory(dir.resolve("case"));
    byte[] backingContent = null;
    String backingName = null;
    if (c.backingFormat() != null) {
      byte[] base = baseContent(c.baseSize(), c.name().hashCode());
      Path baseRaw = caseDir.resolve("base.raw");
      ModelRunner.writeRaw(baseRaw, base);
      backingName = "base.raw";
      if (c.backingFormat().equals("qcow2")) {
        backingName = "base.qcow2";
        QemuImg.img("convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=" + c.baseCluster(), baseRaw,
            caseDir.resolve(backingName)).assertExit(0);
        Files.delete(baseRaw);
      }
      backingContent = ModelRunner.fit(base, c.size());
    }
    final byte[] backing = backingContent;
    final String backingFile = backingName;

    Property.check(
        "qcow2 matches a byte-array model: " + c,
        c.tries(),
        r -> ModelOps.generate(r, c.size(), c.cluster(), c.maxOps(), 30),
        ops -> {
          Path overlay = caseDir.resolve("overlay.qcow2");
          try {
            Qcow2CreateOptions options = Qcow2CreateOptions.of(c.size()).withClusterSize(c.cluster());
            if (backingFile != null) {
              options = options.withBacking(backingFile, c.backingFormat());
            }
            byte[] initial = backing == null ? new byte[(int) c.size()] : backing.clone();
            try (ModelRunner m = new ModelRunner(Qcow2Image.create(overlay, options), initial, backing)) {
              m.verifyBlockStatus("fresh image");
              m.applyAll(ops);
              m.verifyContent("after the ops");
              m.verifyBlockStatus("after the ops");
              m.closeAndJudge(caseDir);
            }
          } finally {
            Files.deleteIfExists(overlay);
          }
        });
  }

  /**
   * A base image's content: 64 KiB pieces of random bytes, zeros, or one repeated byte, so that a
   * qcow2 base made from it has unallocated holes as well as data.
   */
  static byte[] baseContent(long size, long seed) {
    SplittableRandom r = new SplittableRandom(seed);
    byte[] b = new byte[Math.toIntExact(size)];
    int piece = 64 * K;
    for (int off = 0; off < b.length; off += piece) {
      int len = Math.min(piece, b.length - off);
      int kind = r.nextInt(10);
      if (kind < 6) {
        byte[] rnd = new byte[len];
        r.nextBytes(rnd);
        System.arraycopy(rnd, 0, b, off, len);
      } else if (kind < 8) {
        java.util.Arrays.fill(b, off, off + len, (byte) (1 + r.nextInt(255)));
      }
    }
    return b;
  }
}
