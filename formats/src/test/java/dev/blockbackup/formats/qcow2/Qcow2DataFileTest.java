package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.ImageFormatException;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.WriteFlag;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Images with an external data file (incompatible bit 2) and data_file_raw (autoclear bit 1): data
 * clusters live in the data file at their guest offsets, the raw data file stays the disk's raw
 * image, and what QEMU refuses is refused.
 */
class Qcow2DataFileTest {

  private static final int K = 1024;
  private static final int M = 1024 * 1024;

  @TempDir Path dir;

  private Path rawDisk(String name, int size, long seed) throws IOException {
    byte[] b = new byte[size];
    new SplittableRandom(seed).nextBytes(b);
    Path p = dir.resolve(name);
    Files.write(p, b);
    return p;
  }

  private static byte[] read(Qcow2Image img, long offset, int len) throws BlockIOException {
    ByteBuffer b = ByteBuffer.allocate(len);
    img.read(offset, b);
    return b.array();
  }

  private static byte[] pattern(int len, int value) {
    byte[] b = new byte[len];
    Arrays.fill(b, (byte) value);
    return b;
  }

  private Path rawImage(Path raw, long size) throws BlockIOException {
    Path meta = dir.resolve("meta.qcow2");
    Qcow2Image.create(meta, Qcow2CreateOptions.of(size).withDataFile(raw.getFileName().toString(), true)).close();
    return meta;
  }

  @Test
  void createOverAnExistingRawDiskKeepsItsBytesAndReadsThem() throws IOException {
    Path raw = rawDisk("disk.raw", 4 * M, 1);
    byte[] before = Files.readAllBytes(raw);
    Path meta = rawImage(raw, 4 * M);
    assertThat(Files.readAllBytes(raw)).isEqualTo(before);
    try (Qcow2Image img = Qcow2Image.open(meta, true)) {
      assertThat(read(img, 0, 4 * M)).isEqualTo(before);
      assertThat(img.blockStatus(0, 4 * M)).containsExactly(Extent.data(0, 4 * M));
      Qcow2Info info = img.info();
      assertThat(info.dataFile()).isEqualTo("disk.raw");
      assertThat(info.dataFileRaw()).isTrue();
    }
  }

  @Test
  void createExtendsAShortDataFileAndCreatesAMissingOne() throws IOException {
    Path raw = rawDisk("short.raw", 100 * K, 2);
    byte[] before = Files.readAllBytes(raw);
    rawImage(raw, 1 * M);
    byte[] after = Files.readAllBytes(raw);
    assertThat(after).hasSize(M);
    assertThat(Arrays.copyOf(after, before.length)).isEqualTo(before);

    Path meta = dir.resolve("fresh.qcow2");
    Qcow2Image.create(meta, Qcow2CreateOptions.of(2 * M).withDataFile("fresh.raw", false)).close();
    assertThat(Files.size(dir.resolve("fresh.raw"))).isEqualTo(2 * M);
    try (Qcow2Image img = Qcow2Image.open(meta, true)) {
      assertThat(read(img, 0, 2 * M)).isEqualTo(new byte[2 * M]);
      assertThat(img.info().dataFileRaw()).isFalse();
    }
  }

  @Test
  void writesLandInTheRawFileAtTheirGuestOffsetsAndHoldNoRefcounts() throws IOException {
    Path raw = rawDisk("disk.raw", 4 * M, 3);
    Path meta = rawImage(raw, 4 * M);
    long metaSize = Files.size(meta);
    try (Qcow2Image img = Qcow2Image.open(meta, false)) {
      long inUse = img.info().hostClustersInUse();
      img.write(0, ByteBuffer.wrap(pattern(5000, 0xab)));
      img.write(3 * M + 12345, ByteBuffer.wrap(pattern(70 * K, 0xcd)), WriteFlag.FUA);
      assertThat(img.info().hostClustersInUse()).isEqualTo(inUse);
    }
    byte[] disk = Files.readAllBytes(raw);
    assertThat(Arrays.copyOfRange(disk, 0, 5000)).isEqualTo(pattern(5000, 0xab));
    assertThat(Arrays.copyOfRange(disk, 3 * M + 12345, 3 * M + 12345 + 70 * K)).isEqualTo(pattern(70 * K, 0xcd));
    assertThat(Files.size(meta)).isEqualTo(metaSize);
  }

  @Test
  void writeZeroesAndDiscardZeroTheRawFileToo() throws IOException {
    Path raw = rawDisk("disk.raw", 4 * M, 4);
    Path meta = rawImage(raw, 4 * M);
    try (Qcow2Image img = Qcow2Image.open(meta, false)) {
      img.writeZeroes(64 * K, 128 * K);
      img.writeZeroes(M, 64 * K, WriteFlag.MAY_UNMAP);
      img.writeZeroes(2 * M + 100, 300); // partial: written as zero bytes
      img.discard(3 * M, 64 * K);
      assertThat(read(img, 64 * K, 128 * K)).isEqualTo(new byte[128 * K]);
      assertThat(read(img, 3 * M, 64 * K)).isEqualTo(new byte[64 * K]);
      // a later write into a zeroed cluster reads back, around it zeros
      img.write(3 * M + 10, ByteBuffer.wrap(pattern(10, 7)));
      assertThat(read(img, 3 * M, 30)).isEqualTo(concat(new byte[10], pattern(10, 7), new byte[10]));
      byte[] all = read(img, 0, 4 * M);
      img.flush();
      assertThat(Files.readAllBytes(raw)).isEqualTo(all);
      assertThatThrownBy(() -> img.writeZeroes(0, 64 * K, WriteFlag.NO_FALLBACK))
          .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.ENOTSUP));
    }
  }

  private static byte[] concat(byte[]... parts) {
    int n = 0;
    for (byte[] p : parts) {
      n += p.length;
    }
    byte[] out = new byte[n];
    int o = 0;
    for (byte[] p : parts) {
      System.arraycopy(p, 0, out, o, p.length);
      o += p.length;
    }
    return out;
  }

  @Test
  void aNonRawDataFileMapsWrittenClustersToTheirGuestOffsets() throws IOException {
    Path meta = dir.resolve("meta.qcow2");
    Qcow2Image.create(meta, Qcow2CreateOptions.of(4 * M).withDataFile("data.bin", false)).close();
    try (Qcow2Image img = Qcow2Image.open(meta, false)) {
      assertThat(img.blockStatus(0, 4 * M)).containsExactly(Extent.zero(0, 4 * M, false));
      img.write(2 * M + 64 * K, ByteBuffer.wrap(pattern(64 * K, 0x5a)));
      assertThat(img.blockStatus(2 * M, 192 * K)).containsExactly(
          Extent.zero(2 * M, 64 * K, false), Extent.data(2 * M + 64 * K, 64 * K), Extent.zero(2 * M + 128 * K, 64 * K, false));
      img.discard(2 * M + 64 * K, 64 * K);
      assertThat(read(img, 2 * M + 64 * K, 64 * K)).isEqualTo(new byte[64 * K]);
    }
    byte[] data = Files.readAllBytes(dir.resolve("data.bin"));
    // discard of a non-raw data file changes the mapping only
    assertThat(Arrays.copyOfRange(data, 2 * M + 64 * K, 2 * M + 128 * K)).isEqualTo(pattern(64 * K, 0x5a));
  }

  @Test
  void theRawFileKeepsTheDisksSizeWhenTheLastClusterIsPartial() throws IOException {
    long size = 2 * M + 1536;
    Path raw = rawDisk("disk.raw", (int) size, 11);
    Path meta = dir.resolve("meta.qcow2");
    Qcow2Image.create(meta, Qcow2CreateOptions.of(size).withClusterSize(4 * K).withDataFile("disk.raw", true)).close();
    try (Qcow2Image img = Qcow2Image.open(meta, false)) {
      img.writeZeroes(size - 1536, 1536, WriteFlag.MAY_UNMAP);
      img.write(size - 1000, ByteBuffer.wrap(pattern(10, 9)));
    }
    assertThat(Files.size(raw)).isEqualTo(size);
    assertThat(Arrays.copyOfRange(Files.readAllBytes(raw), (int) size - 1000, (int) size - 990)).isEqualTo(pattern(10, 9));
  }

  @Test
  void compressedWritesAreRefused() throws IOException {
    Path meta = rawImage(rawDisk("disk.raw", M, 5), M);
    try (Qcow2Image img = Qcow2Image.open(meta, false)) {
      assertThat(img.supportsCompressedWrites()).isFalse();
      assertThatThrownBy(() -> img.writeCompressed(0, ByteBuffer.allocate(64 * K)))
          .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.ENOTSUP));
    }
  }

  @Test
  void aReadWriteOpenKeepsTheRawAutoclearBit() throws IOException {
    Path meta = rawImage(rawDisk("disk.raw", M, 6), M);
    try (Qcow2Image img = Qcow2Image.open(meta, false)) {
      img.write(0, ByteBuffer.wrap(pattern(512, 1)));
    }
    assertThat(headerLong(meta, Qcow2Header.OFF_AUTOCLEAR)).isEqualTo(Qcow2Header.AUTOCLEAR_DATA_FILE_RAW);
    assertThat(headerLong(meta, Qcow2Header.OFF_INCOMPAT)).isEqualTo(Qcow2Header.INCOMPAT_DATA_FILE);
  }

  @Test
  void theDataFileIsLockedWithTheImage() throws IOException {
    Path raw = rawDisk("disk.raw", M, 7);
    Path meta = rawImage(raw, M);
    try (Qcow2Image img = Qcow2Image.open(meta, false)) {
      assertThatThrownBy(() -> RawImage.open(raw, false)).isInstanceOf(BlockIOException.class)
          .hasMessageContaining("lock");
    }
    // closed: the lock is gone with it
    RawImage.open(raw, false).close();
  }

  @Test
  void aMissingDataFileIsRefusedWithItsName() throws IOException {
    Path raw = rawDisk("disk.raw", M, 8);
    Path meta = rawImage(raw, M);
    Files.delete(raw);
    assertThatThrownBy(() -> Qcow2Image.open(meta, true)).isInstanceOf(BlockIOException.class)
        .hasMessageContaining("data file").hasMessageContaining("disk.raw").hasMessageContaining("no such file");
    // as qemu-img info, inspect describes the image without its data file
    assertThat(Qcow2Image.inspect(meta).dataFile()).isEqualTo("disk.raw");
  }

  @Test
  void theRawBitWithoutADataFileIsRefused() throws IOException {
    Path meta = dir.resolve("plain.qcow2");
    Qcow2Image.create(meta, Qcow2CreateOptions.of(M)).close();
    putHeaderLong(meta, Qcow2Header.OFF_AUTOCLEAR, Qcow2Header.AUTOCLEAR_DATA_FILE_RAW);
    assertThatThrownBy(() -> Qcow2Image.open(meta, true)).isInstanceOf(ImageFormatException.class)
        .hasMessageContaining("data-file-raw (autoclear bit 1) requires a data file");
  }

  @Test
  void theDataFileBitWithoutANameIsRefused() throws IOException {
    Path meta = dir.resolve("plain.qcow2");
    Qcow2Image.create(meta, Qcow2CreateOptions.of(M)).close();
    putHeaderLong(meta, Qcow2Header.OFF_INCOMPAT, Qcow2Header.INCOMPAT_DATA_FILE);
    assertThatThrownBy(() -> Qcow2Image.open(meta, true)).isInstanceOf(ImageFormatException.class)
        .hasMessageContaining("no data file name");
  }

  @Test
  void hostileDataFileNamesAreRefused() throws IOException {
    Path meta = rawImage(rawDisk("disk.raw", M, 9), M);
    // the extension sits right after the 112-byte header: lengthen it past our limit
    try (RandomAccessFile f = new RandomAccessFile(meta.toFile(), "rw")) {
      f.seek(112 + 4);
      f.writeInt(4000);
    }
    assertThatThrownBy(() -> Qcow2Image.open(meta, true)).isInstanceOf(ImageFormatException.class)
        .hasMessageContaining("longer than 1023");
    try (RandomAccessFile f = new RandomAccessFile(meta.toFile(), "rw")) {
      f.seek(112 + 4);
      f.writeInt(0);
    }
    assertThatThrownBy(() -> Qcow2Image.open(meta, true)).isInstanceOf(ImageFormatException.class)
        .hasMessageContaining("is empty");
    // a name that points back at the image itself: data writes would overwrite its metadata
    try (RandomAccessFile f = new RandomAccessFile(meta.toFile(), "rw")) {
      f.seek(112 + 4);
      f.writeInt(8);
      f.write("meta.qco".getBytes(StandardCharsets.US_ASCII));
    }
    Files.move(meta, dir.resolve("meta.qco"));
    assertThatThrownBy(() -> Qcow2Image.open(dir.resolve("meta.qco"), false)).isInstanceOf(ImageFormatException.class)
        .hasMessageContaining("is the image itself");
  }

  @Test
  void createOptionsAreValidatedWithQemuImgsMessages() {
    assertThatThrownBy(() -> new Qcow2CreateOptions(M, 65536, null, null, null, true))
        .isInstanceOf(IllegalArgumentException.class).hasMessage("data-file-raw requires data-file");
    assertThatThrownBy(() -> Qcow2CreateOptions.of(M).withBacking("b.raw", "raw").withDataFile("d.raw", true))
        .isInstanceOf(IllegalArgumentException.class)
        .hasMessage("Backing file and data-file-raw cannot be used at the same time");
    assertThatThrownBy(() -> Qcow2CreateOptions.of(M).withDataFile("", false))
        .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("Could not create ''");
    assertThatThrownBy(() -> Qcow2CreateOptions.of(M).withDataFile("x".repeat(1024), false))
        .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("1023");
    // a backing file with a non-raw data file is fine, as in qemu-img
    assertThat(Qcow2CreateOptions.of(M).withBacking("b.raw", "raw").withDataFile("d.raw", false).dataFile())
        .isEqualTo("d.raw");
  }

  @Test
  void aCreateIntoAMissingDirectoryLeavesNothing() {
    Path meta = dir.resolve("meta.qcow2");
    assertThatThrownBy(() -> Qcow2Image.create(meta, Qcow2CreateOptions.of(M).withDataFile("nodir/d.raw", true)))
        .isInstanceOf(BlockIOException.class).hasMessageContaining("No such file or directory");
    assertThat(meta).doesNotExist();
  }

  @Test
  void blockStatusOfARawImageFollowsTheL2Entries() throws IOException {
    Path meta = rawImage(rawDisk("disk.raw", M, 10), M);
    try (Qcow2Image img = Qcow2Image.open(meta, false)) {
      img.writeZeroes(64 * K, 64 * K, WriteFlag.MAY_UNMAP);
      List<Extent> st = img.blockStatus(0, M);
      assertThat(st).containsExactly(Extent.data(0, 64 * K), Extent.zero(64 * K, 64 * K, true),
          Extent.data(128 * K, M - 128 * K));
    }
  }

  private static long headerLong(Path p, int off) throws IOException {
    try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "r")) {
      f.seek(off);
      return f.readLong();
    }
  }

  private static void putHeaderLong(Path p, int off, long v) throws IOException {
    try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
      f.seek(off);
      f.writeLong(v);
    }
  }
}
