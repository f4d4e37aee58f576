package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.testkit.QemuImg;
import dev.blockbackup.testkit.QemuImg.MapEntry;
import java.io.IOException;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Acceptance 3: {@code blockbackup convert} copies guest-visible content exactly (qemu-img
 * compare), writes qcow2 that qemu-img check finds clean, and keeps every zero region (zeros
 * written as data, and holes) out of the target's data (qemu-img map).
 */
class CliConvertTest {

  /** Not a multiple of any cluster size, so the last cluster is partial. */
  private static final long SIZE = 40L * 1024 * 1024 + 20 * 1024;

  @TempDir static Path shared;
  @TempDir Path dir;

  private static SeededDisk source;

  @BeforeAll
  static void seededSource() throws IOException {
    source = SeededDisk.write(shared.resolve("src.raw"), SIZE, 20261123L);
    assertThat(source.regions).extracting(SeededDisk.Region::kind).contains(SeededDisk.Kind.values());
  }

  @ParameterizedTest(name = "cluster_size={0}, -m {1}")
  @CsvSource({"65536, 8", "65536, 1", "4096, 8", "512, 3", "2097152, 8"})
  @Tag("interop")
  void rawToQcow2IsIdenticalCleanAndKeepsZerosOutOfData(int clusterSize, int workers) {
    Path out = dir.resolve("out.qcow2");
    Cli.run("convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=" + clusterSize, "-m", workers,
        source.path, out).ok();

    QemuImg.assertIdentical(source.path, "raw", out, "qcow2");
    QemuImg.assertCheckClean(out);
    assertZerosAreNotData(QemuImg.map(out, "qcow2"), source.wholeZeroBlocks(Math.max(4096, clusterSize)));
    assertThat(QemuImg.info(out).get("cluster-size").asInt()).isEqualTo(clusterSize);
  }

  @Test
  @Tag("interop")
  void writebackCacheModeGivesTheSameCleanImage() {
    Path out = dir.resolve("writeback.qcow2");
    Cli.run("convert", "-t", "writeback", "-f", "raw", "-O", "qcow2", source.path, out).ok();
    QemuImg.assertIdentical(source.path, "raw", out, "qcow2");
    QemuImg.assertCheckClean(out);
  }

  @Test
  @Tag("interop")
  void compressedRawToQcow2IsIdenticalCleanAndCompressed() {
    Path out = dir.resolve("out.qcow2");
    Cli.run("convert", "-c", "-O", "qcow2", source.path, out).ok();

    QemuImg.assertIdentical(source.path, "raw", out, "qcow2");
    QemuImg.assertCheckClean(out);
    List<MapEntry> map = QemuImg.map(out, "qcow2");
    assertZerosAreNotData(map, source.wholeZeroBlocks(65536));
    // Compressed clusters are data without a host offset of their own.
    assertThat(map).anyMatch(e -> e.data() && e.offset() == null);
  }

  @Test
  @Tag("interop")
  void qcow2ToRawIsIdenticalAndSparse() {
    Path qcow2 = qcow2SourceWithZeroDataAndZeroFlags();
    Path out = dir.resolve("out.raw");
    Cli.run("convert", "-O", "raw", qcow2, out).ok(); // format probed

    QemuImg.assertIdentical(qcow2, "qcow2", out, "raw");
    QemuImg.assertIdentical(source.path, "raw", out, "raw");
    assertZerosAreNotData(QemuImg.map(out, "raw"), source.wholeZeroBlocks(4096));
  }

  @Test
  @Tag("interop")
  void qcow2ToCompressedQcow2IsIdenticalAndClean() {
    Path qcow2 = qcow2SourceWithZeroDataAndZeroFlags();
    Path out = dir.resolve("out.qcow2");
    Cli.run("convert", "-f", "qcow2", "-O", "qcow2", "-c", "-o", "cluster_size=128k", qcow2, out).ok();

    QemuImg.assertIdentical(qcow2, "qcow2", out, "qcow2");
    QemuImg.assertCheckClean(out);
    assertZerosAreNotData(QemuImg.map(out, "qcow2"), source.wholeZeroBlocks(128 * 1024));
  }

  @Test
  @Tag("interop")
  void qemuCompressedQcow2ConvertsToIdenticalRaw() {
    Path compressed = dir.resolve("c.qcow2");
    QemuImg.img("convert", "-c", "-f", "raw", "-O", "qcow2", source.path, compressed).assertExit(0);
    Path out = dir.resolve("out.raw");
    Cli.run("convert", "-f", "qcow2", "-O", "raw", compressed, out).ok();

    QemuImg.assertIdentical(source.path, "raw", out, "raw");
    assertZerosAreNotData(QemuImg.map(out, "raw"), source.wholeZeroBlocks(4096));
  }

  @Test
  @Tag("interop")
  void overlayIsFlattenedIntoAStandaloneImage() {
    Path overlay = dir.resolve("overlay.qcow2");
    QemuImg.img("create", "-f", "qcow2", "-b", source.path, "-F", "raw", overlay).assertExit(0);
    // New data over a hole and over data, and a zero write that hides the base's data.
    SeededDisk.Region data = source.regions.stream().filter(r -> r.kind() == SeededDisk.Kind.DATA).findFirst().orElseThrow();
    SeededDisk.Region hole = source.regions.stream().filter(r -> r.kind() == SeededDisk.Kind.HOLE).findFirst().orElseThrow();
    QemuImg.io("-f", "qcow2", "-c", "write -P 0x5a " + hole.offset() + " 4096",
        "-c", "write -P 0xa5 1048576 131072", "-c", "write -z " + (data.offset() / 65536 * 65536) + " 65536",
        overlay).assertExit(0);

    Path out = dir.resolve("out.qcow2");
    Cli.run("convert", "-O", "qcow2", overlay, out).ok();

    QemuImg.assertIdentical(overlay, "qcow2", out, "qcow2");
    QemuImg.assertCheckClean(out);
    assertThat(QemuImg.info(out).has("backing-filename")).isFalse();
  }

  @Test
  @Tag("interop")
  void oddSizedRawBecomesWholeSectorsAsInQemu() throws IOException {
    SeededDisk odd = SeededDisk.write(dir.resolve("odd.raw"), 3L * 1024 * 1024 + 1000, 99);
    java.nio.file.Files.write(odd.path, new byte[] {7}, java.nio.file.StandardOpenOption.APPEND);
    Path out = dir.resolve("odd.qcow2");
    Cli.run("convert", "-f", "raw", "-O", "qcow2", odd.path, out).ok();

    assertThat(QemuImg.info(out).get("virtual-size").asLong()).isEqualTo(3L * 1024 * 1024 + 1024);
    QemuImg.assertIdentical(odd.path, "raw", out, "qcow2");
    QemuImg.assertCheckClean(out);
  }

  @Test
  void timingIsReportedOnStderr() {
    Cli.Run r = Cli.run("convert", "--timing", "-O", "qcow2", source.path, dir.resolve("out.qcow2")).ok();
    assertThat(r.err()).matches("(?s)convert: [0-9.]+ s \\(copy [0-9.]+ s\\) for 40 MiB: .* written, .* zero, .*\n");
    assertThat(r.out()).isEmpty();
  }

  /** The seeded disk as qcow2 (made by qemu-img), with its zero-data regions allocated again: half as
   * clusters of zero bytes, half with the zero flag. */
  private Path qcow2SourceWithZeroDataAndZeroFlags() {
    Path qcow2 = dir.resolve("src.qcow2");
    QemuImg.img("convert", "-f", "raw", "-O", "qcow2", source.path, qcow2).assertExit(0);
    List<String> args = new java.util.ArrayList<>(List.of("-f", "qcow2"));
    int i = 0;
    for (long[] z : source.wholeZeroBlocks(65536)) {
      args.add("-c");
      args.add((i++ % 2 == 0 ? "write -P 0 " : "write -z ") + z[0] + " " + (z[1] - z[0]));
    }
    args.add(qcow2.toString());
    QemuImg.io(args.toArray()).assertExit(0);
    assertThat(QemuImg.map(qcow2, "qcow2")).anyMatch(e -> e.data() && e.offset() != null);
    return qcow2;
  }

  private static void assertZerosAreNotData(List<MapEntry> map, List<long[]> zeroBlocks) {
    assertThat(zeroBlocks).isNotEmpty();
    for (MapEntry e : map) {
      if (!e.data()) {
        continue;
      }
      for (long[] z : zeroBlocks) {
        assertThat(e.start() + e.length() <= z[0] || e.start() >= z[1])
            .as("map extent %s overlaps zero range [%d, %d)", e, z[0], z[1])
            .isTrue();
      }
    }
    assertThat(map).anyMatch(MapEntry::data);
  }

}
