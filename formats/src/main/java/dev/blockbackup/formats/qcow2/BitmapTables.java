package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.formats.ImageFormatException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * A persistent bitmap's table and data clusters (docs/interop/qcow2.txt, "Bitmap table" and
 * "Bitmap data"): table entry k says where the k-th cluster of the serialised bitmap lies, 0 for a
 * cluster of zeros, and offset 0 with bit 0 set for a cluster of ones. Bits are granules, least
 * significant bit first. The codec works one cluster at a time through {@link DirtyBitmap}'s public
 * range API, so no array of the whole serialised bitmap is ever built.
 */
final class BitmapTables {

  /** Bits 1..8 and 56..63 of a table entry are reserved. */
  static final long ENTRY_RESERVED = 0xff000000000001feL;
  static final long ENTRY_OFFSET_MASK = 0x00fffffffffffe00L;
  static final long ALL_ONES = 1L;

  private BitmapTables() {}

  /** Whether table entry {@code e} is valid, as QEMU checks it. */
  static boolean validEntry(long e, int clusterSize) {
    if ((e & ENTRY_RESERVED) != 0) {
      return false;
    }
    long off = e & ENTRY_OFFSET_MASK;
    return off == 0 || ((e & ALL_ONES) == 0 && off % clusterSize == 0);
  }

  /** Reads the table of {@code e} (its size is bounded by the directory checks) and checks each entry. */
  static long[] read(HostFile file, BitmapDirectory.Entry e, int clusterSize, String where) throws IOException {
    int n = e.tableSize();
    ByteBuffer b = ByteBuffer.allocate(n * 8);
    file.read(b, e.tableOffset());
    b.flip();
    long[] table = new long[n];
    b.asLongBuffer().get(table);
    for (int i = 0; i < n; i++) {
      if (!validEntry(table[i], clusterSize)) {
        throw new ImageFormatException(where + ": bitmap '" + e.name() + "': entry " + i + " of its table at 0x"
            + Long.toHexString(e.tableOffset()) + " is invalid: 0x" + Long.toHexString(table[i]));
      }
    }
    return table;
  }

  /** Image bytes one data cluster covers at {@code granularity}. */
  static long coverage(int clusterSize, int granularity) {
    return (long) clusterSize * 8 * granularity;
  }

  /** Sets in {@code bitmap} (clean on entry) the bits {@code table}'s clusters hold. */
  static void load(HostFile file, long[] table, DirtyBitmap bitmap, int clusterSize) throws IOException {
    long size = bitmap.size();
    int granularity = bitmap.granularity();
    long cover = coverage(clusterSize, granularity);
    ByteBuffer buf = ByteBuffer.allocate(clusterSize).order(ByteOrder.LITTLE_ENDIAN);
    for (int i = 0; i < table.length; i++) {
      long start = i * cover;
      if (start >= size) {
        break;
      }
      long end = Math.min(size, start + cover);
      long e = table[i];
      long off = e & ENTRY_OFFSET_MASK;
      if (off == 0) {
        if ((e & ALL_ONES) != 0) {
          bitmap.set(start, end - start);
        }
        continue;
      }
      buf.clear();
      file.read(buf, off);
      long bits = Qcow2Header.ceilDiv(end - start, granularity);
      long bit = nextBit(buf, 0, bits, true);
      while (bit >= 0) {
        long stop = nextBit(buf, bit, bits, false);
        if (stop < 0) {
          stop = bits;
        }
        long from = start + bit * granularity;
        bitmap.set(from, Math.min(end, start + stop * granularity) - from);
        bit = stop >= bits ? -1 : nextBit(buf, stop, bits, true);
      }
    }
  }

  /** The first bit at or after {@code from} below {@code limit} that is {@code value}, or -1. */
  static long nextBit(ByteBuffer le, long from, long limit, boolean value) {
    long bit = from;
    while (bit < limit) {
      int w = (int) (bit >>> 6);
      long word = le.getLong(w * 8);
      if (!value) {
        word = ~word;
      }
      word &= -1L << (bit & 63);
      if (word != 0) {
        long found = ((long) w << 6) + Long.numberOfTrailingZeros(word);
        return found < limit ? found : -1;
      }
      bit = (long) (w + 1) << 6;
    }
    return -1;
  }

  /** What one data cluster of the serialisation holds. */
  enum Content { ZEROS, ONES, MIXED }

  /** Which of zeros, ones or mixed bits cluster {@code i} of {@code bitmap}'s serialisation holds. */
  static Content content(DirtyBitmap bitmap, int i, int clusterSize) {
    long cover = coverage(clusterSize, bitmap.granularity());
    long start = i * cover;
    long end = Math.min(bitmap.size(), start + cover);
    long dirty = bitmap.count(start, end - start);
    return dirty == 0 ? Content.ZEROS : dirty == end - start ? Content.ONES : Content.MIXED;
  }

  /** Fills {@code out} (one cluster, zeroed here) with cluster {@code i} of {@code bitmap}'s serialisation. */
  static void serialise(DirtyBitmap bitmap, int i, ByteBuffer out) {
    int clusterSize = out.capacity();
    int granularity = bitmap.granularity();
    long cover = coverage(clusterSize, granularity);
    long start = i * cover;
    long end = Math.min(bitmap.size(), start + cover);
    long[] words = new long[clusterSize / 8];
    long pos = start;
    DirtyBitmap.Area a;
    while (pos < end && (a = bitmap.nextDirtyArea(pos, end, Long.MAX_VALUE)) != null) {
      long first = (a.offset() - start) / granularity;
      long last = Qcow2Header.ceilDiv(a.end() - start, granularity);
      setBits(words, first, last);
      pos = a.end();
    }
    out.clear();
    out.order(ByteOrder.LITTLE_ENDIAN).asLongBuffer().put(words);
    out.order(ByteOrder.BIG_ENDIAN);
  }

  private static void setBits(long[] words, long from, long to) {
    for (long b = from; b < to; ) {
      int w = (int) (b >>> 6);
      int lo = (int) (b & 63);
      int n = (int) Math.min(64 - lo, to - b);
      long mask = n == 64 ? -1L : ((1L << n) - 1) << lo;
      words[w] |= mask;
      b += n;
    }
  }
}
