package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.testkit.Property;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The bitmap table codec, cluster by cluster, against {@link DirtyBitmap#toBytes()} (the same qcow2
 * bit layout, built whole) as the reference, and loaded back through a real file.
 */
class BitmapTablesTest {

  @TempDir
  Path dir;

  /** The first op gives the geometry (size, granularity bits, cluster bits); the others set or reset ranges. */
  record Op(boolean set, long offset, long length) {}

  private static List<Op> ops(SplittableRandom r) {
    List<Op> ops = new ArrayList<>();
    int clusterBits = 9 + r.nextInt(3);
    int gbits = 9 + r.nextInt(4);
    long size = (1 + r.nextLong(1L << (clusterBits + 3 + gbits + 2))) & ~511L;
    ops.add(new Op(true, size, (long) gbits << 8 | clusterBits));
    int n = r.nextInt(12);
    for (int i = 0; i < n; i++) {
      long off = r.nextLong(size);
      long len = 1 + r.nextLong(Math.min(size - off, size / 3 + 1));
      ops.add(new Op(r.nextInt(4) != 0, off, len));
    }
    return ops;
  }

  @Test
  void serialisedClustersAreToBytesAndLoadBackTheSameBits() {
    Property.check("bitmap table codec matches toBytes", 150, BitmapTablesTest::ops, ops -> {
      long size = ops.get(0).offset();
      int gbits = (int) (ops.get(0).length() >>> 8);
      int clusterSize = 1 << (int) (ops.get(0).length() & 0xff);
      DirtyBitmap b = new DirtyBitmap(size, 1 << gbits);
      for (Op op : ops.subList(1, ops.size())) {
        if (op.set()) {
          b.set(op.offset(), op.length());
        } else {
          long g = 1L << gbits;
          long start = Qcow2Header.ceilDiv(op.offset(), g) * g;
          long end = Math.min(size, (op.offset() + op.length()) & -g);
          if (end > start) {
            b.reset(start, end - start);
          }
        }
      }
      byte[] whole = b.toBytes();
      int n = (int) BitmapDirectory.tableSizeFor(size, gbits, clusterSize);
      assertThat((long) n).isEqualTo(Qcow2Header.ceilDiv(whole.length, clusterSize));
      Path f = dir.resolve("t" + System.nanoTime());
      try (FileChannel ch = FileChannel.open(f, StandardOpenOption.CREATE_NEW, StandardOpenOption.READ,
          StandardOpenOption.WRITE)) {
        HostFile file = new HostFile(ch, CacheMode.WRITEBACK);
        long[] table = new long[n];
        ByteBuffer buf = ByteBuffer.allocate(clusterSize);
        for (int i = 0; i < n; i++) {
          byte[] expect = Arrays.copyOf(Arrays.copyOfRange(whole, i * clusterSize,
              Math.min(whole.length, (i + 1) * clusterSize)), clusterSize);
          BitmapTables.Content c = BitmapTables.content(b, i, clusterSize);
          BitmapTables.serialise(b, i, buf);
          byte[] got = new byte[clusterSize];
          buf.get(0, got);
          assertThat(got).as("cluster %d", i).isEqualTo(expect);
          boolean allZero = true;
          for (byte x : expect) {
            allZero &= x == 0;
          }
          assertThat(c == BitmapTables.Content.ZEROS).isEqualTo(allZero);
          switch (c) {
            case ZEROS -> table[i] = 0;
            case ONES -> table[i] = BitmapTables.ALL_ONES;
            case MIXED -> {
              long off = (long) (i + 1) * clusterSize;
              file.write(ByteBuffer.wrap(got), off);
              table[i] = off;
            }
          }
          assertThat(BitmapTables.validEntry(table[i], clusterSize)).isTrue();
        }
        DirtyBitmap back = new DirtyBitmap(size, 1 << gbits);
        BitmapTables.load(file, table, back, clusterSize);
        assertThat(back.toBytes()).isEqualTo(whole);
        assertThat(back.count()).isEqualTo(b.count());
      }
    });
  }

  @Test
  void tableEntriesAreCheckedAsQemuChecksThem() {
    assertThat(BitmapTables.validEntry(0, 512)).isTrue();
    assertThat(BitmapTables.validEntry(1, 512)).isTrue(); // all ones
    assertThat(BitmapTables.validEntry(0x10000, 65536)).isTrue();
    assertThat(BitmapTables.validEntry(0x10001, 65536)).as("all-ones flag with an offset").isFalse();
    assertThat(BitmapTables.validEntry(0x10200, 65536)).as("offset not cluster aligned").isFalse();
    assertThat(BitmapTables.validEntry(2, 512)).as("reserved bit 1").isFalse();
    assertThat(BitmapTables.validEntry(1L << 56 | 0x10000, 65536)).as("reserved bit 56").isFalse();
  }

  @Test
  void aTailGranuleAndBitsPastTheEndAreHandledAsQemuDoes() throws Exception {
    // 3 granules of 512 in a 1300-byte disk rounded to 1536; bits past the last granule are ignored
    DirtyBitmap b = new DirtyBitmap(1536, 512);
    Path f = dir.resolve("tail");
    try (FileChannel ch = FileChannel.open(f, StandardOpenOption.CREATE_NEW, StandardOpenOption.READ,
        StandardOpenOption.WRITE)) {
      HostFile file = new HostFile(ch, CacheMode.WRITEBACK);
      ByteBuffer c = ByteBuffer.allocate(512);
      c.put(0, (byte) 0xFC); // granules 2..7 set: only 2 exists
      file.write(c, 512);
      BitmapTables.load(file, new long[] {512}, b, 512);
    }
    assertThat(b.count()).isEqualTo(512);
    assertThat(b.isDirty(1024)).isTrue();
    assertThat(b.isDirty(512)).isFalse();
  }
}
