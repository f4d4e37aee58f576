package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import com.fasterxml.jackson.databind.JsonNode;
import dev.blockbackup.testkit.QemuImg;
import dev.blockbackup.testkit.QemuImg.MapEntry;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Acceptance 5: the offline {@code blockbackup backup} output passes qemu-img check and qemu-img
 * compare against the source, for raw and qcow2 targets, with and without --compress; plus sync=top
 * of an overlay, --existing, and what the command prints.
 */
@Tag("interop")
class CliBackupTest {

  private static final long MIB = 1024 * 1024;
  /** A whole number of sectors but not of clusters, so the last cluster is partial. */
  private static final long SIZE = 24 * MIB + 20 * 1024;
  private static final String SUMMARY =
      "backup '%s': [0-9.]+ [KMG]?i?B copied in [0-9.]+ s \\([0-9.]+ MiB/s\\), target %s \\(%s\\)";

  @TempDir static Path shared;
  @TempDir Path dir;

  private static SeededDisk raw;
  /** Made by qemu-img from {@link #raw}, then written by qemu-io: patterns, zero clusters, compressed clusters. */
  private static Path qcow2;

  @BeforeAll
  static void sources() throws IOException {
    raw = SeededDisk.write(shared.resolve("src.raw"), SIZE, 20261124L);
    assertThat(raw.regions).extracting(SeededDisk.Region::kind).contains(SeededDisk.Kind.values());
    qcow2 = shared.resolve("src.qcow2");
    QemuImg.img("convert", "-f", "raw", "-O", "qcow2", raw.path, qcow2).assertExit(0);
    QemuImg.io("-f", "qcow2",
        "-c", "write -P 0xab 0 1M", // data over the seeded start
        "-c", "write -z 2M 512k", // zero clusters hiding data
        "-c", "write -P 0 4M 256k", // zeros written as data
        "-c", "write -P 0xcd 5246976 10000", // unaligned, partial clusters
        "-c", "write -c -P 0x11 8M 64k", // a compressed cluster
        "-c", "discard 12M 1M", // a hole again
        qcow2).assertExit(0);
    List<MapEntry> map = QemuImg.map(qcow2, "qcow2");
    assertThat(map).anyMatch(e -> e.zero() && !e.data()).anyMatch(MapEntry::data);
  }

  private static Path source(String format) {
    return format.equals("raw") ? raw.path : qcow2;
  }

  @ParameterizedTest(name = "{0} -> {1} {2}")
  @CsvSource({
    "raw, raw, ''",
    "raw, qcow2, ''",
    "raw, qcow2, --compress",
    "qcow2, raw, ''",
    "qcow2, qcow2, ''",
    "qcow2, qcow2, --compress"
  })
  void fullBackupIsIdenticalToTheSourceAndClean(String srcFmt, String dstFmt, String compress) {
    Path out = dir.resolve("backup." + dstFmt);
    Cli.Run r = Cli.run(args("backup", "--sync", "full", "--target-format", dstFmt, compress, source(srcFmt), out)).ok();

    QemuImg.assertIdentical(source(srcFmt), srcFmt, out, dstFmt);
    assertThat(QemuImg.info(out).get("format").asText()).isEqualTo(dstFmt);
    if (dstFmt.equals("qcow2")) {
      QemuImg.assertCheckClean(out);
      List<MapEntry> map = QemuImg.map(out, "qcow2");
      // Compressed clusters are data without a host offset of their own.
      assertThat(map.stream().anyMatch(e -> e.data() && e.offset() == null)).isEqualTo(!compress.isEmpty());
    }
    assertThat(lastLine(r)).matches(String.format(SUMMARY, "drive0", out, dstFmt));
    assertThat(r.err()).isEmpty();
  }

  @ParameterizedTest(name = "cluster_size={0}")
  @CsvSource({"4k", "1M"})
  void targetClusterSizeIsTakenAndTheJobClusterFollowsIt(String clusterSize) {
    Path out = dir.resolve("backup.qcow2");
    Cli.Run r = Cli.run("backup", "--sync", "full", "--progress", "plain", "-o", "cluster_size=" + clusterSize,
        qcow2, out).ok();

    QemuImg.assertIdentical(qcow2, "qcow2", out, "qcow2");
    QemuImg.assertCheckClean(out);
    assertThat(QemuImg.info(out).get("cluster-size").asLong()).isEqualTo(Sizes.parse("size", clusterSize));
    // The job cluster is max(64 KiB, target cluster size).
    assertThat(r.out().lines().findFirst().orElseThrow()).contains(clusterSize.equals("1M") ? "cluster 1 MiB" : "cluster 64 KiB");
  }

  @Test
  void syncTopCopiesTheOverlayOnlyAndGivesTheTargetItsBacking() {
    Path overlay = dir.resolve("overlay.qcow2");
    QemuImg.img("create", "-f", "qcow2", "-b", raw.path, "-F", "raw", overlay).assertExit(0);
    SeededDisk.Region data = raw.regions.stream().filter(x -> x.kind() == SeededDisk.Kind.DATA && x.length() >= 65536)
        .skip(3).findFirst().orElseThrow();
    long zeroAt = (data.offset() + 65535) / 65536 * 65536;
    QemuImg.io("-f", "qcow2", "-c", "write -P 0x5a 1M 192k", "-c", "write -P 0xa5 10000 5000",
        "-c", "write -z " + zeroAt + " 65536", overlay).assertExit(0);
    Path out = dir.resolve("incremental.qcow2");

    Cli.Run r = Cli.run("backup", "--sync", "top", "--progress", "plain", overlay, out).ok();

    QemuImg.assertIdentical(overlay, "qcow2", out, "qcow2");
    QemuImg.assertCheckClean(out);
    JsonNode info = QemuImg.info(out);
    assertThat(info.get("backing-filename").asText()).isEqualTo(raw.path.toAbsolutePath().normalize().toString());
    assertThat(info.get("backing-filename-format").asText()).isEqualTo("raw");
    // Only the overlay's clusters are in the target; the rest comes from the shared base.
    long own = QemuImg.map(out, "qcow2").stream().filter(e -> e.depth() == 0 && e.present())
        .mapToLong(MapEntry::length).sum();
    assertThat(own).isPositive().isLessThanOrEqualTo(192 * 1024 + 2 * 65536 + 65536);
    assertThat(r.out().lines().findFirst().orElseThrow()).contains("sync=top");
  }

  @Test
  void syncTopOfAnImageWithoutBackingIsAFullBackup() {
    Path out = dir.resolve("top.qcow2");
    Cli.Run r = Cli.run("backup", "--sync", "top", "--progress", "plain", raw.path, out).ok();

    QemuImg.assertIdentical(raw.path, "raw", out, "qcow2");
    assertThat(QemuImg.info(out).has("backing-filename")).isFalse();
    assertThat(r.out().lines().findFirst().orElseThrow()).contains("sync=full");
  }

  @Test
  void existingTargetOfTheSameSizeIsOverwrittenWithTheBackup() {
    Path out = dir.resolve("existing.qcow2");
    QemuImg.img("create", "-f", "qcow2", out, SIZE).assertExit(0);
    QemuImg.io("-f", "qcow2", "-c", "write -P 0x77 0 " + SIZE, out).assertExit(0);

    Cli.run("backup", "--sync", "full", "--existing", "-q", qcow2, out).ok();

    QemuImg.assertIdentical(qcow2, "qcow2", out, "qcow2");
    QemuImg.assertCheckClean(out);
  }

  @Test
  void existingTargetOfAnotherSizeIsRefused() {
    Path out = dir.resolve("small.raw");
    QemuImg.img("create", "-f", "raw", out, "1M").assertExit(0);
    Cli.Run r = Cli.run("backup", "--sync", "full", "--existing", raw.path, out);
    assertThat(r.exit()).isEqualTo(1);
    assertThat(r.err().lines().toList()).hasSize(1);
    assertThat(r.err()).contains("Source and target must have the same size").doesNotContain("Exception");
  }

  @Test
  void aFailingJobPrintsOneErrorLineWithTheJobsError() throws IOException {
    // A qcow2 image cut short: its header and tables are intact, its data clusters are gone.
    Path cut = dir.resolve("cut.qcow2");
    QemuImg.img("create", "-f", "qcow2", cut, "8M").assertExit(0);
    QemuImg.io("-f", "qcow2", "-c", "write -P 5 0 8M", cut).assertExit(0);
    try (var c = java.nio.channels.FileChannel.open(cut, java.nio.file.StandardOpenOption.WRITE)) {
      c.truncate(MIB);
    }
    Cli.Run r = Cli.run("backup", "--sync", "full", "--progress", "plain", cut, dir.resolve("out.qcow2"));

    assertThat(r.exit()).as("%s", r).isEqualTo(1);
    assertThat(r.err().lines().toList()).as("%s", r)
        .containsExactly("blockbackup: backup 'drive0' failed: Input/output error");
    assertThat(r.out()).doesNotContain("copied in");
  }

  @Test
  void plainProgressIsAFewLinesEndingWithTheSummary() {
    Path out = dir.resolve("plain.qcow2");
    Cli.Run r = Cli.run("backup", "--sync", "full", "--progress", "plain", "--speed", "512M", "--job-id", "nightly",
        raw.path, out).ok();

    List<String> lines = r.out().lines().toList();
    assertThat(lines.get(0)).isEqualTo("backup 'nightly': " + raw.path + " -> " + out
        + " (qcow2), sync=full, 24 MiB, cluster 64 KiB, speed 512 MiB/s");
    assertThat(lines.subList(1, lines.size() - 1)).isNotEmpty().hasSizeLessThanOrEqualTo(11)
        .allMatch(l -> l.matches("backup 'nightly': [0-9]+% \\(.* of 24 MiB\\), .* MiB/s, ETA .*"));
    assertThat(lines.get(lines.size() - 2)).startsWith("backup 'nightly': 100% ");
    assertThat(lines.get(lines.size() - 1)).matches(String.format(SUMMARY, "nightly", out, "qcow2"));
    assertThat(r.out()).doesNotContain("\r");
  }

  @Test
  void barProgressRedrawsOneLineThenTheSummary() {
    Path out = dir.resolve("bar.raw");
    Cli.Run r = Cli.run("backup", "--sync", "full", "--progress", "bar", "--target-format", "raw", raw.path, out).ok();

    // Split at newlines only: each redraw starts with a carriage return on the same line.
    List<String> lines = List.of(r.out().split(System.lineSeparator()));
    assertThat(lines).hasSize(2);
    assertThat(lines.get(0)).startsWith("\r[");
    String lastDrawn = lines.get(0).substring(lines.get(0).lastIndexOf('\r') + 1);
    assertThat(lastDrawn).startsWith("[" + "#".repeat(BackupProgress.BAR_WIDTH) + "] 100.0%  24 MiB / 24 MiB")
        .contains("ETA 0:00");
    assertThat(lines.get(1)).matches(String.format(SUMMARY, "drive0", out, "raw"));
  }

  @Test
  void quietPrintsOnlyTheSummary() {
    Path out = dir.resolve("quiet.qcow2");
    Cli.Run r = Cli.run("backup", "--sync", "full", "-q", raw.path, out).ok();
    assertThat(r.out().lines().toList()).hasSize(1).allMatch(l -> l.matches(String.format(SUMMARY, "drive0", out, "qcow2")));
  }

  private static String lastLine(Cli.Run r) {
    List<String> lines = r.out().lines().toList();
    assertThat(lines).as("%s", r).isNotEmpty();
    return lines.get(lines.size() - 1);
  }

  /** The arguments without empty ones (an optional flag left out in a CSV row). */
  private static Object[] args(Object... a) {
    return java.util.Arrays.stream(a).filter(o -> !"".equals(o)).toArray();
  }
}
