package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.WriteFlag;
import dev.blockbackup.testkit.QemuImg;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

@Tag("interop")
class Qcow2ImageTest {

  @TempDir Path dir;

  static byte[] random(long seed, int len) {
    byte[] b = new byte[len];
    new Random(seed).nextBytes(b);
    return b;
  }

  static byte[] read(Qcow2Image img, long off, int len) throws BlockIOException {
    ByteBuffer b = ByteBuffer.allocate(len);
    img.read(off, b);
    return b.array();
  }

  @Test
  void createdImageIsCleanAndHasQemuLayout() throws Exception {
    Path p = dir.resolve("a.qcow2");
    try (Qcow2Image img = Qcow2Image.create(p, Qcow2CreateOptions.of(1L << 30))) {
      assertThat(img.size()).isEqualTo(1L << 30);
      assertThat(img.alignment()).isEqualTo(65536);
      assertThat(img.info().hostClustersInUse()).isEqualTo(4);
    }
    QemuImg.assertCheckClean(p);
    var info = QemuImg.info(p);
    assertThat(info.get("virtual-size").asLong()).isEqualTo(1L << 30);
    assertThat(info.get("cluster-size").asLong()).isEqualTo(65536);
    assertThat(info.at("/format-specific/data/compat").asText()).isEqualTo("1.1");
    assertThat(info.at("/format-specific/data/refcount-bits").asInt()).isEqualTo(16);
  }

  @Test
  void firstWriteAllocatesL2ThenDataLikeQemu() throws Exception {
    Path p = dir.resolve("a.qcow2");
    byte[] data = random(1, 65536);
    try (Qcow2Image img = Qcow2Image.create(p, Qcow2CreateOptions.of(1L << 30))) {
      img.write(0, ByteBuffer.wrap(data));
      assertThat(read(img, 0, 65536)).isEqualTo(data);
    }
    QemuImg.assertCheckClean(p);
    List<QemuImg.MapEntry> map = QemuImg.map(p, "qcow2");
    assertThat(map.get(0).offset()).isEqualTo(0x50000L);
    assertThat(map.get(0).data()).isTrue();
  }

  @Test
  void unalignedWritesMatchARawFile() throws Exception {
    for (int cs : new int[] {512, 4096, 65536, 2 << 20}) {
      Path q = dir.resolve("u" + cs + ".qcow2");
      Path r = dir.resolve("u" + cs + ".raw");
      long size = 8L << 20;
      Random rnd = new Random(cs);
      try (Qcow2Image img = Qcow2Image.create(q, Qcow2CreateOptions.of(size).withClusterSize(cs));
          RawImage raw = RawImage.create(r, size)) {
        for (int i = 0; i < 60; i++) {
          long off = rnd.nextInt((int) size - 1);
          int len = 1 + rnd.nextInt((int) Math.min(size - off, 300_000));
          byte[] d = random(rnd.nextLong(), len);
          img.write(off, ByteBuffer.wrap(d));
          raw.write(off, ByteBuffer.wrap(d));
        }
        byte[] a = read(img, 0, (int) size);
        ByteBuffer b = ByteBuffer.allocate((int) size);
        raw.read(0, b);
        assertThat(a).as("cluster size %d", cs).isEqualTo(b.array());
      }
      QemuImg.assertCheckClean(q);
      QemuImg.assertIdentical(q, "qcow2", r, "raw");
    }
  }

  @Test
  void reopenedImageReadsWhatWasWritten() throws Exception {
    Path p = dir.resolve("a.qcow2");
    byte[] d = random(7, 200_000);
    try (Qcow2Image img = Qcow2Image.create(p, Qcow2CreateOptions.of(16L << 20))) {
      img.write(12345, ByteBuffer.wrap(d));
    }
    try (Qcow2Image img = Qcow2Image.open(p, true)) {
      assertThat(read(img, 12345, d.length)).isEqualTo(d);
      assertThatThrownBy(() -> img.write(0, ByteBuffer.allocate(1)))
          .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EPERM));
    }
    QemuImg.assertCheckClean(p);
  }

  @Test
  void qemuWrittenImageReadsBack() throws Exception {
    Path p = dir.resolve("q.qcow2");
    Path r = dir.resolve("q.raw");
    QemuImg.img("create", "-f", "qcow2", p, "4M").assertExit(0);
    QemuImg.io("-f", "qcow2", "-c", "write -P 0x11 0 100k", "-c", "write -z 256k 128k", "-c", "write -P 0x22 1M 64k",
        "-c", "write -c -P 0x33 2M 64k", "-c", "write -c -P 0x44 2112k 64k", "-c", "discard 1M 64k", p).assertExit(0);
    QemuImg.img("convert", "-f", "qcow2", "-O", "raw", p, r).assertExit(0);
    byte[] expect = Files.readAllBytes(r);
    try (Qcow2Image img = Qcow2Image.open(p, true)) {
      assertThat(read(img, 0, expect.length)).isEqualTo(expect);
    }
  }

  @Test
  void overlayReadsThroughAndCopiesOnWrite() throws Exception {
    Path base = dir.resolve("base.qcow2");
    Path flat = dir.resolve("flat.raw");
    long size = 4L << 20;
    byte[] b = random(3, (int) size);
    try (Qcow2Image img = Qcow2Image.create(base, Qcow2CreateOptions.of(size))) {
      img.write(0, ByteBuffer.wrap(b));
    }
    Path top = dir.resolve("top.qcow2");
    try (Qcow2Image img = Qcow2Image.create(top, Qcow2CreateOptions.of(size + (1 << 20)).withBacking("base.qcow2", "qcow2"));
        RawImage raw = RawImage.create(flat, size + (1 << 20))) {
      raw.write(0, ByteBuffer.wrap(b));
      assertThat(read(img, 0, (int) size)).isEqualTo(b);
      byte[] d = random(4, 1000);
      img.write(70_000, ByteBuffer.wrap(d));
      raw.write(70_000, ByteBuffer.wrap(d));
      img.write(size - 500, ByteBuffer.wrap(d));
      raw.write(size - 500, ByteBuffer.wrap(d));
      img.writeZeroes(1 << 20, 1 << 17);
      raw.writeZeroes(1 << 20, 1 << 17);
      img.discard(2 << 20, 1 << 16);
      raw.writeZeroes(2 << 20, 1 << 16);
      List<Extent> st = img.blockStatus(0, size + (1 << 20));
      assertThat(st.get(0)).isEqualTo(new Extent(0, 65536, true, false, false));
      assertThat(st.get(1)).isEqualTo(Extent.data(65536, 65536));
      // the write at size - 500 ran into the cluster after the base's end; the rest is beyond the base
      assertThat(st.get(st.size() - 2)).isEqualTo(Extent.data(size - 65536, 131072));
      assertThat(st.get(st.size() - 1)).isEqualTo(Extent.zero(size + 65536, (1 << 20) - 65536, false));
    }
    QemuImg.assertCheckClean(top);
    QemuImg.assertIdentical(top, "qcow2", flat, "raw");
    assertThat(QemuImg.info(top).get("backing-filename-format").asText()).isEqualTo("qcow2");
  }

  @Test
  void compressedWritesAreCleanAndIdentical() throws Exception {
    Path p = dir.resolve("c.qcow2");
    Path r = dir.resolve("c.raw");
    long size = (1L << 20) + 4096;
    try (Qcow2Image img = Qcow2Image.create(p, Qcow2CreateOptions.of(size));
        RawImage raw = RawImage.create(r, size)) {
      for (long off = 0; off < size; off += 65536) {
        int len = (int) Math.min(65536, size - off);
        byte[] d = new byte[len];
        if (off == 3 * 65536) {
          d = random(9, len); // incompressible: stored as a normal cluster
        } else {
          java.util.Arrays.fill(d, (byte) (off >> 16));
          System.arraycopy(random(off, 300), 0, d, 100, 300);
        }
        img.writeCompressed(off, ByteBuffer.wrap(d));
        raw.write(off, ByteBuffer.wrap(d));
      }
      assertThatThrownBy(() -> img.writeCompressed(0, ByteBuffer.allocate(65536)))
          .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EIO));
      assertThatThrownBy(() -> img.writeCompressed(512, ByteBuffer.allocate(65536)))
          .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EINVAL));
      ByteBuffer a = ByteBuffer.allocate((int) size);
      img.read(0, a);
      ByteBuffer b = ByteBuffer.allocate((int) size);
      raw.read(0, b);
      assertThat(a.array()).isEqualTo(b.array());
    }
    QemuImg.assertCheckClean(p);
    QemuImg.assertIdentical(p, "qcow2", r, "raw");
    var check = QemuImg.img("check", "--output=json", p).json();
    assertThat(check.get("compressed-clusters").asLong()).isEqualTo(16);
    // overwriting compressed clusters frees them again
    try (Qcow2Image img = Qcow2Image.open(p, false); RawImage raw = RawImage.open(r, false)) {
      byte[] d = random(11, 100_000);
      img.write(30_000, ByteBuffer.wrap(d));
      raw.write(30_000, ByteBuffer.wrap(d));
    }
    QemuImg.assertCheckClean(p);
    QemuImg.assertIdentical(p, "qcow2", r, "raw");
  }

  @Test
  void zeroesAndDiscardShowInQemuMap() throws Exception {
    Path p = dir.resolve("z.qcow2");
    try (Qcow2Image img = Qcow2Image.create(p, Qcow2CreateOptions.of(1 << 20))) {
      img.write(0, ByteBuffer.wrap(random(1, 1 << 20)));
      img.writeZeroes(0, 65536); // keeps the allocation
      img.writeZeroes(65536, 65536, WriteFlag.MAY_UNMAP);
      img.discard(131072, 65536);
      img.discard(196608 + 100, 65536); // no whole cluster: nothing changes
      assertThatThrownBy(() -> img.writeZeroes(300_000, 10, WriteFlag.NO_FALLBACK))
          .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.ENOTSUP));
      assertThat(read(img, 0, 196608)).isEqualTo(new byte[196608]);
      List<Extent> st = img.blockStatus(0, 1 << 20);
      assertThat(st.get(0)).isEqualTo(Extent.zero(0, 131072, true));
      assertThat(st.get(1)).isEqualTo(Extent.zero(131072, 65536, false));
      assertThat(st.get(2)).isEqualTo(Extent.data(196608, (1 << 20) - 196608));
    }
    QemuImg.assertCheckClean(p);
    List<QemuImg.MapEntry> map = QemuImg.map(p, "qcow2");
    // ZERO_ALLOC keeps its host offset, the unmapped cluster has the plain zero flag, the discarded one is gone
    assertThat(map.get(0)).isEqualTo(new QemuImg.MapEntry(0, 65536, 0, true, true, false, 0x50000L));
    assertThat(map.get(1)).isEqualTo(new QemuImg.MapEntry(65536, 65536, 0, true, true, false, null));
    assertThat(map.get(2)).isEqualTo(new QemuImg.MapEntry(131072, 65536, 0, false, true, false, null));
    var check = QemuImg.img("check", "--output=json", p).json();
    assertThat(check.get("allocated-clusters").asLong()).isEqualTo(14); // 16 minus the unmapped and the discarded
  }

  @Test
  void closedImageRefusesWithEshutdown() throws Exception {
    Path p = dir.resolve("a.qcow2");
    Qcow2Image img = Qcow2Image.create(p, Qcow2CreateOptions.of(1 << 20));
    img.close();
    img.close();
    assertThatThrownBy(() -> read(img, 0, 1))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.ESHUTDOWN));
  }
}
