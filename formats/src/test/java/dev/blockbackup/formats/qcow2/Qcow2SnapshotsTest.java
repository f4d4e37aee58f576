package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.ImageFormatException;
import dev.blockbackup.testkit.QemuImg;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.List;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The snapshot table as qemu-img snapshot writes it, read back entry by entry. */
@Tag("interop")
class Qcow2SnapshotsTest {

  @TempDir Path dir;

  @Test
  void anImageWithoutSnapshotsHasNone() throws IOException {
    Path img = dir.resolve("plain.qcow2");
    Qcow2Image.create(img, Qcow2CreateOptions.of(1 << 20)).close();
    assertThat(Qcow2Snapshots.read(img)).isEmpty();
  }

  @Test
  void snapshotsOfQemuImgAreReadInTableOrder() {
    Path img = dir.resolve("s.qcow2");
    QemuImg.img("create", "-f", "qcow2", img, "8M").assertExit(0);
    QemuImg.img("snapshot", "-c", "a", img).assertExit(0);
    QemuImg.img("snapshot", "-c", "second snapshot", img).assertExit(0);
    List<Qcow2Snapshot> list = readOrFail(img);
    assertThat(list).extracting(Qcow2Snapshot::id).containsExactly("1", "2");
    assertThat(list).extracting(Qcow2Snapshot::name).containsExactly("a", "second snapshot");
    long now = System.currentTimeMillis() / 1000;
    assertThat(list.get(1).dateSec()).isBetween(now - 3600, now + 60);
    assertThat(list.get(1).vmStateSize()).isZero();
    // qemu-img snapshot records a zero instruction count (the extra data holds one).
    assertThat(list.get(1).icount()).hasValue(0);
  }

  @Test
  void extraDataAboveQemusLimitIsRefused() throws IOException {
    Path img = dir.resolve("x.qcow2");
    QemuImg.img("create", "-f", "qcow2", img, "8M").assertExit(0);
    QemuImg.img("snapshot", "-c", "a", img).assertExit(0);
    try (FileChannel c = FileChannel.open(img, StandardOpenOption.READ, StandardOpenOption.WRITE)) {
      ByteBuffer off = ByteBuffer.allocate(8);
      c.read(off, 64);
      c.write(ByteBuffer.allocate(4).putInt(0, 1025), off.getLong(0) + 36);
    }
    assertThatThrownBy(() -> Qcow2Snapshots.read(img)).isInstanceOf(ImageFormatException.class)
        .hasMessageContaining("1025 bytes of extra data");
  }

  private static List<Qcow2Snapshot> readOrFail(Path img) {
    try {
      return Qcow2Snapshots.read(img);
    } catch (IOException e) {
      throw new AssertionError(e);
    }
  }
}
