package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.blockbackup.formats.qcow2.Qcow2Bitmap;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.QemuImg;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code blockbackup bitmap} as qemu-img bitmap, and the bitmaps in {@code info}. */
class CliBitmapTest {

  static final long SIZE = 64L << 20;

  @TempDir Path dir;
  private Path img;

  @BeforeEach
  void anImage() throws Exception {
    img = dir.resolve("disk.qcow2");
    Qcow2Image.create(img, Qcow2CreateOptions.of(SIZE)).close();
  }

  private static Qcow2Bitmap bitmap(Path image, String name) throws Exception {
    for (Qcow2Bitmap b : Qcow2Image.inspectBitmaps(image)) {
      if (b.name().equals(name)) {
        return b;
      }
    }
    return null;
  }

  @Test
  void operationsApplyInOrderAndPersist() throws Exception {
    Cli.run("bitmap", "--add", img, "b0").ok();
    Cli.run("bitmap", "--add", "-g", "1M", "--disable", img, "b1").ok();
    try (Qcow2Image d = Qcow2Image.open(img, false)) {
      d.write(3L << 20, ByteBuffer.allocate(4096));
    }
    assertThat(bitmap(img, "b0").bitmap().count()).isEqualTo(64 * 1024);
    assertThat(bitmap(img, "b1").enabled()).isFalse();
    assertThat(bitmap(img, "b1").granularity()).isEqualTo(1 << 20);
    assertThat(bitmap(img, "b1").bitmap().count()).isZero();
    Cli.run("bitmap", "--merge", "b0", "--enable", img, "b1").ok();
    assertThat(bitmap(img, "b1").bitmap().count()).isEqualTo(1 << 20);
    assertThat(bitmap(img, "b1").enabled()).isTrue();
    Cli.run("bitmap", "--clear", "--remove", img, "b0").ok();
    assertThat(bitmap(img, "b0")).isNull();
    assertThat(Cli.run("bitmap", "--list", img).ok().out()).isEqualTo("b1 granularity=1048576 flags=auto dirty=1048576\n");
  }

  @Test
  void mergesFromAnotherImage() throws Exception {
    Path other = dir.resolve("other.qcow2");
    Qcow2Image.create(other, Qcow2CreateOptions.of(SIZE)).close();
    Cli.run("bitmap", "--add", "-g", "4k", other, "src").ok();
    try (Qcow2Image d = Qcow2Image.open(other, false)) {
      d.write(5L << 20, ByteBuffer.allocate(100));
    }
    Cli.run("bitmap", "--add", img, "dst").ok();
    Cli.run("bitmap", "--merge", "src", "-b", other, "-F", "qcow2", img, "dst").ok();
    Qcow2Bitmap dst = bitmap(img, "dst");
    assertThat(dst.bitmap().count()).isEqualTo(64 * 1024);
    assertThat(dst.bitmap().isDirty(5L << 20)).isTrue();
  }

  @Test
  void refusesAsQemuImgDoes() throws Exception {
    byte[] before = Files.readAllBytes(img);
    assertThat(Cli.run("bitmap", img, "b0").err())
        .contains("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge");
    assertThat(Cli.run("bitmap", "--remove", "-g", "64k", img, "b0").err())
        .contains("granularity only supported with --add");
    assertThat(Cli.run("bitmap", "--add", "-F", "qcow2", img, "b0").err()).contains("-F only supported with -b");
    assertThat(Cli.run("bitmap", "--add", "-b", img, img, "b0").err())
        .contains("Merge bitmap source file only supported with --merge");
    assertThat(Cli.run("bitmap", "--add", img).err()).contains("Expecting filename and bitmap name");
    assertThat(Cli.run("bitmap", "--add", "-g", "1000", img, "b0").err())
        .contains("Operation add on bitmap b0 failed: Granularity must be power of 2 and at least 512");
    assertThat(Cli.run("bitmap", "--remove", img, "nope").err())
        .contains("Operation remove on bitmap nope failed: Dirty bitmap 'nope' not found");
    assertThat(Files.readAllBytes(img)).as("nothing written by a refused command").isEqualTo(before);
    Cli.run("bitmap", "--add", img, "b0").ok();
    Cli.Run again = Cli.run("bitmap", "--add", img, "b0");
    assertThat(again.exit()).isEqualTo(1);
    assertThat(again.err()).contains("Operation add on bitmap b0 failed: Bitmap already exists: b0");
    Path raw = dir.resolve("disk.raw");
    Files.write(raw, new byte[4096]);
    assertThat(Cli.run("bitmap", "--add", raw, "b0").err()).contains("only qcow2 images hold persistent bitmaps");
  }

  @Test
  @Tag("interop")
  void qemuImgSeesOurBitmapsAndWeSeeItsBits() throws Exception {
    Cli.run("bitmap", "--add", img, "ours").ok();
    Cli.run("bitmap", "--add", "-g", "128k", "--disable", img, "frozen").ok();
    QemuImg.img("bitmap", "--add", img, "theirs").assertExit(0);
    QemuImg.io("-c", "write 1M 64k", img).assertExit(0);
    JsonNode theirs = QemuImg.info(img).path("format-specific").path("data").path("bitmaps");
    JsonNode ours = new ObjectMapper().readTree(Cli.run("info", "--output=json", img).ok().out())
        .path("format-specific").path("data").path("bitmaps");
    assertThat(ours).isEqualTo(theirs);
    assertThat(theirs.toString()).contains("\"name\":\"frozen\"").contains("\"granularity\":131072");
    assertThat(formatSpecific(Cli.run("info", img).ok().out()))
        .isEqualTo(formatSpecific(QemuImg.img("info", img).assertExit(0).out()))
        .contains("bitmaps:");
    assertThat(bitmap(img, "ours").bitmap().count()).as("qemu-io's write, marked by QEMU").isEqualTo(64 * 1024);
    assertThat(bitmap(img, "theirs").bitmap().isDirty(1L << 20)).isTrue();
    assertThat(bitmap(img, "frozen").bitmap().count()).isZero();
    QemuImg.img("bitmap", "--merge", "ours", img, "frozen").assertExit(0);
    assertThat(bitmap(img, "frozen").bitmap().count()).isEqualTo(128 * 1024);
    QemuImg.assertCheckClean(img);
  }

  /** info's human form from "Format specific information:" on (disk size above it is counted differently). */
  private static String formatSpecific(String info) {
    int at = info.indexOf("Format specific information:");
    return at < 0 ? info : info.substring(at);
  }
}
