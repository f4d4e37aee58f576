package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.testkit.QemuImg;
import dev.blockbackup.testkit.QemuImg.MapEntry;
import dev.blockbackup.testkit.QemuImg.NbdExtent;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * {@code blockbackup serve} of sparse images judged by libnbd's and QEMU's tools: the metadata
 * contexts agree with {@code qemu-img map} and with qemu-nbd serving the same file, and data goes
 * both ways through qemu-io, qemu-img convert and nbdcopy with four connections.
 */
@Tag("interop")
class ServeInteropTest {

  static final long SIZE = 64L << 20;
  static final long M = 1 << 20;

  @TempDir Path dir;

  /** A qcow2 over a backing file, with a bitmap that saw some of the overlay's writes. */
  private Path overlayWithBitmap() {
    Path base = dir.resolve("base.qcow2");
    Path top = dir.resolve("top.qcow2");
    QemuImg.img("create", "-f", "qcow2", base, SIZE).assertExit(0);
    QemuImg.io("-c", "write -P 1 0 1M", "-c", "write -P 2 8M 64k", base).assertExit(0);
    QemuImg.img("create", "-f", "qcow2", "-b", base.getFileName(), "-F", "qcow2", top).assertExit(0);
    QemuImg.io("-c", "write -P 5 40M 64k", top).assertExit(0); // before the bitmap: not dirty in it
    QemuImg.img("bitmap", "--add", top, "b").assertExit(0);
    QemuImg.io("-c", "write -P 3 512k 1M", "-c", "write -z 16M 1M", "-c", "write -P 4 32M 64k", top).assertExit(0);
    return top;
  }

  /** A sparse raw file: data at 0 and at 40 MiB, holes elsewhere. */
  private Path sparseRaw() throws IOException {
    Path raw = dir.resolve("sparse.raw");
    try (RandomAccessFile f = new RandomAccessFile(raw.toFile(), "rw")) {
      f.setLength(SIZE);
      byte[] data = new byte[(int) M];
      java.util.Arrays.fill(data, (byte) 7);
      f.write(data);
      f.seek(40 * M);
      f.write(data, 0, 65536);
    }
    return raw;
  }

  @Test
  void aQcow2OverABackingFileMapsAsQemuImgAndQemuNbdMapIt() throws Exception {
    Path top = overlayWithBitmap();
    Path sock = dir.resolve("s.sock");
    List<List<NbdExtent>> ours = new ArrayList<>();
    String[] contexts = {"base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b"};
    try (ServeProcess serve = ServeProcess.start(top + ",ro", "-A", "-B", "b", "--nbd", "unix:" + sock)) {
      String uri = serve.line();
      assertThat(uri).isEqualTo("nbd+unix:///top?socket=" + sock);
      assertThat(QemuImg.run("nbdinfo", "--list", "nbd+unix:///?socket=" + sock).assertExit(0).out())
          .contains("export=", "top");
      String json = QemuImg.run("nbdinfo", "--json", uri).assertExit(0).out();
      assertThat(json).contains("\"export-size\": " + SIZE, "\"is_read_only\": true", "\"base:allocation\"",
          "\"qemu:allocation-depth\"", "\"qemu:dirty-bitmap:b\"");
      for (String c : contexts) {
        ours.add(QemuImg.nbdMap(c, uri));
      }
      assertThat(serve.stop()).isZero();
    }
    for (int i = 0; i < contexts.length; i++) {
      List<NbdExtent> qemu = QemuImg.nbdMap(contexts[i], "[", "qemu-nbd", "-r", "-f", "qcow2", "-A", "-B", "b",
          top.toString(), "]");
      assertThat(ours.get(i)).as("%s as qemu-nbd serves it", contexts[i]).isEqualTo(qemu);
    }
    List<MapEntry> map = QemuImg.map(top, "qcow2");
    assertThat(ours.get(0)).as("base:allocation against qemu-img map")
        .isEqualTo(fromMap(map, e -> (e.data() ? 0 : 1) | (e.zero() ? 2 : 0)));
    assertThat(ours.get(1)).as("allocation depth against qemu-img map")
        .isEqualTo(fromMap(map, e -> e.present() ? e.depth() + 1 : 0));
    // the bitmap saw the three writes after it was made, at its 64 KiB granularity
    assertThat(ours.get(2)).containsExactly(new NbdExtent(0, 512 * 1024, 0), new NbdExtent(512 * 1024, M, 1),
        new NbdExtent(512 * 1024 + M, 16 * M - 512 * 1024 - M, 0), new NbdExtent(16 * M, M, 1),
        new NbdExtent(17 * M, 15 * M, 0), new NbdExtent(32 * M, 65536, 1),
        new NbdExtent(32 * M + 65536, SIZE - 32 * M - 65536, 0));
    QemuImg.assertCheckClean(top);
  }

  @Test
  void aSparseRawMapsAsQemuImgAndQemuNbdMapIt() throws Exception {
    Path raw = sparseRaw();
    Path sock = dir.resolve("s.sock");
    List<NbdExtent> alloc;
    List<NbdExtent> depth;
    try (ServeProcess serve = ServeProcess.start(raw + ",ro", "-A", "--nbd", "unix:" + sock)) {
      String uri = serve.line();
      alloc = QemuImg.nbdMap("base:allocation", uri);
      depth = QemuImg.nbdMap("qemu:allocation-depth", uri);
      assertThat(serve.stop()).isZero();
    }
    String[] qemuNbd = {"[", "qemu-nbd", "-r", "-f", "raw", "-A", raw.toString(), "]"};
    assertThat(alloc).isEqualTo(QemuImg.nbdMap("base:allocation", qemuNbd));
    assertThat(depth).isEqualTo(QemuImg.nbdMap("qemu:allocation-depth", qemuNbd));
    assertThat(alloc).isEqualTo(fromMap(QemuImg.map(raw, "raw"), e -> (e.data() ? 0 : 1) | (e.zero() ? 2 : 0)));
    assertThat(alloc).as("the holes are reported").hasSizeGreaterThan(1);
  }

  @ParameterizedTest
  @ValueSource(strings = {"qcow2", "raw"})
  void dataGoesBothWaysThroughQemuIoConvertAndNbdcopyWithFourConnections(String format) throws Exception {
    Path image = format.equals("raw") ? sparseRaw() : overlayWithBitmap();
    Path sock = dir.resolve("s.sock");
    Path src = dir.resolve("src.raw");
    QemuImg.img("create", "-f", "raw", src, SIZE).assertExit(0);
    QemuImg.io("-f", "raw", "-c", "write -P 0x21 0 3M", "-c", "write -P 0x42 20M 5M", "-c", "write -P 0x63 63M 1M",
        src).assertExit(0);
    try (ServeProcess serve = ServeProcess.start(image, "--nbd", "unix:" + sock)) {
      String uri = serve.line();
      QemuImg.io("-f", "raw", "-c", "write -P 0x5a 3M 128k", "-c", "read -P 0x5a 3M 128k", "-c", "write -z 4M 64k",
          "-c", "read -P 0 4M 64k", "-c", "discard 5M 64k", "-c", "read -P 0 5M 64k", uri).assertExit(0);

      Path converted = dir.resolve("converted.raw");
      QemuImg.img("convert", "-f", "raw", "-O", "raw", uri, converted).assertExit(0);
      Path copied = dir.resolve("copied.raw");
      QemuImg.run("nbdcopy", "--connections=4", uri, copied).assertExit(0);
      QemuImg.img("compare", "-f", "raw", "-F", "raw", uri, converted).assertExit(0);
      QemuImg.img("compare", "-f", "raw", "-F", "raw", uri, copied).assertExit(0);

      QemuImg.img("convert", "-n", "-f", "raw", "-O", "raw", src, uri).assertExit(0);
      QemuImg.img("compare", "-f", "raw", "-F", "raw", src, uri).assertExit(0);
      QemuImg.io("-f", "raw", "-c", "write -P 0x77 0 64M", uri).assertExit(0);
      QemuImg.run("nbdcopy", "--connections=4", src, uri).assertExit(0);
      QemuImg.img("compare", "-f", "raw", "-F", "raw", src, uri).assertExit(0);
      assertThat(serve.stop()).isZero();
    }
    QemuImg.assertIdentical(src, "raw", image, format);
    if (format.equals("qcow2")) {
      QemuImg.assertCheckClean(image);
    }
  }

  /** qemu-img map's extents as nbdinfo --map lines of the type {@code type} gives, neighbours merged. */
  private static List<NbdExtent> fromMap(List<MapEntry> map, java.util.function.ToLongFunction<MapEntry> type) {
    List<NbdExtent> out = new ArrayList<>();
    for (MapEntry e : map) {
      QemuImg.append(out, new NbdExtent(e.start(), e.length(), type.applyAsLong(e)));
    }
    return out;
  }
}
