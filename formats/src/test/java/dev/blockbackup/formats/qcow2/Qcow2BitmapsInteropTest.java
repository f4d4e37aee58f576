package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;

import com.fasterxml.jackson.databind.JsonNode;
import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.testkit.QemuImg;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Persistent bitmaps judged by QEMU: qemu-img info/check/bitmap on images we wrote, and the bits
 * QEMU wrote (through qemu-io, which loads and marks persistent bitmaps) read back by us, with QEMU's
 * own view of the bits (qemu-nbd -B, read by nbdinfo --map) as the reference.
 */
@Tag("interop")
class Qcow2BitmapsInteropTest {

  private static final long SIZE = 64L << 20;

  @TempDir
  Path dir;

  /** QEMU's dirty ranges of {@code bitmap}: start -> length, as qemu-nbd exports them. */
  static Map<Long, Long> qemuDirty(Path image, String bitmap) {
    return QemuImg.dirtyRanges(image, bitmap);
  }

  /** Our dirty ranges, merged as nbdinfo merges them. */
  static Map<Long, Long> ours(DirtyBitmap b) {
    Map<Long, Long> out = new LinkedHashMap<>();
    long pos = 0;
    DirtyBitmap.Area a;
    while ((a = b.nextDirtyArea(pos, b.size(), Long.MAX_VALUE)) != null) {
      out.put(a.offset(), a.length());
      pos = a.end();
    }
    return out;
  }

  private static void write(Qcow2Image img, long offset, int length) throws Exception {
    ByteBuffer b = ByteBuffer.allocate(length);
    for (int i = 0; i < length; i++) {
      b.put(i, (byte) (i * 7 + 1));
    }
    img.write(offset, b);
  }

  private static Map<String, JsonNode> qemuBitmaps(Path image) {
    JsonNode j = QemuImg.info(image).path("format-specific").path("data").path("bitmaps");
    Map<String, JsonNode> out = new LinkedHashMap<>();
    for (JsonNode b : j) {
      out.put(b.get("name").asText(), b);
    }
    return out;
  }

  private static List<String> flags(JsonNode b) {
    List<String> f = new ArrayList<>();
    b.path("flags").forEach(n -> f.add(n.asText()));
    return f;
  }

  @Test
  void bitmapsWeStoreAreWhatQemuSeesAndQemuImgBitmapWorksOnThem() throws Exception {
    Path img = dir.resolve("ours.qcow2");
    try (Qcow2Image q = Qcow2Image.create(img, Qcow2CreateOptions.of(SIZE))) {
      q.addBitmap("live", 65536, true);
      q.addBitmap("frozen", 131072, false);
      write(q, 1 << 20, 4096);
      q.writeZeroes(8L << 20, 200_000);
      q.discard(20L << 20, 1 << 20);
      // every cluster of its serialisation all ones: stored as all-ones table entries, no data clusters
      q.addBitmap("full", 512, false).bitmap().setAll();
    }
    QemuImg.assertCheckClean(img);
    assertThat(qemuDirty(img, "full")).isEqualTo(Map.of(0L, SIZE));
    QemuImg.img("bitmap", "--remove", img, "full").assertExit(0);
    Map<String, JsonNode> info = qemuBitmaps(img);
    assertThat(info.keySet()).containsExactly("live", "frozen");
    assertThat(flags(info.get("live"))).containsExactly("auto");
    assertThat(info.get("live").get("granularity").asLong()).isEqualTo(65536);
    assertThat(flags(info.get("frozen"))).isEmpty();
    assertThat(info.get("frozen").get("granularity").asLong()).isEqualTo(131072);
    Map<Long, Long> expect = new LinkedHashMap<>();
    expect.put(1L << 20, 65536L);
    long z = (8L << 20) & -65536;
    expect.put(z, Qcow2Header.ceilDiv((8L << 20) + 200_000, 65536) * 65536 - z);
    expect.put(20L << 20, 1L << 20);
    assertThat(qemuDirty(img, "live")).isEqualTo(expect);
    assertThat(qemuDirty(img, "frozen")).isEmpty();

    QemuImg.img("bitmap", "--add", "-g", "1M", img, "added").assertExit(0);
    QemuImg.img("bitmap", "--merge", "live", img, "frozen").assertExit(0);
    QemuImg.img("bitmap", "--enable", img, "frozen").assertExit(0);
    QemuImg.img("bitmap", "--disable", img, "live").assertExit(0);
    QemuImg.img("bitmap", "--clear", img, "live").assertExit(0);
    QemuImg.assertCheckClean(img);
    try (Qcow2Image q = Qcow2Image.open(img, false)) {
      assertThat(q.bitmaps()).extracting(Qcow2Bitmap::name).containsExactly("live", "frozen", "added");
      assertThat(q.findBitmap("live").enabled()).isFalse();
      assertThat(q.findBitmap("live").bitmap().count()).isZero();
      Qcow2Bitmap frozen = q.findBitmap("frozen");
      assertThat(frozen.enabled()).isTrue();
      assertThat(frozen.granularity()).isEqualTo(131072);
      assertThat(ours(frozen.bitmap())).isEqualTo(Map.of(1L << 20, 131072L, 8L << 20, 262144L, 20L << 20, 1L << 20));
      assertThat(q.findBitmap("added").granularity()).isEqualTo(1 << 20);
      JsonNode shared = QemuImg.img("info", "-U", "--output=json", img).assertExit(0).json();
      assertThat(shared.path("format-specific").path("data").path("bitmaps").get(1).path("flags").toString())
          .contains("in-use");
      q.removeBitmap("live");
      write(q, 30L << 20, 512);
    }
    QemuImg.assertCheckClean(img);
    assertThat(qemuBitmaps(img).keySet()).containsExactly("frozen", "added");
    assertThat(qemuDirty(img, "added")).isEqualTo(Map.of(30L << 20, 1L << 20));
    QemuImg.img("bitmap", "--remove", img, "frozen").assertExit(0);
    QemuImg.img("bitmap", "--remove", img, "added").assertExit(0);
    QemuImg.assertCheckClean(img);
    try (Qcow2Image q = Qcow2Image.open(img, false)) {
      assertThat(q.bitmaps()).isEmpty();
      write(q, 0, 512);
    }
    QemuImg.assertCheckClean(img);
  }

  @Test
  void bitsQemuSetLoadAsTheyAreAndSurviveOurWrites() throws Exception {
    Path img = dir.resolve("qemu.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", img, SIZE).assertExit(0);
    QemuImg.img("bitmap", "--add", img, "b1").assertExit(0);
    QemuImg.img("bitmap", "--add", "-g", "512", img, "fine").assertExit(0);
    QemuImg.img("bitmap", "--add", img, "off").assertExit(0);
    QemuImg.img("bitmap", "--disable", img, "off").assertExit(0);
    QemuImg.io("-f", "qcow2", "-c", "write 1M 64k", "-c", "write 10M 4k", "-c", "write 40000 1000",
        "-c", "write 63M 1M", img).assertExit(0);
    Map<Long, Long> b1 = qemuDirty(img, "b1");
    Map<Long, Long> fine = qemuDirty(img, "fine");
    assertThat(b1).isEqualTo(Map.of(0L, 65536L, 1L << 20, 65536L, 10L << 20, 65536L, 63L << 20, 1L << 20));
    try (Qcow2Image q = Qcow2Image.open(img, true)) {
      assertThat(ours(q.findBitmap("b1").bitmap())).isEqualTo(b1);
      assertThat(ours(q.findBitmap("fine").bitmap())).isEqualTo(fine);
      assertThat(q.findBitmap("fine").bitmap().count()).isEqualTo(65536 + 4096 + 1536 + (1 << 20)); // 40000+1000 spans 3 granules
      assertThat(q.findBitmap("off").bitmap().count()).isZero();
      assertThat(q.findBitmap("off").enabled()).isFalse();
    }
    try (Qcow2Image q = Qcow2Image.open(img, false)) {
      write(q, 32L << 20, 4096);
    }
    QemuImg.assertCheckClean(img);
    Map<Long, Long> b1After = new LinkedHashMap<>(b1);
    b1After.put(32L << 20, 65536L);
    assertThat(new java.util.TreeMap<>(qemuDirty(img, "b1"))).isEqualTo(new java.util.TreeMap<>(b1After));
    Map<Long, Long> fineAfter = new java.util.TreeMap<>(fine);
    fineAfter.put(32L << 20, 4096L);
    assertThat(new java.util.TreeMap<>(qemuDirty(img, "fine"))).isEqualTo(fineAfter);
    assertThat(qemuDirty(img, "off")).isEmpty();
    assertThat(flags(qemuBitmaps(img).get("b1"))).containsExactly("auto");
  }

  @Test
  void aKilledWriterLeavesItsBitmapsInUseAndWeLoadThemInconsistent() throws Exception {
    Path img = dir.resolve("killed.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", img, SIZE).assertExit(0);
    QemuImg.img("bitmap", "--add", img, "b").assertExit(0);
    List<String> cmd = List.of(Path.of(System.getProperty("java.home"), "bin", "java").toString(),
        "-XX:-UsePerfData", "-cp", System.getProperty("java.class.path"), BitmapHoldMain.class.getName(),
        img.toString(), Long.toString(1 << 20), "4096");
    Process p = new ProcessBuilder(cmd).redirectError(ProcessBuilder.Redirect.INHERIT).start();
    try (BufferedReader r = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
      assertThat(r.readLine()).isEqualTo("READY");
      p.destroyForcibly(); // SIGKILL
      assertThat(p.waitFor(60, TimeUnit.SECONDS)).isTrue();
    } finally {
      p.destroyForcibly();
    }
    assertThat(flags(qemuBitmaps(img).get("b"))).containsExactly("in-use", "auto");
    // QEMU 7.2's check counts an in-use bitmap's clusters and says nothing of the flag: info shows it
    QemuImg.assertCheckClean(img);
    try (Qcow2Image q = Qcow2Image.open(img, false)) {
      Qcow2Bitmap b = q.findBitmap("b");
      assertThat(b.inconsistent()).isTrue();
      assertThat(b.enabled()).isFalse();
      assertThat(b.granularity()).isEqualTo(65536);
      write(q, 2 << 20, 512);
    }
    // an inconsistent bitmap stays in use on disk, as QEMU leaves it
    assertThat(flags(qemuBitmaps(img).get("b"))).containsExactly("in-use", "auto");
    try (Qcow2Image q = Qcow2Image.open(img, false)) {
      q.removeBitmap("b");
    }
    QemuImg.assertCheckClean(img);
    assertThat(qemuBitmaps(img)).isEmpty();
  }
}
