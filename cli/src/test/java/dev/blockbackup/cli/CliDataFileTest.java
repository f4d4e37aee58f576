package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.blockbackup.testkit.QemuImg;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code create -o data_file=...,data_file_raw=...} and what {@code info} shows of such an image:
 * qemu-img's line and fields, its errors, checked before anything is created, and the raw disk's
 * bytes never written.
 */
class CliDataFileTest {

  private static final ObjectMapper JSON = new ObjectMapper();
  private static final int SIZE = 4 * 1024 * 1024;

  @TempDir Path dir;

  private byte[] disk(Path raw) throws IOException {
    byte[] b = new byte[SIZE];
    new SplittableRandom(3).nextBytes(b);
    Files.write(raw, b);
    return b;
  }

  @Test
  void createOverAnExistingRawDiskPrintsQemuImgsLineAndKeepsTheDisk() throws IOException {
    Path raw = dir.resolve("disk.raw");
    byte[] before = disk(raw);
    Path meta = dir.resolve("meta.qcow2");
    String out = Cli.run("create", "-f", "qcow2", "-o", "data_file=disk.raw,data_file_raw=on", meta, "4M").ok().out();
    assertThat(out).isEqualTo("Formatting '" + meta + "', fmt=qcow2 cluster_size=65536 extended_l2=off"
        + " compression_type=zlib size=4194304 data_file=disk.raw data_file_raw=on lazy_refcounts=off"
        + " refcount_bits=16\n");
    assertThat(Files.readAllBytes(raw)).isEqualTo(before);
    String human = Cli.run("info", meta).ok().out();
    assertThat(human).contains("\n    refcount bits: 16\n    data file: disk.raw\n    data file raw: true\n");
    JsonNode spec = JSON.readTree(Cli.run("info", "--output=json", meta).ok().out()).get("format-specific").get("data");
    assertThat(spec.get("data-file").asText()).isEqualTo("disk.raw");
    assertThat(spec.get("data-file-raw").asBoolean()).isTrue();
  }

  @Test
  @Tag("interop")
  void infoOfADataFileImageIsQemuImgs() throws IOException {
    Path raw = dir.resolve("disk.raw");
    disk(raw);
    Path ours = dir.resolve("ours.qcow2");
    // absolute names: QEMU 7.2 looks a relative data file name up from its working directory
    Cli.run("create", "-f", "qcow2", "-o", "data_file=" + raw + ",data_file_raw=on", ours, "4M").ok();
    assertSameInfo(ours);
    QemuImg.assertCheckClean(ours);
    QemuImg.assertIdentical(ours, "qcow2", raw, "raw");

    Path theirs = dir.resolve("theirs.qcow2");
    QemuImg.img("create", "-f", "qcow2", "-o", "data_file=" + dir.resolve("d2.bin"), theirs, "4M").assertExit(0);
    assertSameInfo(theirs);
  }

  private static void assertSameInfo(Path image) throws IOException {
    ObjectNode ours = (ObjectNode) JSON.readTree(Cli.run("info", "--output=json", image).ok().out());
    ObjectNode theirs = (ObjectNode) QemuImg.info(image);
    ours.remove("actual-size");
    theirs.remove("actual-size");
    assertThat(ours).isEqualTo(theirs);
  }

  @Test
  void mistakesAreRefusedWithQemuImgsMessagesBeforeAnythingIsCreated() throws IOException {
    Path meta = dir.resolve("m.qcow2");
    assertError(new Object[] {"create", "-f", "qcow2", "-o", "data_file_raw=on", meta, "1M"},
        "data-file-raw requires data-file");
    assertError(new Object[] {"create", "-f", "qcow2", "-o", "data_file=d.raw,data_file_raw=maybe", meta, "1M"},
        "Parameter 'data_file_raw' expects 'on' or 'off'");
    Files.write(dir.resolve("base.raw"), new byte[4096]);
    assertError(new Object[] {"create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "-o",
        "data_file=d.raw,data_file_raw=on", meta, "1M"}, "Backing file and data-file-raw cannot be used at the same time");
    assertError(new Object[] {"create", "-f", "qcow2", "-o", "data_file=d.raw,data_file_raw=on", meta},
        "image size missing");
    assertError(new Object[] {"create", "-f", "qcow2", "-o", "data_file=nodir/d.raw", meta, "1M"},
        "Could not create 'nodir/d.raw': No such file or directory");
    assertError(new Object[] {"create", "-f", "qcow2", "-o", "data_file=m.qcow2", meta, "1M"},
        "cannot be its own data file");
    assertThat(dir.resolve("d.raw")).doesNotExist();
    assertThat(meta).doesNotExist();
  }

  private static void assertError(Object[] args, String message) {
    Cli.Run r = Cli.run(args);
    assertThat(r.exit()).as("%s", r).isEqualTo(1);
    assertThat(r.err()).as("%s", r).contains(message).doesNotContain("\tat ");
  }
}
