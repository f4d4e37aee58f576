package dev.blockbackup.formats;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.QemuImg;
import dev.blockbackup.testkit.QemuIoSession;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import org.assertj.core.api.ThrowableAssert.ThrowingCallable;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** QEMU's tools and we see each other's image locks: neither writes an image the other uses. */
@Tag("interop")
class ImageLockInteropTest {

  private static final int SIZE = 1 << 20;

  @TempDir Path dir;

  private Path qcow2(String name) throws Exception {
    Path p = dir.resolve(name);
    QemuImg.img("create", "-f", "qcow2", p, SIZE).assertExit(0);
    return p;
  }

  private static void assertRefused(ThrowingCallable open, String lock, Path image) {
    assertThatThrownBy(open)
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EAGAIN))
        .hasMessageContaining("Failed to get " + lock + " lock. Is another process using the image [" + image + "]?");
  }

  @Test
  void whileQemuIoWritesAnImageWeCannotWriteItNorReadItWithoutForceShare() throws Exception {
    Path img = qcow2("a.qcow2");
    try (QemuIoSession qemu = QemuIoSession.open(img, "-f", "qcow2")) {
      assertThat(qemu.run("write -P 0xab 0 4k")).contains("wrote 4096/4096 bytes");
      qemu.run("flush");
      assertRefused(() -> Qcow2Image.open(img, false), "\"write\"", img);
      assertRefused(() -> RawImage.open(img, false), "\"write\"", img);
      // a read-only open is refused exactly as qemu-img's read-only open is: QEMU shares no write
      assertRefused(() -> Qcow2Image.open(img, true), "shared \"write\"", img);
      assertThat(QemuImg.img("info", img).exit()).isEqualTo(1);
      assertThat(QemuImg.img("info", img).err()).contains("Failed to get shared \"write\" lock");
      // -U reads it anyway, and sees what qemu-io wrote
      try (Qcow2Image ro = ImageLock.forceShare(() -> Qcow2Image.open(img, true))) {
        ByteBuffer b = ByteBuffer.allocate(4096);
        ro.read(0, b);
        assertThat(b.array()).containsOnly((byte) 0xab);
      }
    }
    Qcow2Image.open(img, false).close();
  }

  @Test
  void whileQemuIoReadsAnImageWeCanReadItButNotWriteIt() throws Exception {
    Path img = qcow2("a.qcow2");
    try (QemuIoSession qemu = QemuIoSession.open(img, "-r", "-f", "qcow2")) {
      try (Qcow2Image ro = Qcow2Image.open(img, true)) {
        assertThat(ro.size()).isEqualTo(SIZE);
      }
      assertRefused(() -> Qcow2Image.open(img, false), "\"write\"", img);
    }
  }

  @Test
  void whileWeWriteAnImageQemuImgInfoReportsTheLockAndSucceedsWithForceShare() throws Exception {
    Path img = qcow2("a.qcow2");
    try (Qcow2Image rw = Qcow2Image.open(img, false)) {
      QemuImg.Result info = QemuImg.img("info", img);
      assertThat(info.exit()).isEqualTo(1);
      assertThat(info.err()).contains("Failed to get shared \"write\" lock")
          .contains("Is another process using the image [" + img + "]?");
      QemuImg.img("info", "-U", img).assertExit(0);
      QemuImg.Result write = QemuImg.io("-f", "qcow2", "-c", "write 0 512", img);
      assertThat(write.exit()).isEqualTo(1);
      assertThat(write.err()).contains("Failed to get \"write\" lock");
    }
    QemuImg.img("info", img).assertExit(0);
  }

  @Test
  void whileWeReadAnImageQemuMayReadButNotWriteIt() throws Exception {
    Path img = qcow2("a.qcow2");
    try (Qcow2Image ro = Qcow2Image.open(img, true)) {
      QemuImg.img("info", img).assertExit(0);
      QemuImg.io("-r", "-f", "qcow2", "-c", "read 0 512", img).assertExit(0);
      QemuImg.Result write = QemuImg.io("-f", "qcow2", "-c", "write 0 512", img);
      assertThat(write.exit()).isEqualTo(1);
      assertThat(write.err()).contains("Failed to get \"write\" lock");
    }
  }

  @Test
  void aRawImageWeWriteCannotBeWrittenByQemu() throws Exception {
    Path img = dir.resolve("a.raw");
    try (RawImage rw = RawImage.create(img, SIZE)) {
      QemuImg.Result write = QemuImg.io("-f", "raw", "-c", "write 0 512", img);
      assertThat(write.exit()).isEqualTo(1);
      assertThat(write.err()).contains("Failed to get \"write\" lock");
      QemuImg.Result convert = QemuImg.img("convert", "-f", "raw", "-O", "raw", img, dir.resolve("copy.raw"));
      assertThat(convert.exit()).isEqualTo(1);
      assertThat(convert.err()).contains("Failed to get shared \"write\" lock");
    }
  }

  @Test
  void theBackingFileOfAnOverlayWeReadCannotBeWrittenByQemu() throws Exception {
    Path base = qcow2("base.qcow2");
    Path overlay = dir.resolve("overlay.qcow2");
    Qcow2Image.create(overlay, Qcow2CreateOptions.of(SIZE).withBacking("base.qcow2", "qcow2")).close();
    try (Qcow2Image o = Qcow2Image.open(overlay, true)) {
      QemuImg.Result write = QemuImg.io("-f", "qcow2", "-c", "write 0 512", base);
      assertThat(write.exit()).isEqualTo(1);
      assertThat(write.err()).contains("Failed to get \"write\" lock");
      QemuImg.io("-r", "-f", "qcow2", "-c", "read 0 512", base).assertExit(0);
    }
  }

  @Test
  void whileQemuStorageDaemonExportsAnImageWritableWeCannotOpenItReadWrite() throws Exception {
    Path img = dir.resolve("exported.raw");
    RawImage.create(img, SIZE).close();
    Path pidFile = dir.resolve("qsd.pid");
    // --daemonize returns once the export is up, so the image is open and locked when it exits
    QemuImg.run("qemu-storage-daemon", "--daemonize", "--pidfile", pidFile,
        "--blockdev", "driver=file,node-name=disk,filename=" + img,
        "--nbd-server", "addr.type=unix,addr.path=" + dir.resolve("qsd.sock"),
        "--export", "type=nbd,id=exp,node-name=disk,writable=on").assertExit(0);
    ProcessHandle qsd = ProcessHandle.of(Long.parseLong(Files.readString(pidFile).trim())).orElseThrow();
    try {
      // the export writes and does not share resize: QEMU's own create or convert onto it says the same
      assertRefused(() -> RawImage.open(img, false), "\"resize\"", img);
      assertRefused(() -> RawImage.open(img, true), "shared \"write\"", img);
      ImageLock.forceShare(() -> RawImage.open(img, true)).close();
    } finally {
      qsd.destroy();
      qsd.onExit().get(60, TimeUnit.SECONDS);
    }
    RawImage.open(img, false).close();
  }
}
