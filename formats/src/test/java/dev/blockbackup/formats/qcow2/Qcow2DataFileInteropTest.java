package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;

import com.fasterxml.jackson.databind.JsonNode;
import dev.blockbackup.formats.WriteFlag;
import dev.blockbackup.testkit.QemuImg;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * External data files against QEMU's tools: images qemu-img made with data_file (raw or not) open
 * here and read what qemu-io wrote; our writes land where QEMU looks for them, qemu-img check stays
 * clean and the raw data file alone is the disk; images we make are accepted by qemu-img and read
 * by qemu-io.
 */
@Tag("interop")
class Qcow2DataFileInteropTest {

  private static final int K = 1024;
  private static final int M = 1024 * 1024;
  private static final int SIZE = 8 * M;

  @TempDir Path dir;

  /**
   * Runs a QEMU tool in the test's directory: QEMU 7.2 resolves a relative data file name against
   * its working directory, we against the image's; here the two are the same.
   */
  private QemuImg.Result tool(String tool, Object... args) throws IOException, InterruptedException {
    List<String> cmd = new ArrayList<>();
    cmd.add(tool);
    for (Object a : args) {
      cmd.add(String.valueOf(a));
    }
    Process p = new ProcessBuilder(cmd).directory(dir.toFile()).redirectErrorStream(false).start();
    p.getOutputStream().close();
    byte[] out = p.getInputStream().readAllBytes();
    byte[] err = p.getErrorStream().readAllBytes();
    assertThat(p.waitFor(300, TimeUnit.SECONDS)).isTrue();
    return new QemuImg.Result(cmd, p.exitValue(), new String(out), new String(err));
  }

  /** Our block status says, cluster by cluster, what {@code qemu-img map} says of data and zeros. */
  private static void assertSameStatus(Qcow2Image img, JsonNode map) throws IOException {
    int cs = img.alignment();
    boolean[][] theirs = new boolean[SIZE / cs][];
    for (JsonNode e : map) {
      for (long c = e.get("start").asLong() / cs; c < (e.get("start").asLong() + e.get("length").asLong()) / cs; c++) {
        theirs[(int) c] = new boolean[] {e.get("data").asBoolean(), e.get("zero").asBoolean()};
      }
    }
    boolean[][] ours = new boolean[SIZE / cs][];
    for (dev.blockbackup.formats.Extent x : img.blockStatus(0, SIZE)) {
      for (long c = x.offset() / cs; c < x.end() / cs; c++) {
        ours[(int) c] = new boolean[] {x.data(), x.zero()};
      }
    }
    assertThat(ours).isDeepEqualTo(theirs);
  }

  private void assertCheckClean(Path image) throws IOException, InterruptedException {
    QemuImg.Result r = tool("qemu-img", "check", "--output=json", image).assertExit(0);
    JsonNode j = r.json();
    assertThat(j.path("corruptions").asLong(0) + j.path("leaks").asLong(0) + j.path("check-errors").asLong(0))
        .as("qemu-img check of %s: %s", image, r.out()).isZero();
  }

  /** Random writes, zeroes and discards through our driver, applied to {@code model} too. */
  private static void scribble(Qcow2Image img, byte[] model, long seed) throws IOException {
    SplittableRandom r = new SplittableRandom(seed);
    for (int i = 0; i < 40; i++) {
      int len = 1 + r.nextInt(200 * K);
      int off = r.nextInt(SIZE - len);
      switch (r.nextInt(4)) {
        case 0, 1 -> {
          byte[] b = new byte[len];
          r.nextBytes(b);
          img.write(off, ByteBuffer.wrap(b));
          System.arraycopy(b, 0, model, off, len);
        }
        case 2 -> {
          img.writeZeroes(off, len, r.nextBoolean() ? WriteFlag.MAY_UNMAP : WriteFlag.FUA);
          Arrays.fill(model, off, off + len, (byte) 0);
        }
        default -> {
          img.discard(off, len);
          // whole clusters only read as zero afterwards
          long first = Qcow2Header.ceilDiv(off, 64 * K) * 64 * K;
          long end = (long) (off + len) / (64 * K) * (64 * K);
          if (first < end) {
            Arrays.fill(model, (int) first, (int) end, (byte) 0);
          }
        }
      }
    }
  }

  private static byte[] readAll(Qcow2Image img) throws IOException {
    ByteBuffer b = ByteBuffer.allocate((int) img.size());
    img.read(0, b);
    return b.array();
  }

  @Test
  void qemuImgsRawDataFileImageReadsAndTakesOurWrites() throws Exception {
    Path meta = dir.resolve("meta.qcow2");
    Path raw = dir.resolve("disk.raw");
    tool("qemu-img", "create", "-f", "qcow2", "-o", "data_file=disk.raw,data_file_raw=on", meta, SIZE).assertExit(0);
    tool("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", "-c", "write -P 0x22 1M 100k",
        "-c", "write -z 1M 64k", "-c", "discard 3M 128k", "-c", "write -P 0x33 7M 4k", meta).assertExit(0);

    JsonNode map = tool("qemu-img", "map", "--output=json", "-f", "qcow2", meta).assertExit(0).json();
    byte[] model;
    try (Qcow2Image img = Qcow2Image.open(meta, false)) {
      assertSameStatus(img, map);
      model = readAll(img);
      assertThat(model).isEqualTo(Files.readAllBytes(raw));
      assertThat(model[0]).isEqualTo((byte) 0x11);
      assertThat(model[M + 64 * K]).isEqualTo((byte) 0x22);
      assertThat(model[M]).isZero();
      assertThat(model[7 * M + 4095]).isEqualTo((byte) 0x33);
      scribble(img, model, 11);
      assertThat(readAll(img)).isEqualTo(model);
    }
    assertThat(Files.readAllBytes(raw)).isEqualTo(model);
    Path expected = dir.resolve("expected.raw");
    Files.write(expected, model);
    assertCheckClean(meta);
    tool("qemu-img", "compare", "-f", "raw", "-F", "raw", raw, expected).assertExit(0);
    tool("qemu-img", "compare", "-f", "qcow2", "-F", "raw", meta, expected).assertExit(0);
    // the raw bit stays, so QEMU still treats the data file as the disk's raw image
    JsonNode spec = tool("qemu-img", "info", "--output=json", meta).assertExit(0).json().get("format-specific").get("data");
    assertThat(spec.get("data-file-raw").asBoolean()).isTrue();
  }

  @Test
  void ourRawDataFileImageOverAnExistingDiskIsQemus() throws Exception {
    Path raw = dir.resolve("disk.raw");
    byte[] model = new byte[SIZE];
    new SplittableRandom(5).nextBytes(model);
    Files.write(raw, model);
    Path meta = dir.resolve("meta.qcow2");
    Qcow2Image.create(meta, Qcow2CreateOptions.of(SIZE).withDataFile("disk.raw", true)).close();
    assertThat(Files.readAllBytes(raw)).isEqualTo(model);

    JsonNode info = tool("qemu-img", "info", "--output=json", meta).assertExit(0).json();
    assertThat(info.get("format-specific").get("data").get("data-file").asText()).isEqualTo("disk.raw");
    assertThat(info.get("format-specific").get("data").get("data-file-raw").asBoolean()).isTrue();
    assertCheckClean(meta);
    tool("qemu-img", "compare", "-f", "qcow2", "-F", "raw", meta, raw).assertExit(0);

    try (Qcow2Image img = Qcow2Image.create(meta, Qcow2CreateOptions.of(SIZE).withDataFile("disk.raw", true))) {
      img.write(2 * M, ByteBuffer.wrap(fill(64 * K, 0x44)));
    }
    tool("qemu-io", "-f", "qcow2", "-c", "read -P 0x44 2M 64k", meta).assertExit(0);
    tool("qemu-io", "-f", "qcow2", "-c", "write -P 0x55 5M 64k", meta).assertExit(0);
    try (Qcow2Image img = Qcow2Image.open(meta, true)) {
      ByteBuffer b = ByteBuffer.allocate(64 * K);
      img.read(5 * M, b);
      assertThat(b.array()).isEqualTo(fill(64 * K, 0x55));
    }
    assertCheckClean(meta);
    tool("qemu-img", "compare", "-f", "qcow2", "-F", "raw", meta, raw).assertExit(0);
  }

  @Test
  void aNonRawDataFileWorksBothWays() throws Exception {
    Path meta = dir.resolve("q.qcow2");
    tool("qemu-img", "create", "-f", "qcow2", "-o", "data_file=q.data", meta, SIZE).assertExit(0);
    tool("qemu-io", "-f", "qcow2", "-c", "write -P 0x66 64k 192k", "-c", "write -z 128k 64k", meta).assertExit(0);
    byte[] model;
    try (Qcow2Image img = Qcow2Image.open(meta, false)) {
      assertThat(img.info().dataFile()).isEqualTo("q.data");
      assertThat(img.info().dataFileRaw()).isFalse();
      model = readAll(img);
      assertThat(model[64 * K]).isEqualTo((byte) 0x66);
      assertThat(model[128 * K]).isZero();
      assertThat(model[192 * K]).isEqualTo((byte) 0x66);
      scribble(img, model, 12);
    }
    Path expected = dir.resolve("expected.raw");
    Files.write(expected, model);
    assertCheckClean(meta);
    tool("qemu-img", "compare", "-f", "qcow2", "-F", "raw", meta, expected).assertExit(0);

    Path ours = dir.resolve("ours.qcow2");
    try (Qcow2Image img = Qcow2Image.create(ours, Qcow2CreateOptions.of(SIZE).withDataFile("ours.data", false))) {
      img.write(3 * M, ByteBuffer.wrap(fill(100 * K, 0x77)));
    }
    assertCheckClean(ours);
    tool("qemu-io", "-f", "qcow2", "-c", "read -P 0x77 3M 100k", "-c", "read -P 0 0 3M", ours).assertExit(0);
    JsonNode spec = tool("qemu-img", "info", "--output=json", ours).assertExit(0).json()
        .get("format-specific").get("data");
    assertThat(spec.get("data-file").asText()).isEqualTo("ours.data");
    assertThat(spec.get("data-file-raw").asBoolean()).isFalse();
  }

  private static byte[] fill(int len, int value) {
    byte[] b = new byte[len];
    Arrays.fill(b, (byte) value);
    return b;
  }
}
