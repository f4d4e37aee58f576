package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.blockbackup.testkit.QemuImg;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.StandardOpenOption;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.stream.Collectors;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * {@code create} and {@code info} agree with qemu-img: our info says what qemu-img info says
 * (every field but actual-size, which Java cannot measure the same way), for images either
 * tool made, and our create prints qemu-img create's line.
 */
@Tag("interop")
class CliInfoTest {

  private static final ObjectMapper JSON = new ObjectMapper();

  @TempDir Path dir;

  @BeforeEach
  void bases() throws IOException {
    Files.createDirectories(dir.resolve("sub"));
    QemuImg.img("create", "-f", "raw", dir.resolve("base.raw"), "3M").assertExit(0);
    QemuImg.img("create", "-f", "qcow2", dir.resolve("sub/base.qcow2"), "5M").assertExit(0);
  }

  /** Arguments of create, FILE last; "$" is the test's directory. */
  @ParameterizedTest(name = "create {0}")
  @ValueSource(strings = {
    "-f qcow2 $/x.qcow2 64M",
    "-f qcow2 -o cluster_size=4k $/x.qcow2 1G",
    "-f qcow2 -o cluster_size=512 $/x.qcow2 10M",
    "-f qcow2 -o cluster_size=2M $/x.qcow2 3G",
    "-f qcow2 $/x.qcow2 1000",
    "-f qcow2 -b $/base.raw -F raw $/x.qcow2",
    "-f qcow2 -b base.raw -F raw $/x.qcow2 8M",
    "-f qcow2 -b sub/base.qcow2 -F qcow2 $/x.qcow2",
    "-f qcow2 -o backing_file=base.raw,backing_fmt=raw,cluster_size=16k $/x.qcow2",
    "-f raw $/x.raw 64M",
    "$/x.raw 1000",
  })
  void ourCreateMatchesQemuImgCreateAndInfo(String args) {
    String[] a = args.replace("$", dir.toString()).split(" ");
    Path file = Path.of(Arrays.stream(a).filter(s -> s.contains("/x.")).findFirst().orElseThrow());

    String qemuLine = QemuImg.img(prepend("create", a)).assertExit(0).out();
    String ourLine = Cli.run(prepend("create", a)).ok().out();
    assertThat(ourLine).isEqualTo(qemuLine);

    assertSameInfo(file);
    if (file.toString().endsWith(".qcow2")) {
      QemuImg.assertCheckClean(file);
    }
  }

  /** Arguments of qemu-img create for images QEMU makes and we read. */
  @ParameterizedTest(name = "qemu-img create {0}")
  @ValueSource(strings = {
    "-f qcow2 $/y.qcow2 64M",
    "-f qcow2 -o cluster_size=1M $/y.qcow2 5G",
    "-f qcow2 -o lazy_refcounts=on $/y.qcow2 64M",
    "-f qcow2 -o compat=0.10 $/y.qcow2 64M",
    "-f qcow2 -b sub/base.qcow2 -F qcow2 $/y.qcow2",
    "-f raw $/y.raw 7M",
  })
  void ourInfoReadsQemuImgsImagesAsQemuImgDoes(String args) {
    String[] a = args.replace("$", dir.toString()).split(" ");
    QemuImg.img(prepend("create", a)).assertExit(0);
    assertSameInfo(Path.of(a[a.length - 1].contains("/y.") ? a[a.length - 1] : a[a.length - 2]));
  }

  @Test
  void infoOfAnImageWithDataCountsItsClusters() throws IOException {
    Path img = dir.resolve("d.qcow2");
    QemuImg.img("create", "-f", "qcow2", img, "64M").assertExit(0);
    QemuImg.io("-f", "qcow2", "-c", "write -P 7 0 1M", "-c", "write -P 8 10M 64k", img).assertExit(0);
    JsonNode ours = ourJson(img);
    assertThat(without(ours, "actual-size")).isEqualTo(without(QemuImg.info(img), "actual-size"));
    // Header, L1, refcount table, one refblock, one L2 and 17 data clusters, all in use.
    assertThat(ours.get("actual-size").asLong()).isBetween(21L * 65536, Files.size(img));
  }

  @Test
  void dirtyImageIsReportedAsQemuImgDoes() {
    Path img = dir.resolve("dirty.qcow2");
    QemuImg.img("create", "-f", "qcow2", "-o", "lazy_refcounts=on", img, "16M").assertExit(0);
    // qemu-io dies with the dirty bit set: lazy refcounts were never written back.
    QemuImg.io("-f", "qcow2", "-c", "write -P 1 0 1M", "-c", "abort", img);
    assertThat(QemuImg.info(img).get("dirty-flag").asBoolean()).isTrue();
    assertSameInfo(img);
    assertThat(Cli.run("info", img).ok().out()).contains("\ncleanly shut down: no\n");
  }

  @Test
  void corruptBitIsReportedAsQemuImgDoes() throws IOException {
    Path img = dir.resolve("corrupt.qcow2");
    Cli.run("create", "-f", "qcow2", img, "16M").ok();
    try (java.nio.channels.FileChannel c = java.nio.channels.FileChannel.open(img, java.nio.file.StandardOpenOption.WRITE)) {
      // incompatible_features (header offset 72, big-endian): bit 1 is "corrupt".
      c.write(java.nio.ByteBuffer.allocate(8).putLong(0, 2L), 72);
    }
    assertThat(QemuImg.info(img).get("format-specific").get("data").get("corrupt").asBoolean()).isTrue();
    assertSameInfo(img);
  }

  @Test
  void overlayWhoseBackingFileIsMissingIsDescribedAsQemuImgDoes() throws IOException {
    Path base = dir.resolve("gone.raw");
    Cli.run("create", base, "2M").ok();
    Path img = dir.resolve("orphan.qcow2");
    Cli.run("create", "-f", "qcow2", "-b", "gone.raw", "-F", "raw", img).ok();
    java.nio.file.Files.delete(base);
    assertSameInfo(img);
    // Opening it for I/O still needs the backing file, and says so in one line.
    Cli.Run r = Cli.run("convert", "-O", "raw", img, dir.resolve("flat.raw"));
    assertThat(r.exit()).isEqualTo(1);
    assertThat(r.err().trim()).contains("gone.raw").doesNotContain("\n");
  }

  @ParameterizedTest(name = "qcow2 of {0} bytes, cluster_size 2M")
  @ValueSource(longs = {2305843009213693952L, 2305843009213694464L})
  void qcow2SizeLimitIsQemuImgs(long size) {
    // 2^61 bytes is exactly what QEMU's largest L1 table maps with 2 MiB clusters; a sector more is too much.
    Path q = dir.resolve("q.qcow2");
    Path ours = dir.resolve("ours.qcow2");
    QemuImg.Result qemu = QemuImg.img("create", "-f", "qcow2", "-o", "cluster_size=2M", q, size);
    Cli.Run r = Cli.run("create", "-f", "qcow2", "-o", "cluster_size=2M", ours, size);
    if (qemu.exit() == 0) {
      r.ok();
      assertSameInfo(ours);
    } else {
      assertThat(qemu.err()).contains("too large for file format 'qcow2'");
      assertThat(r.exit()).as("%s", r).isEqualTo(1);
      assertThat(r.err()).contains("invalid image size '" + size + "'").contains("too large for qcow2");
      assertThat(ours).doesNotExist();
    }
  }

  @Test
  void backingNameTooLongForTheHostSaysSo() {
    // qemu-img create -u writes the header without looking the backing file up; we refuse such a name.
    String name = "n".repeat(300);
    Path img = dir.resolve("toolong.qcow2");
    QemuImg.img("create", "-f", "qcow2", "-u", "-b", name, "-F", "raw", img, "1M").assertExit(0);
    assertThat(QemuImg.img("convert", "-O", "raw", img, dir.resolve("q.raw")).err()).contains("File name too long");
    Cli.Run r = Cli.run("convert", "-O", "raw", img, dir.resolve("flat.raw"));
    assertThat(r.exit()).as("%s", r).isEqualTo(1);
    assertThat(r.err()).endsWith("cannot open backing file '" + dir.resolve(name) + "': File name too long\n");
    assertThat(dir.resolve("flat.raw")).doesNotExist();
    Cli.Run c = Cli.run("create", "-f", "qcow2", "-b", name, "-F", "raw", dir.resolve("again.qcow2"), "1M");
    assertThat(c.err()).contains("File name too long");
    assertThat(dir.resolve("again.qcow2")).doesNotExist();
  }

  @Test
  void humanOutputHasQemuImgsLines() {
    Path img = dir.resolve("h.qcow2");
    Cli.run("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", img).ok();
    String ours = Cli.run("info", img).ok().out();
    assertThat(ours).startsWith("image: " + img + "\nfile format: qcow2\nvirtual size: 3 MiB (3145728 bytes)\ndisk size: ");
    assertThat(ours).contains("\nbacking file: base.raw (actual path: " + dir + "/base.raw)\nbacking file format: raw\n");
  }

  @ParameterizedTest(name = "snapshots of a compat={0} image")
  @ValueSource(strings = {"1.1", "0.10"})
  void internalSnapshotsAreListedAsQemuImgListsThem(String compat) {
    Path img = dir.resolve("snap.qcow2");
    QemuImg.img("create", "-f", "qcow2", "-o", "compat=" + compat, img, "64M").assertExit(0);
    QemuImg.img("snapshot", "-c", "first", img).assertExit(0);
    QemuImg.io("-f", "qcow2", "-c", "write -P 3 0 1M", img).assertExit(0);
    QemuImg.img("snapshot", "-c", "second one", img).assertExit(0);
    QemuImg.img("snapshot", "-c", "\u00e9t\u00e9-and-a-name-longer-than-its-column", img).assertExit(0);
    assertSameInfo(img);
    JsonNode snapshots = ourJson(img).get("snapshots");
    assertThat(snapshots).hasSize(3);
    assertThat(snapshots.get(1).get("name").asText()).isEqualTo("second one");
    assertThat(snapshots.get(1).get("id").asText()).isEqualTo("2");
    assertThat(Cli.run("info", img).ok().out()).contains("\nSnapshot list:\nID        TAG               VM SIZE"
        + "                DATE     VM CLOCK     ICOUNT\n1         first     ");
  }

  @Test
  void snapshotFieldsQemuImgSnapshotLeavesAtZeroAreShownAsQemuImgShowsThem() throws IOException {
    Path img = dir.resolve("vm.qcow2");
    QemuImg.img("create", "-f", "qcow2", img, "16M").assertExit(0);
    QemuImg.img("snapshot", "-c", "vm", img).assertExit(0);
    // Give the entry what a savevm would: VM state, a running clock; and no instruction count.
    try (FileChannel c = FileChannel.open(img, StandardOpenOption.READ, StandardOpenOption.WRITE)) {
      ByteBuffer h = ByteBuffer.allocate(8);
      c.read(h, 64);
      long entry = h.getLong(0);
      ByteBuffer e = ByteBuffer.allocate(64);
      c.read(e, entry);
      assertThat(e.getInt(36)).as("extra data of qemu-img's entry").isGreaterThanOrEqualTo(24);
      e.putInt(16, 1_700_000_000).putInt(20, 123_456_789).putLong(24, 3_723_456_789_012L).putInt(32, 5 << 20)
          .putLong(40, 5L << 20).putLong(56, -1L);
      c.write(e.flip(), entry);
    }
    assertSameInfo(img);
    JsonNode sn = ourJson(img).get("snapshots").get(0);
    assertThat(sn.has("icount")).isFalse();
    assertThat(sn.get("vm-clock-sec").asLong()).isEqualTo(3723);
    assertThat(sn.get("vm-state-size").asLong()).isEqualTo(5L << 20);
    assertThat(Cli.run("info", img).ok().out()).contains("   5 MiB ").contains(" 01:02:03.456");
  }

  @Test
  void snapshotTableBeyondTheFileIsOneLineError() throws IOException {
    Path img = dir.resolve("hostile.qcow2");
    QemuImg.img("create", "-f", "qcow2", img, "16M").assertExit(0);
    QemuImg.img("snapshot", "-c", "one", img).assertExit(0);
    try (FileChannel c = FileChannel.open(img, StandardOpenOption.WRITE)) {
      c.write(ByteBuffer.allocate(4).putInt(0, 65536), 60); // nb_snapshots
    }
    Cli.Run r = Cli.run("info", img);
    assertThat(r.exit()).as("%s", r).isEqualTo(1);
    assertThat(r.err()).startsWith("blockbackup: cannot open").contains("beyond the end of the file")
        .doesNotContain("Exception");
    assertThat(r.err().lines()).hasSize(1);
  }

  private void assertSameInfo(Path file) {
    JsonNode qemu = QemuImg.info(file);
    JsonNode ours = ourJson(file);
    assertThat(without(ours, "actual-size")).isEqualTo(without(qemu, "actual-size"));
    assertThat(ours.get("actual-size").asLong()).isPositive().isLessThanOrEqualTo(fileSize(file));

    // Same human lines, but for the disk size line (st_blocks, which Java cannot read).
    String qemuHuman = withoutDiskSize(QemuImg.img("info", file).assertExit(0).out());
    String ourHuman = withoutDiskSize(Cli.run("info", file).ok().out());
    assertThat(ourHuman).isEqualTo(qemuHuman);
  }

  private static JsonNode ourJson(Path file) {
    Cli.Run r = Cli.run("info", "--output=json", file).ok();
    try {
      return JSON.readTree(r.out());
    } catch (IOException e) {
      throw new AssertionError("not JSON: " + r, e);
    }
  }

  private static JsonNode without(JsonNode j, String field) {
    ObjectNode copy = j.deepCopy();
    copy.remove(field);
    return copy;
  }

  private static String withoutDiskSize(String human) {
    return human.lines().filter(l -> !l.startsWith("disk size: ")).collect(Collectors.joining("\n"));
  }

  private static long fileSize(Path p) {
    try {
      return Files.size(p);
    } catch (IOException e) {
      throw new AssertionError(e);
    }
  }

  private static Object[] prepend(String first, String[] rest) {
    List<Object> l = new ArrayList<>();
    l.add(first);
    l.addAll(Arrays.asList(rest));
    return l.toArray();
  }
}
