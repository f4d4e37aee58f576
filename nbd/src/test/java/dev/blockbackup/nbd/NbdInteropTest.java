package dev.blockbackup.nbd;

import static org.assertj.core.api.Assertions.assertThat;

import com.fasterxml.jackson.databind.JsonNode;
import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.QemuImg;
import dev.blockbackup.testkit.QemuImg.Result;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Our server judged by the real clients: qemu-img, qemu-io (QEMU's NBD client), nbdinfo and
 * nbdcopy (libnbd), over a Unix socket and over TCP.
 */
@Tag("interop")
class NbdInteropTest {

  static final long SIZE = 16L << 20;

  @TempDir Path dir;
  Path sock;
  Path image;
  Qcow2Image disk;
  NbdServer server;
  byte[] content;

  @BeforeEach
  void serve() throws Exception {
    // a short path: Unix socket paths are limited to 107 bytes
    sock = Files.createTempDirectory(Path.of("/tmp"), "bbnbd").resolve("s");
    // qcow2: the clusters never written are holes, which block status must show (NbdRawHolesTest
    // does the same for a raw file's holes)
    image = dir.resolve("disk.qcow2");
    disk = Qcow2Image.create(image, Qcow2CreateOptions.of(SIZE), CacheMode.UNSAFE);
    content = new byte[(int) SIZE];
    SplittableRandom r = new SplittableRandom(5);
    // data in the first 4 MiB and at 8 MiB; the rest never written (holes)
    byte[] a = new byte[4 << 20];
    r.nextBytes(a);
    disk.write(0, ByteBuffer.wrap(a));
    System.arraycopy(a, 0, content, 0, a.length);
    byte[] b = new byte[1 << 20];
    r.nextBytes(b);
    disk.write(8L << 20, ByteBuffer.wrap(b));
    System.arraycopy(b, 0, content, 8 << 20, b.length);
    server = NbdServer.builder()
        .export(NbdExport.of("disk", disk).withDescription("a test disk"))
        .export(NbdExport.of("ro", disk).withReadOnly(true))
        .unixSocket(sock)
        .tcp("127.0.0.1", 0)
        .build();
    server.start();
  }

  @AfterEach
  void stop() throws Exception {
    server.close();
    disk.close();
    Files.deleteIfExists(sock);
    Files.deleteIfExists(sock.getParent());
  }

  String unix(String export) {
    return "nbd+unix:///" + export + "?socket=" + sock;
  }

  String tcp(String export) {
    return "nbd://127.0.0.1:" + server.tcpAddress().getPort() + "/" + export;
  }

  byte[] readDisk() throws Exception {
    ByteBuffer b = ByteBuffer.allocate((int) SIZE);
    disk.read(0, b);
    return b.array();
  }

  @Test
  void qemuImgInfoSeesTheSizeOverUnixAndTcp() {
    for (String uri : new String[] {unix("disk"), tcp("disk")}) {
      JsonNode j = QemuImg.img("info", "--output=json", uri).assertExit(0).json();
      assertThat(j.get("virtual-size").asLong()).as(uri).isEqualTo(SIZE);
      assertThat(j.get("format").asText()).isEqualTo("raw");
    }
  }

  @Test
  void qemuImgConvertAndCompareReadTheExportExactly() throws Exception {
    Path out = dir.resolve("out.raw");
    QemuImg.img("convert", "-f", "raw", "-O", "raw", unix("disk"), out).assertExit(0);
    assertThat(Files.readAllBytes(out)).isEqualTo(content);
    // against a raw copy, not the qcow2 file: our driver keeps metadata in memory until a flush
    Path expected = dir.resolve("expected.raw");
    Files.write(expected, content);
    QemuImg.img("compare", "-f", "raw", "-F", "raw", tcp("disk"), expected).assertExit(0);
  }

  @Test
  void qemuImgMapReportsDataAndHolesFromBlockStatus() {
    JsonNode j = QemuImg.img("map", "--output=json", "-f", "raw", unix("disk")).assertExit(0).json();
    long data = 0;
    long zero = 0;
    for (JsonNode e : j) {
      if (e.get("data").asBoolean()) {
        data += e.get("length").asLong();
      }
      if (e.get("zero").asBoolean()) {
        zero += e.get("length").asLong();
      }
    }
    assertThat(data).isEqualTo(5L << 20);
    assertThat(zero).isEqualTo(SIZE - (5L << 20));
  }

  @Test
  void qemuIoWritesReadsZeroesDiscardsAndFlushes() throws Exception {
    QemuImg.io("-f", "raw", "-c", "write -P 0xab 1M 64k", "-c", "read -P 0xab 1M 64k",
        "-c", "write -z 2M 128k", "-c", "read -P 0 2M 128k", "-c", "write -P 0x11 12M 4k",
        "-c", "discard 12M 4k", "-c", "flush", "-c", "write -f -P 0x33 100k 512", unix("disk")).assertExit(0);
    byte[] now = readDisk();
    Arrays.fill(content, 1 << 20, (1 << 20) + (64 << 10), (byte) 0xab);
    Arrays.fill(content, 2 << 20, (2 << 20) + (128 << 10), (byte) 0);
    Arrays.fill(content, 100 << 10, (100 << 10) + 512, (byte) 0x33);
    // a discarded range of a raw file reads as before or as zero (BlockDevice.discard)
    for (int i = 12 << 20; i < (12 << 20) + 4096; i++) {
      assertThat(now[i]).isIn((byte) 0, (byte) 0x11);
      content[i] = now[i];
    }
    assertThat(now).isEqualTo(content);
  }

  @Test
  void qemuIoRefusesToOpenTheReadOnlyExportForWriting() {
    // qemu-io sees NBD_FLAG_READ_ONLY and refuses a writable open; the raw-socket tests check
    // that a write sent anyway gets EPERM
    Result r = QemuImg.io("-f", "raw", "-c", "write -P 1 0 4k", unix("ro"));
    assertThat(r.err()).contains("Permission denied");
    QemuImg.io("-r", "-f", "raw", "-c", "read -P 0 12M 4k", unix("ro")).assertExit(0);
  }

  @Test
  void nbdinfoJsonShowsWhatWeNegotiate() {
    JsonNode j = QemuImg.run("nbdinfo", "--json", unix("disk")).assertExit(0).json();
    JsonNode e = j.get("exports").get(0);
    assertThat(j.get("protocol").asText()).isEqualTo("newstyle-fixed");
    assertThat(j.get("TLS").asBoolean()).isFalse();
    assertThat(e.get("export-name").asText()).isEqualTo("disk");
    assertThat(e.get("description").asText()).isEqualTo("a test disk");
    assertThat(e.get("export-size").asLong()).isEqualTo(SIZE);
    assertThat(e.get("is_read_only").asBoolean()).isFalse();
    assertThat(e.get("can_multi_conn").asBoolean()).isTrue();
    assertThat(e.get("can_trim").asBoolean()).isTrue();
    assertThat(e.get("can_zero").asBoolean()).isTrue();
    assertThat(e.get("can_fast_zero").asBoolean()).isTrue();
    assertThat(e.get("can_flush").asBoolean()).isTrue();
    assertThat(e.get("can_fua").asBoolean()).isTrue();
    assertThat(e.get("can_cache").asBoolean()).isTrue();
    assertThat(e.get("can_df").asBoolean()).isTrue();
    assertThat(e.get("block_size_minimum").asLong()).isEqualTo(1);
    assertThat(e.get("block_size_preferred").asLong()).isEqualTo(4096);
    assertThat(e.get("block_size_maximum").asLong()).isEqualTo(32 << 20);
    assertThat(e.get("contexts").toString()).contains("base:allocation");
    JsonNode ro = QemuImg.run("nbdinfo", "--json", tcp("ro")).assertExit(0).json().get("exports").get(0);
    assertThat(ro.get("is_read_only").asBoolean()).isTrue();
    assertThat(ro.get("can_trim").asBoolean()).isFalse();
  }

  @Test
  void nbdinfoListsTheExports() {
    String out = QemuImg.run("nbdinfo", "--list", "--json", unix("")).assertExit(0).out();
    assertThat(out).contains("\"disk\"", "\"ro\"");
  }

  @Test
  void nbdinfoOfAnUnknownExportWithTheLongestNameGetsACleanError() {
    // the name fills the spec's 4096 bytes; the error that quotes it must stay within them too
    Result r = QemuImg.run("nbdinfo", unix("a".repeat(4096)));
    assertThat(r.exit()).isNotZero();
    // libnbd names the error of NBD_REP_ERR_UNKNOWN (ENOENT) rather than printing our message
    assertThat(r.err()).contains("server replied with error to opt_go request: No such file or directory");
  }

  @Test
  void nbdinfoMapShowsDataAndHoles() {
    String out = QemuImg.run("nbdinfo", "--map", unix("disk")).assertExit(0).out();
    assertThat(out.lines().map(l -> String.join(" ", l.trim().split("\\s+"))).toList()).containsExactly(
        "0 4194304 0 data",
        "4194304 4194304 3 hole,zero",
        "8388608 1048576 0 data",
        "9437184 7340032 3 hole,zero");
  }

  @Test
  void nbdcopyCopiesBothWays() throws Exception {
    Path out = dir.resolve("copy.raw");
    QemuImg.run("nbdcopy", unix("disk"), out).assertExit(0);
    assertThat(Files.readAllBytes(out)).isEqualTo(content);
    byte[] other = new byte[(int) SIZE];
    new SplittableRandom(9).nextBytes(other);
    Arrays.fill(other, 3 << 20, 6 << 20, (byte) 0);
    Path in = dir.resolve("in.raw");
    Files.write(in, other);
    QemuImg.run("nbdcopy", in, tcp("disk")).assertExit(0);
    assertThat(readDisk()).isEqualTo(other);
  }

  @Test
  void aQcow2MadeByQemuImgReadsBackAsQemuImgConvertsIt() throws Exception {
    Path q = dir.resolve("q.qcow2");
    QemuImg.img("create", "-f", "qcow2", q, "8M").assertExit(0);
    QemuImg.io("-f", "qcow2", "-c", "write -P 0x5a 0 1M", "-c", "write -z 2M 1M", "-c", "write -P 0x77 5M 300k", q)
        .assertExit(0);
    Path expected = dir.resolve("q.raw");
    QemuImg.img("convert", "-f", "qcow2", "-O", "raw", q, expected).assertExit(0);
    Path sock2 = sock.resolveSibling("q");
    try (BlockDevice img = Qcow2Image.open(q, true);
        NbdServer s = NbdServer.builder().export(NbdExport.of("", img)).unixSocket(sock2).build()) {
      s.start();
      Path got = dir.resolve("got.raw");
      QemuImg.run("nbdcopy", "nbd+unix:///?socket=" + sock2, got).assertExit(0);
      assertThat(Files.readAllBytes(got)).isEqualTo(Files.readAllBytes(expected));
      QemuImg.img("compare", "-f", "raw", "-F", "raw", "nbd+unix:///?socket=" + sock2, expected).assertExit(0);
    }
  }
}
