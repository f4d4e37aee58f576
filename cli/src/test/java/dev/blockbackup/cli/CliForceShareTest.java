package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.QemuImg;
import dev.blockbackup.testkit.QemuIoSession;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * While QEMU writes an image, the commands that read it are refused with QEMU's lock message, and
 * with -U (--force-share) they read it as qemu-img -U does; a target QEMU uses is never written.
 */
@Tag("interop")
class CliForceShareTest {

  private static final int SIZE = 1 << 20;

  @TempDir Path dir;

  private Path image(String name) {
    Path p = dir.resolve(name);
    QemuImg.img("create", "-f", "qcow2", p, SIZE).assertExit(0);
    return p;
  }

  private static void assertLockRefusal(Cli.Run r, String lock, Path image) {
    assertThat(r.exit()).as(r.toString()).isEqualTo(1);
    assertThat(r.err()).as(r.toString())
        .contains("Failed to get " + lock + " lock. Is another process using the image [" + image + "]?")
        .doesNotContain("Exception");
  }

  @Test
  void commandsReadingAnImageQemuWritesNeedForceShare() throws Exception {
    Path img = image("live.qcow2");
    try (QemuIoSession qemu = QemuIoSession.open(img, "-f", "qcow2")) {
      assertThat(qemu.run("write -P 0x5a 0 64k")).contains("wrote 65536/65536 bytes");
      qemu.run("flush");

      assertLockRefusal(Cli.run("info", img), "shared \"write\"", img);
      assertThat(Cli.run("info", "-U", img).ok().out()).contains("file format: qcow2");
      assertThat(Cli.run("info", "--force-share", "--output=json", img).ok().out()).contains("\"virtual-size\": " + SIZE);

      Path copy = dir.resolve("copy.raw");
      assertLockRefusal(Cli.run("convert", "-O", "raw", img, copy), "shared \"write\"", img);
      Cli.run("convert", "-U", "-O", "raw", img, copy).ok();
      QemuImg.img("compare", "-U", "-f", "qcow2", "-F", "raw", img, copy).assertExit(0);

      Path backup = dir.resolve("backup.qcow2");
      assertLockRefusal(Cli.run("backup", "--sync", "full", "-q", img, backup), "shared \"write\"", img);
      assertThat(backup).doesNotExist();
      Cli.run("backup", "-U", "--sync", "full", "-q", img, backup).ok();
      QemuImg.img("compare", "-U", "-f", "qcow2", "-F", "qcow2", img, backup).assertExit(0);
    }
  }

  @Test
  void aTargetQemuUsesIsRefusedAndLeftAlone() throws Exception {
    Path src = image("src.qcow2");
    Path busy = image("busy.qcow2");
    try (QemuIoSession qemu = QemuIoSession.open(busy, "-r", "-f", "qcow2")) {
      byte[] before = Files.readAllBytes(busy);
      assertLockRefusal(Cli.run("convert", "-O", "qcow2", src, busy), "\"write\"", busy);
      assertLockRefusal(Cli.run("convert", "-O", "raw", src, busy), "\"write\"", busy);
      assertLockRefusal(Cli.run("backup", "--sync", "full", "--existing", "-q", src, busy), "\"write\"", busy);
      assertThat(Files.readAllBytes(busy)).isEqualTo(before);
    }
    QemuImg.assertCheckClean(busy);
  }

  @Test
  void aSourceWeReadStaysReadableToQemuWhileWeConvertIt() throws Exception {
    // a read-only open shares reading, as qemu-img shares it
    Path src = image("src.qcow2");
    try (Qcow2Image held = Qcow2Image.open(src, true)) {
      QemuImg.img("info", src).assertExit(0);
      Cli.run("convert", "-O", "qcow2", src, dir.resolve("out.qcow2")).ok();
    }
    QemuImg.assertCheckClean(dir.resolve("out.qcow2"));
  }

  @Test
  void theHostileRunOfTheIssueIsRefusedAndQemuFindsTheBackingFileIntact() throws Exception {
    Path base = image("base.qcow2");
    QemuImg.io("-f", "qcow2", "-c", "write -P 0x11 0 64k", base).assertExit(0);
    Path overlay = dir.resolve("overlay.qcow2");
    QemuImg.img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", overlay).assertExit(0);
    byte[] before = Files.readAllBytes(base);
    Cli.Run r = Cli.run("convert", "-O", "qcow2", overlay, base);
    assertThat(r.exit()).as(r.toString()).isEqualTo(1);
    assertThat(r.err()).contains("of the backing chain of source '" + overlay + "'");
    assertThat(Files.readAllBytes(base)).isEqualTo(before);
    QemuImg.assertCheckClean(base);
    QemuImg.io("-r", "-f", "qcow2", "-c", "read -P 0x11 0 64k", overlay).assertExit(0);
  }
}
