package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.testkit.Property;
import dev.blockbackup.testkit.QemuImg;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Acceptance 2: images that qemu-img and qemu-io made (patterns, zero clusters, discards,
 * compression, a three-deep backing chain, v2, 4K/64K/2M clusters, an internal snapshot) read
 * through our driver exactly as {@code qemu-img convert -O raw} reads them; our blockStatus agrees
 * with {@code qemu-img map} and our info() with {@code qemu-img info}; and our writes into them
 * leave images that qemu-img check finds clean and compare finds equal to the model.
 */
@Tag("interop")
class Qcow2QemuImagesTest {

  private static final int K = 1024;
  private static final int M = 1024 * 1024;

  @TempDir Path dir;

  /** What a scenario built: the image to open, its backing file if any, and a snapshot's content if it took one. */
  record Built(Path top, Path backing, String backingFormat, String snapshotName, byte[] snapshotContent) {
    Built(Path top) {
      this(top, null, null, null, null);
    }
  }

  interface Builder {
    Built build(Path dir) throws IOException;
  }

  record Scenario(String name, Builder builder) {
    @Override
    public String toString() {
      return name;
    }
  }

  static Stream<Scenario> scenarios() {
    return Stream.of(
        new Scenario("patterns, zero clusters, discards, 4K clusters", d -> patterns(d, 4 * K)),
        new Scenario("patterns, zero clusters, discards, 64K clusters", d -> patterns(d, 64 * K)),
        new Scenario("patterns, zero clusters, discards, 2M clusters", d -> patterns(d, 2 * M)),
        new Scenario("convert -c, 64K clusters", d -> compressed(d, 64 * K)),
        new Scenario("convert -c, 4K clusters", d -> compressed(d, 4 * K)),
        new Scenario("raw <- qcow2 64K <- qcow2 4K chain", Qcow2QemuImagesTest::chain),
        new Scenario("convert -c -B over a raw base", Qcow2QemuImagesTest::compressedOverBase),
        new Scenario("compat=0.10", Qcow2QemuImagesTest::v2),
        new Scenario("compat=0.10 over raw", Qcow2QemuImagesTest::v2OverRaw),
        new Scenario("internal snapshot then more writes", Qcow2QemuImagesTest::snapshot),
        new Scenario("refcount_bits=1, 64K clusters", d -> patterns(d, 64 * K, ",refcount_bits=1")),
        new Scenario("refcount_bits=64, 4K clusters", d -> patterns(d, 4 * K, ",refcount_bits=64")),
        new Scenario("lazy_refcounts=on, crashed (dirty bit set)", Qcow2QemuImagesTest::dirtyLazy),
        new Scenario("resized larger, written, then shrunk", Qcow2QemuImagesTest::resized));
  }

  // ---- the images ------------------------------------------------------------------------------

  static void io(Path image, String format, String... commands) {
    List<Object> args = new ArrayList<>(List.of("-f", format));
    for (String c : commands) {
      args.add("-c");
      args.add(c);
    }
    args.add(image);
    QemuImg.io(args.toArray()).assertExit(0);
  }

  /** Patterns, zero clusters with and without unmap, discards, sub-cluster and end-reaching writes. */
  static Built patterns(Path d, int c) {
    return patterns(d, c, "");
  }

  /** The same, with more {@code -o} options ({@code extraOptions} starts with a comma). */
  static Built patterns(Path d, int c, String extraOptions) {
    long size = Math.max(16L * c, 3L * M) + 1536;
    Path img = d.resolve("patterns.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=" + c + extraOptions, img, size).assertExit(0);
    io(img, "qcow2",
        "write -P 0x11 0 " + c,
        "write -P 0x22 " + c / 2 + " " + c,
        "write -P 0x33 " + (3L * c + 512) + " 1000",
        "write -P 0x44 " + 5L * c + " " + 3L * c,
        "write -z " + 6L * c + " " + c,
        "write -z -u " + 7L * c + " " + c,
        "write -z " + 9L * c + " " + c,
        "write -P 0x55 " + 10L * c + " " + 2L * c,
        "discard " + 10L * c + " " + c,
        "discard " + (11L * c + 512) + " " + c / 2,
        "write -z " + (12L * c + 100) + " 300",
        "write -z " + (5L * c + 1000) + " 2000",
        "write -P 0x66 " + (size - c - 700) + " " + (c + 700));
    return new Built(img);
  }

  /** convert -c of compressible, incompressible and zero clusters, then a partial overwrite of a compressed one. */
  static Built compressed(Path d, int c) throws IOException {
    long size = 40L * c + 3584;
    byte[] content = new byte[(int) size];
    SplittableRandom r = new SplittableRandom(c);
    for (int k = 0; k * (long) c < size; k++) {
      int off = k * c;
      int len = (int) Math.min(c, size - off);
      switch (k % 5) {
        case 0, 1, 3 -> {
          byte[] text = ("cluster " + k + " of a compressible image; ").repeat(len / 30 + 1).getBytes(StandardCharsets.US_ASCII);
          System.arraycopy(text, 0, content, off, len);
        }
        case 2 -> {
          byte[] rnd = new byte[len];
          r.nextBytes(rnd);
          System.arraycopy(rnd, 0, content, off, len);
        }
        default -> { } // zeros: left unallocated by convert
      }
    }
    Path src = d.resolve("src.raw");
    Files.write(src, content);
    Path img = d.resolve("compressed.qcow2");
    QemuImg.img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=" + c, src, img).assertExit(0);
    io(img, "qcow2", "write -P 0x77 " + (c + 100) + " 200", "discard " + 3L * c + " " + c);
    return new Built(img);
  }

  /**
   * convert -c -B: an overlay holding, compressed, only the clusters that differ from its raw base;
   * writes into it must COW compressed clusters and, for the others, copy from the base.
   */
  static Built compressedOverBase(Path d) throws IOException {
    int c = 64 * K;
    long size = 48L * c;
    byte[] base = Qcow2ModelPropertyTest.baseContent(size, 5);
    Path baseRaw = d.resolve("base.raw");
    Files.write(baseRaw, base);
    byte[] top = base.clone();
    for (int k = 0; k < 48; k += 3) {
      byte[] text = ("overlay cluster " + k + " differs. ").repeat(c / 20 + 1).getBytes(StandardCharsets.US_ASCII);
      System.arraycopy(text, 0, top, k * c, c);
    }
    java.util.Arrays.fill(top, 7 * c, 8 * c, (byte) 0); // zeros over base data: a zero cluster in the overlay
    Path src = d.resolve("src.raw");
    Files.write(src, top);
    Path img = d.resolve("overlay.qcow2");
    QemuImg.img("convert", "-c", "-f", "raw", "-O", "qcow2", "-B", "base.raw", "-F", "raw", src, img).assertExit(0);
    Files.delete(src);
    return new Built(img, baseRaw, "raw", null, null);
  }

  /** raw base (smaller) <- qcow2 64K <- qcow2 4K, with -F at each level. */
  static Built chain(Path d) {
    long baseSize = 3L * M - 1536;
    Path base = d.resolve("base.raw");
    QemuImg.img("create", "-q", "-f", "raw", base, baseSize).assertExit(0);
    io(base, "raw", "write -P 0x11 0 " + baseSize, "write -P 0x12 " + 700 * K + " " + 300 * K);
    Path mid = d.resolve("mid.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", "-b", "base.raw", "-F", "raw", mid, 4 * M)
        .assertExit(0);
    io(mid, "qcow2",
        "write -P 0x22 " + 64 * K + " " + 128 * K,
        "write -P 0x23 " + (M + 4000) + " 5000",
        "write -z " + 2 * M + " " + 64 * K,
        "write -z -u " + (2 * M + 128 * K) + " " + 64 * K,
        "discard " + (2 * M + 256 * K) + " " + 64 * K,
        "write -P 0x24 " + (3 * M - 3000) + " 6000");
    Path top = d.resolve("top.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "mid.qcow2", "-F", "qcow2", top, 4 * M)
        .assertExit(0);
    io(top, "qcow2",
        "write -P 0x33 0 4096",
        "write -P 0x34 " + (100 * K + 17) + " 3000",
        "write -z " + (64 * K + 4 * K) + " " + 8 * K,
        "discard " + M + " " + 8 * K,
        "write -z -u " + (2 * M + 64 * K) + " " + 4 * K,
        "write -P 0x35 " + (4 * M - 2000) + " 2000");
    return new Built(top, mid, "qcow2", null, null);
  }

  /** compat=0.10: no zero flag, so qemu writes zeros; discards deallocate. */
  static Built v2(Path d) {
    Path img = d.resolve("v2.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", "-o", "compat=0.10,cluster_size=65536", img, 5 * M + 512).assertExit(0);
    io(img, "qcow2",
        "write -P 0x41 0 " + 256 * K,
        "write -P 0x42 " + (300 * K + 5) + " 70000",
        "write -z " + 64 * K + " " + 64 * K,
        "write -z -u " + 128 * K + " " + 64 * K,
        "discard " + 192 * K + " " + 64 * K,
        "write -P 0x43 " + (5 * M - 1000) + " 1512");
    return new Built(img);
  }

  /** compat=0.10 over a raw base (qemu refuses discards there, so only writes). */
  static Built v2OverRaw(Path d) {
    Path base = d.resolve("base.raw");
    QemuImg.img("create", "-q", "-f", "raw", base, 2 * M).assertExit(0);
    io(base, "raw", "write -P 0x51 0 " + 2 * M);
    Path img = d.resolve("v2.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", "-o", "compat=0.10,cluster_size=65536", "-b", "base.raw", "-F", "raw",
        img, 3 * M).assertExit(0);
    io(img, "qcow2",
        "write -P 0x52 " + (64 * K + 1000) + " 3000",
        "write -P 0x53 " + 512 * K + " " + 128 * K,
        "write -P 0x54 " + (2 * M - 700) + " 1400");
    return new Built(img, base, "raw", null, null);
  }

  /**
   * lazy_refcounts=on and a crash (qemu-io abort) after writes: the dirty bit stays set and the
   * refcounts are stale, so a read-write open must rebuild them first, as QEMU does.
   */
  static Built dirtyLazy(Path d) {
    Path img = d.resolve("lazy.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", img, 4 * M).assertExit(0);
    QemuImg.Result r = QemuImg.io("-f", "qcow2", "-c", "write -P 0x61 0 " + M, "-c", "write -P 0x62 " + (2 * M + 5)
        + " 70000", "-c", "write -z " + 64 * K + " " + 64 * K, "-c", "abort", img);
    assertThat(r.exit()).as("qemu-io abort exits by a signal: %s", r).isNotZero();
    assertThat(QemuImg.info(img).path("dirty-flag").asBoolean()).as("dirty flag after the crash").isTrue();
    return new Built(img);
  }

  /**
   * qemu-img resize: growing moves the L1 table to a larger one; shrinking keeps the larger L1, so
   * l1_size exceeds what the virtual size needs (allowed by the spec).
   */
  static Built resized(Path d) {
    Path img = d.resolve("resized.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img, M).assertExit(0);
    io(img, "qcow2", "write -P 0x71 0 " + 300 * K);
    QemuImg.img("resize", "-q", img, 9 * M).assertExit(0);
    io(img, "qcow2", "write -P 0x72 " + (8 * M + 1000) + " 9000", "write -P 0x73 " + (3 * M - 10) + " 20");
    QemuImg.img("resize", "-q", "--shrink", img, 5 * M + 512).assertExit(0);
    io(img, "qcow2", "write -P 0x74 " + (5 * M - 700) + " 1212");
    return new Built(img);
  }

  /** Writes, snapshot -c, then writes that must COW shared clusters and L2 tables. */
  static Built snapshot(Path d) throws IOException {
    Path img = d.resolve("snap.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", img, 4 * M).assertExit(0);
    io(img, "qcow2",
        "write -P 0x11 0 " + M,
        "write -P 0x12 " + 2 * M + " " + 256 * K,
        "write -z " + M + " " + 64 * K);
    byte[] atSnapshot = ModelRunner.qemuContent(img, "qcow2", d);
    QemuImg.img("snapshot", "-c", "s1", img).assertExit(0);
    io(img, "qcow2",
        "write -P 0x21 " + 32 * K + " " + 64 * K,
        "write -P 0x22 " + 3 * M + " " + 64 * K,
        "write -z -u " + 2 * M + " " + 64 * K,
        "discard " + 128 * K + " " + 128 * K,
        "write -z " + 256 * K + " " + 64 * K);
    return new Built(img, null, null, "s1", atSnapshot);
  }

  // ---- the tests -------------------------------------------------------------------------------

  @ParameterizedTest(name = "{0}")
  @MethodSource("scenarios")
  void readsAsQemuImgConvertDoes(Scenario s) throws Exception {
    Built b = s.builder().build(dir);
    byte[] expected = ModelRunner.qemuContent(b.top(), "qcow2", dir);
    try (Qcow2Image img = Qcow2Image.open(b.top(), true)) {
      assertThat(img.size()).isEqualTo(expected.length);
      ModelRunner.verifyContent(img, expected, s.name());
    }
  }

  @ParameterizedTest(name = "{0}")
  @MethodSource("scenarios")
  void blockStatusAgreesWithQemuImgMap(Scenario s) throws Exception {
    Built b = s.builder().build(dir);
    try (Qcow2Image img = Qcow2Image.open(b.top(), true)) {
      ModelRunner.assertStatusMatchesQemuMap(img, b.top(), false);
    }
  }

  @ParameterizedTest(name = "{0}")
  @MethodSource("scenarios")
  void infoAgreesWithQemuImgInfo(Scenario s) throws Exception {
    Built b = s.builder().build(dir);
    try (Qcow2Image img = Qcow2Image.open(b.top(), true)) {
      ModelRunner.assertInfoMatchesQemu(img.info(), b.top());
    }
  }

  @ParameterizedTest(name = "{0}")
  @MethodSource("scenarios")
  void ourWritesKeepItCleanAndEqualToTheModel(Scenario s) throws Exception {
    Path pristine = Files.createDirectory(dir.resolve("pristine"));
    Built built = s.builder().build(pristine);
    byte[] initial = ModelRunner.qemuContent(built.top(), "qcow2", dir);
    byte[] backing = built.backing() == null
        ? null
        : ModelRunner.fit(ModelRunner.qemuContent(built.backing(), built.backingFormat(), dir), initial.length);
    int cluster = QemuImg.info(built.top()).get("cluster-size").asInt();
    Property.check(
        "our writes into a qemu-made image: " + s,
        10,
        r -> ModelOps.generate(r, initial.length, cluster, 40, 30),
        ops -> {
          Path d = Files.createTempDirectory(dir, "try");
          try {
            try (var files = Files.list(pristine)) {
              for (Path f : files.toList()) {
                Files.copy(f, d.resolve(f.getFileName())); // backing names are relative: the chain moves along
              }
            }
            Path top = d.resolve(built.top().getFileName());
            try (ModelRunner m = new ModelRunner(Qcow2Image.open(top, false), initial.clone(), backing)) {
              m.verifyBlockStatus("as qemu made it");
              m.applyAll(ops);
              m.verifyContent("after our ops");
              m.verifyBlockStatus("after our ops");
              m.closeAndJudge(d);
            }
            if (built.snapshotName() != null) {
              assertThat(QemuImg.img("snapshot", "-l", top).assertExit(0).out()).contains(built.snapshotName());
              Path snap = d.resolve("snapshot.raw");
              QemuImg.img("convert", "-f", "qcow2", "-O", "raw", "-l", "snapshot.name=" + built.snapshotName(), top,
                  snap).assertExit(0);
              ModelRunner.assertSameBytes(Files.readAllBytes(snap), 0, built.snapshotContent(), 0,
                  built.snapshotContent().length, "internal snapshot " + built.snapshotName() + " after our writes");
            }
          } finally {
            ModelRunner.deleteTree(d);
          }
        });
  }
}
