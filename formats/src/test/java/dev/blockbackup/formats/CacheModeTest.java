package dev.blockbackup.formats;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.QemuImg;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class CacheModeTest {

  @TempDir Path dir;

  @Test
  void qemuNamesParseAndOthersAreRefusedWithEinval() throws Exception {
    assertThat(CacheMode.parse("unsafe")).isEqualTo(CacheMode.UNSAFE);
    assertThat(CacheMode.parse("WriteBack")).isEqualTo(CacheMode.WRITEBACK);
    assertThatThrownBy(() -> CacheMode.parse("directsync"))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EINVAL))
        .hasMessageContaining("'directsync'")
        .hasMessageContaining("writeback, unsafe");
  }

  @Test
  @Tag("interop")
  void unsafeImagesHoldTheSameDataOnceClosed() throws Exception {
    byte[] data = new byte[300_000];
    for (int i = 0; i < data.length; i++) {
      data[i] = (byte) (i % 251 + 1);
    }
    Path q = dir.resolve("u.qcow2");
    Path r = dir.resolve("u.raw");
    try (Qcow2Image img = Qcow2Image.create(q, Qcow2CreateOptions.of(4 << 20), CacheMode.UNSAFE);
        RawImage raw = RawImage.create(r, 4 << 20, CacheMode.UNSAFE)) {
      img.write(12345, ByteBuffer.wrap(data), WriteFlag.FUA);
      raw.write(12345, ByteBuffer.wrap(data), WriteFlag.FUA);
      img.discard(1 << 20, 1 << 20);
      img.flush();
      raw.flush();
    }
    QemuImg.assertCheckClean(q);
    QemuImg.assertIdentical(q, "qcow2", r, "raw");
    try (BlockDevice again = ImageFormat.QCOW2.open(q, true, CacheMode.UNSAFE)) {
      ByteBuffer back = ByteBuffer.allocate(data.length);
      again.read(12345, back);
      assertThat(back.array()).isEqualTo(data);
    }
  }
}
