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
  @Tag("interop")
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
  @Tag("interop")
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
  @Tag("interop")
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
  @Tag("interop")
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
  @Tag("interop")
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
  @Tag("interop")
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
  @Tag("interop")
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
  @Tag("interop")
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

  @Test
  @Tag("interop")
  void writesToSnapshottedClustersCopyAndKeepTheSnapshot() throws Exception {
    Path p = dir.resolve("s.qcow2");
    Path before = dir.resolve("before.raw");
    Path after = dir.resolve("after.raw");
    QemuImg.img("create", "-f", "qcow2", p, "2M").assertExit(0);
    QemuImg.io("-f", "qcow2", "-c", "write -P 0x11 0 1M", "-c", "write -c -P 0x22 1M 64k", p).assertExit(0);
    QemuImg.img("snapshot", "-c", "snap", p).assertExit(0);
    QemuImg.img("convert", "-O", "raw", p, before).assertExit(0);
    byte[] expect = Files.readAllBytes(before);
    try (Qcow2Image img = Qcow2Image.open(p, false)) {
      byte[] d = random(5, 100_000);
      img.write(30_000, ByteBuffer.wrap(d));
      img.write((1 << 20) + 100, ByteBuffer.wrap(d, 0, 10));
      img.discard(512 * 1024, 65536);
      img.writeZeroes(640 * 1024, 65536, WriteFlag.MAY_UNMAP);
      System.arraycopy(d, 0, expect, 30_000, d.length);
      System.arraycopy(d, 0, expect, (1 << 20) + 100, 10);
      java.util.Arrays.fill(expect, 512 * 1024, 576 * 1024, (byte) 0);
      java.util.Arrays.fill(expect, 640 * 1024, 704 * 1024, (byte) 0);
      assertSameBytes(read(img, 0, expect.length), expect);
    }
    QemuImg.assertCheckClean(p);
    QemuImg.img("convert", "-O", "raw", p, after).assertExit(0);
    assertSameBytes(Files.readAllBytes(after), expect);
    // the snapshot still holds the old contents
    Path snap = dir.resolve("snap.raw");
    QemuImg.img("convert", "-l", "snap", "-O", "raw", p, snap).assertExit(0);
    QemuImg.assertIdentical(snap, "raw", before, "raw");
  }

  @Test
  @Tag("interop")
  void v2ImagesAndOtherRefcountWidthsAreWrittenCleanly() throws Exception {
    String[][] variants = {
      {"compat=0.10"}, {"refcount_bits=1"}, {"refcount_bits=8"}, {"refcount_bits=64"}, {"cluster_size=512"},
      {"lazy_refcounts=on"},
    };
    int i = 0;
    for (String[] v : variants) {
      Path p = dir.resolve("v" + i + ".qcow2");
      Path r = dir.resolve("v" + i + ".raw");
      i++;
      QemuImg.img("create", "-f", "qcow2", "-o", v[0], p, "12M").assertExit(0);
      QemuImg.io("-f", "qcow2", "-c", "write -P 0x33 64k 200k", p).assertExit(0);
      try (Qcow2Image img = Qcow2Image.open(p, false); RawImage raw = RawImage.create(r, 12 << 20)) {
        raw.write(64 * 1024, ByteBuffer.wrap(filled(0x33, 200 * 1024)));
        Random rnd = new Random(i);
        for (int k = 0; k < 30; k++) {
          long off = rnd.nextInt(12 << 20);
          int len = (int) Math.min((12 << 20) - off, 1 + rnd.nextInt(400_000));
          byte[] d = random(rnd.nextLong(), len);
          img.write(off, ByteBuffer.wrap(d));
          raw.write(off, ByteBuffer.wrap(d));
        }
        img.discard(1 << 20, 1 << 20);
        raw.writeZeroes(1 << 20, 1 << 20);
        img.writeZeroes(3 << 20, 1 << 20, WriteFlag.MAY_UNMAP);
        raw.writeZeroes(3 << 20, 1 << 20);
      }
      QemuImg.assertCheckClean(p);
      QemuImg.assertIdentical(p, "qcow2", r, "raw");
    }
  }

  @Test
  @Tag("interop")
  void refcountTableGrowsWhenTheHostFileOutgrowsIt() throws Exception {
    Path p = dir.resolve("g.qcow2");
    Path r = dir.resolve("g.raw");
    // 512-byte clusters: one reftable cluster of 64 entries covers only 8 MiB of host file
    QemuImg.img("create", "-f", "qcow2", "-o", "cluster_size=512", p, "40M").assertExit(0);
    try (Qcow2Image img = Qcow2Image.open(p, false); RawImage raw = RawImage.create(r, 40 << 20)) {
      byte[] d = random(8, 1 << 20);
      for (int i = 0; i < 30; i++) {
        img.write((long) i << 20, ByteBuffer.wrap(d));
        raw.write((long) i << 20, ByteBuffer.wrap(d));
      }
      assertSameBytes(read(img, 0, 30 << 20), java.nio.file.Files.readAllBytes(r).length == (40 << 20)
          ? java.util.Arrays.copyOf(java.nio.file.Files.readAllBytes(r), 30 << 20) : null);
    }
    QemuImg.assertCheckClean(p);
    QemuImg.assertIdentical(p, "qcow2", r, "raw");
    assertThat(QemuImg.img("info", "--output=json", p).json().get("virtual-size").asLong()).isEqualTo(40 << 20);
  }

  @Test
  @Tag("interop")
  void dirtyLazyRefcountImageIsRepairedOnReadWriteOpen() throws Exception {
    Path p = dir.resolve("lazy.qcow2");
    Path r = dir.resolve("lazy.raw");
    QemuImg.img("create", "-f", "qcow2", "-o", "lazy_refcounts=on", p, "8M").assertExit(0);
    QemuImg.io("-f", "qcow2", "-c", "write -P 0x10 0 1M", p).assertExit(0);
    QemuImg.img("snapshot", "-c", "s1", p).assertExit(0);
    // abort leaves the dirty bit and refcounts that were never written
    QemuImg.io("-f", "qcow2", "-c", "write -P 0x20 512k 2M", "-c", "write -c -P 0x30 4M 64k", "-c", "abort", p);
    assertThat(QemuImg.img("check", p).exit()).isEqualTo(2);
    // what survived the abort, as QEMU reads it (reading needs no refcounts)
    QemuImg.img("convert", "-f", "qcow2", "-O", "raw", p, r).assertExit(0);
    try (Qcow2Image img = Qcow2Image.open(p, true)) {
      assertThat(img.info().dirty()).isTrue();
    }
    try (Qcow2Image img = Qcow2Image.open(p, false)) {
      assertThat(img.info().dirty()).isFalse();
      img.write(6 << 20, ByteBuffer.wrap(filled(0x40, 100_000)));
      img.write(600 * 1024, ByteBuffer.wrap(filled(0x50, 10)));
    }
    QemuImg.assertCheckClean(p);
    try (RawImage raw = RawImage.open(r, false)) {
      raw.write(6 << 20, ByteBuffer.wrap(filled(0x40, 100_000)));
      raw.write(600 * 1024, ByteBuffer.wrap(filled(0x50, 10)));
    }
    QemuImg.assertIdentical(p, "qcow2", r, "raw");
  }

  @Test
  @Tag("interop")
  void edgeSizesAndArgumentsAreHandled() throws Exception {
    Path empty = dir.resolve("empty.qcow2");
    try (Qcow2Image img = Qcow2Image.create(empty, Qcow2CreateOptions.of(0))) {
      img.read(0, ByteBuffer.allocate(0));
      assertThat(img.blockStatus(0, 0)).isEmpty();
      assertThatThrownBy(() -> img.read(0, ByteBuffer.allocate(1)))
          .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EINVAL));
    }
    QemuImg.assertCheckClean(empty);
    Path big = dir.resolve("big.qcow2");
    long size = (1L << 40) + 512;
    try (Qcow2Image img = Qcow2Image.create(big, Qcow2CreateOptions.of(size).withClusterSize(2 << 20))) {
      byte[] d = random(2, 5000);
      img.write((1L << 40) - 5000, ByteBuffer.wrap(d));
      assertThat(read(img, (1L << 40) - 5000, 5000)).isEqualTo(d);
      // the last cluster is 512 bytes long; compressed, it is zero-padded to a whole cluster
      byte[] tail = filled(7, 512);
      img.writeCompressed(1L << 40, ByteBuffer.wrap(tail));
      assertThat(read(img, 1L << 40, 512)).isEqualTo(tail);
    }
    QemuImg.assertCheckClean(big);
    assertThat(QemuImg.info(big).get("virtual-size").asLong()).isEqualTo(size);
    Path tooLong = dir.resolve("long.qcow2");
    String name = "x".repeat(1024);
    assertThatThrownBy(() -> Qcow2Image.create(tooLong, Qcow2CreateOptions.of(1 << 20).withBacking(name, "raw")))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EINVAL))
        .hasMessageContaining("1024 bytes");
  }

  @Test
  @Tag("interop")
  void lastPartialClusterCompressesZeroPadded() throws Exception {
    Path p = dir.resolve("tail.qcow2");
    Path r = dir.resolve("tail.raw");
    long size = 65536 + 1024;
    byte[] d = filled(0x61, 1024);
    try (Qcow2Image img = Qcow2Image.create(p, Qcow2CreateOptions.of(size))) {
      assertThatThrownBy(() -> img.writeCompressed(65536, ByteBuffer.allocate(65536)))
          .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EINVAL));
      img.writeCompressed(65536, ByteBuffer.wrap(d));
      assertThat(read(img, 65536, 1024)).isEqualTo(d);
    }
    try (RawImage raw = RawImage.create(r, size)) {
      raw.write(65536, ByteBuffer.wrap(d));
    }
    QemuImg.assertCheckClean(p);
    QemuImg.assertIdentical(p, "qcow2", r, "raw");
    assertThat(QemuImg.img("check", "--output=json", p).json().get("compressed-clusters").asLong()).isEqualTo(1);
  }

  @Test
  @Tag("interop")
  void unknownAutoclearBitsAreClearedBeforeWriting() throws Exception {
    Path p = dir.resolve("ac.qcow2");
    QemuImg.img("create", "-f", "qcow2", p, "1M").assertExit(0);
    try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(p.toFile(), "rw")) {
      f.seek(88);
      f.writeLong(0x8000000000000004L);
    }
    Qcow2Image.open(p, true).close();
    try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(p.toFile(), "r")) {
      f.seek(88);
      assertThat(f.readLong()).isEqualTo(0x8000000000000004L);
    }
    try (Qcow2Image img = Qcow2Image.open(p, false)) {
      img.write(0, ByteBuffer.wrap(filled(1, 512)));
    }
    try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(p.toFile(), "r")) {
      f.seek(88);
      assertThat(f.readLong()).isZero();
    }
    QemuImg.assertCheckClean(p);
  }

  @Test
  @Tag("interop")
  void backingFormatIsProbedWhenTheExtensionIsAbsent() throws Exception {
    Path base = dir.resolve("pbase.qcow2");
    Path top = dir.resolve("ptop.qcow2");
    QemuImg.img("create", "-f", "qcow2", base, "1M").assertExit(0);
    QemuImg.io("-f", "qcow2", "-c", "write -P 0x7 0 64k", base).assertExit(0);
    QemuImg.img("create", "-f", "qcow2", "-b", "pbase.qcow2", "-F", "qcow2", top, "1M").assertExit(0);
    // turn the backing-format extension (the first one, at 112) into an unknown one, which is skipped
    try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(top.toFile(), "rw")) {
      f.seek(112);
      assertThat(f.readInt()).isEqualTo(0xE2792ACA);
      f.seek(112);
      f.writeInt(0x12345678);
    }
    try (Qcow2Image img = Qcow2Image.open(top, false)) {
      assertThat(img.info().backingFormat()).isNull();
      assertThat(img.backing()).isInstanceOf(Qcow2Image.class);
      assertThat(read(img, 0, 65536)).isEqualTo(filled(7, 65536));
      img.write(100, ByteBuffer.wrap(filled(8, 10)));
    }
    // the unknown extension survived our writes
    try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(top.toFile(), "r")) {
      f.seek(112);
      assertThat(f.readInt()).isEqualTo(0x12345678);
    }
    QemuImg.assertCheckClean(top);
  }

  @Test
  @Tag("interop")
  void writeIntoPreallocatedZeroClusterReusesItInPlace() throws Exception {
    Path p = dir.resolve("za.qcow2");
    try (Qcow2Image img = Qcow2Image.create(p, Qcow2CreateOptions.of(1 << 20))) {
      img.write(0, ByteBuffer.wrap(random(1, 65536)));
      img.writeZeroes(0, 65536);
      img.write(1000, ByteBuffer.wrap(filled(9, 100)));
      byte[] expect = new byte[65536];
      System.arraycopy(filled(9, 100), 0, expect, 1000, 100);
      assertThat(read(img, 0, 65536)).isEqualTo(expect);
    }
    QemuImg.assertCheckClean(p);
    List<QemuImg.MapEntry> map = QemuImg.map(p, "qcow2");
    assertThat(map.get(0)).isEqualTo(new QemuImg.MapEntry(0, 65536, 0, true, false, true, 0x50000L));
  }

  @Test
  @Tag("interop")
  void preallocatedImagesReadAndWrite() throws Exception {
    for (String mode : new String[] {"metadata", "falloc", "full"}) {
      Path p = dir.resolve("pre-" + mode + ".qcow2");
      Path r = dir.resolve("pre-" + mode + ".raw");
      QemuImg.img("create", "-f", "qcow2", "-o", "preallocation=" + mode, p, "4M").assertExit(0);
      try (Qcow2Image img = Qcow2Image.open(p, false); RawImage raw = RawImage.create(r, 4 << 20)) {
        assertThat(read(img, 0, 4 << 20)).isEqualTo(new byte[4 << 20]);
        byte[] d = random(12, 300_000);
        img.write(70_000, ByteBuffer.wrap(d));
        raw.write(70_000, ByteBuffer.wrap(d));
        img.writeZeroes(1 << 20, 1 << 20);
        img.discard(3 << 20, 1 << 20);
        assertThat(img.info().hostClustersInUse()).isGreaterThan(4);
      }
      QemuImg.assertCheckClean(p);
      QemuImg.assertIdentical(p, "qcow2", r, "raw");
    }
  }

  /** Equal arrays; a failure names the first differing byte instead of printing megabytes. */
  static void assertSameBytes(byte[] actual, byte[] expected) {
    assertThat(actual.length).isEqualTo(expected.length);
    int i = java.util.Arrays.mismatch(actual, expected);
    assertThat(i).as("first differing byte at %d: actual %s, expected %s", i,
        i >= 0 ? actual[i] : 0, i >= 0 ? expected[i] : 0).isEqualTo(-1);
  }

  static byte[] filled(int v, int len) {
    byte[] b = new byte[len];
    java.util.Arrays.fill(b, (byte) v);
    return b;
  }
}
