package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.ImageFormatException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * The bitmap directory of docs/interop/qcow2.txt: one entry per persistent bitmap (where its table
 * lies, how long it is, its flags, type, granularity and name), entries 8-byte aligned and packed
 * one after another. Parsing checks every field as QEMU 7.2 does at open and refuses what it
 * refuses (extra data included: QEMU supports none), with a message that names the bitmap, the
 * field, the value and the limit; sizes are checked before anything is allocated.
 */
final class BitmapDirectory {

  /** QEMU's limits (QCOW2_MAX_BITMAPS and the BME_* constraints). */
  static final int MAX_BITMAPS = 65535;
  static final long MAX_DIRECTORY_SIZE = 1024L * MAX_BITMAPS;
  static final int MAX_NAME_SIZE = 1023;
  static final long MAX_TABLE_SIZE = 0x8000000L;
  static final long MAX_PHYS_SIZE = 0x20000000L;
  static final int MIN_GRANULARITY_BITS = 9;
  static final int MAX_GRANULARITY_BITS = 31;
  /** The largest granularity our {@link dev.blockbackup.formats.DirtyBitmap} holds (an int power of two). */
  static final int MAX_SUPPORTED_GRANULARITY_BITS = 30;

  static final int FLAG_IN_USE = 1;
  static final int FLAG_AUTO = 1 << 1;
  /** Every other flag (bit 2, extra_data_compatible, included) is reserved to QEMU. */
  static final int RESERVED_FLAGS = ~(FLAG_IN_USE | FLAG_AUTO);
  static final int TYPE_DIRTY_TRACKING = 1;
  /** The fixed part of an entry. */
  static final int ENTRY_HEADER = 24;

  /** The bitmaps header extension: nb_bitmaps, reserved, directory size, directory offset. */
  static final int EXTENSION_LENGTH = 24;

  /** One directory entry, decoded. */
  record Entry(long tableOffset, int tableSize, int flags, int granularityBits, String name) {
    boolean inUse() {
      return (flags & FLAG_IN_USE) != 0;
    }

    boolean auto() {
      return (flags & FLAG_AUTO) != 0;
    }

    Entry withFlags(int newFlags) {
      return new Entry(tableOffset, tableSize, newFlags, granularityBits, name);
    }

    /** Bytes of its bitmap table. */
    long tableBytes() {
      return Integer.toUnsignedLong(tableSize) * 8;
    }
  }

  private BitmapDirectory() {}

  /** The size of an entry with a name of {@code nameBytes} bytes and no extra data. */
  static int entrySize(int nameBytes) {
    return (ENTRY_HEADER + nameBytes + 7) & ~7;
  }

  /** The bitmap table entries needed for {@code imageSize} bytes at 2^{@code granularityBits}. */
  static long tableSizeFor(long imageSize, int granularityBits, int clusterSize) {
    long granules = Qcow2Header.ceilDiv(imageSize, 1L << granularityBits);
    long bytes = Qcow2Header.ceilDiv(granules, 8);
    return Qcow2Header.ceilDiv(bytes, clusterSize);
  }

  /**
   * Decodes and checks {@code dir} ({@code size} bytes read from {@code offset}) holding {@code nb}
   * entries, for an image of {@code imageSize} bytes.
   */
  static List<Entry> parse(ByteBuffer dir, long nb, int clusterSize, long imageSize, String where, long offset)
      throws ImageFormatException {
    List<Entry> out = new ArrayList<>();
    int size = dir.limit();
    int pos = 0;
    while (pos < size) {
      String at = where + ": bitmap directory entry " + out.size() + " at 0x" + Long.toHexString(offset + pos);
      if (pos + ENTRY_HEADER > size) {
        throw new ImageFormatException(at + ": the entry overruns the directory (" + size + " bytes)");
      }
      if (out.size() >= nb) {
        throw new ImageFormatException(at + ": more bitmaps in the directory than the " + nb
            + " the bitmaps extension gives");
      }
      long tableOffset = dir.getLong(pos);
      long tableSize = Integer.toUnsignedLong(dir.getInt(pos + 8));
      int flags = dir.getInt(pos + 12);
      int type = dir.get(pos + 16) & 0xff;
      int granularityBits = dir.get(pos + 17) & 0xff;
      int nameSize = dir.getShort(pos + 18) & 0xffff;
      long extra = Integer.toUnsignedLong(dir.getInt(pos + 20));
      long entryEnd = pos + ((ENTRY_HEADER + nameSize + extra + 7) & ~7L);
      if (entryEnd > size) {
        throw new ImageFormatException(at + ": the entry (name of " + nameSize + " bytes, extra data of " + extra
            + ") overruns the directory (" + size + " bytes)");
      }
      if (extra != 0) {
        throw new ImageFormatException(at + ": bitmap extra data (" + extra + " bytes) is not supported, as in QEMU");
      }
      byte[] nameBytes = new byte[nameSize];
      dir.get(pos + ENTRY_HEADER, nameBytes);
      String name = new String(nameBytes, StandardCharsets.UTF_8);
      String bm = at + " (bitmap '" + name + "')";
      if (tableSize == 0 || tableSize > MAX_TABLE_SIZE) {
        throw new ImageFormatException(bm + ": bitmap_table_size " + tableSize + " is outside 1.." + MAX_TABLE_SIZE);
      }
      if (tableOffset <= 0 || tableOffset % clusterSize != 0 || tableOffset >= RefcountTable.MAX_HOST_OFFSET) {
        throw new ImageFormatException(bm + ": bitmap_table_offset 0x" + Long.toHexString(tableOffset)
            + " is not a cluster-aligned host offset (cluster size " + clusterSize + ")");
      }
      if (granularityBits < MIN_GRANULARITY_BITS || granularityBits > MAX_GRANULARITY_BITS) {
        throw new ImageFormatException(bm + ": granularity_bits " + granularityBits + " is outside "
            + MIN_GRANULARITY_BITS + ".." + MAX_GRANULARITY_BITS);
      }
      if ((flags & RESERVED_FLAGS) != 0) {
        throw new ImageFormatException(bm + ": reserved flags 0x" + Integer.toHexString(flags & RESERVED_FLAGS)
            + " are set");
      }
      if (nameSize == 0 || nameSize > MAX_NAME_SIZE) {
        throw new ImageFormatException(bm + ": name_size " + nameSize + " is outside 1.." + MAX_NAME_SIZE);
      }
      if (type != TYPE_DIRTY_TRACKING) {
        throw new ImageFormatException(bm + ": type " + type + " is not a dirty tracking bitmap (1)");
      }
      long phys = tableSize * clusterSize;
      if (phys > MAX_PHYS_SIZE) {
        throw new ImageFormatException(bm + ": its table of " + tableSize + " clusters (" + phys
            + " bytes of bitmap data) is above QEMU's limit of " + MAX_PHYS_SIZE);
      }
      // An in-use bitmap may be stale in size (saved before a resize); its data is never read.
      if ((flags & FLAG_IN_USE) == 0 && Qcow2Header.ceilDiv(imageSize, 1L << granularityBits) > phys * 8) {
        throw new ImageFormatException(bm + ": its table of " + tableSize + " entries covers less than the image ("
            + imageSize + " bytes at granularity 2^" + granularityBits + ")");
      }
      for (Entry e : out) {
        if (e.name().equals(name)) {
          throw new ImageFormatException(bm + ": the name is used twice in the directory");
        }
      }
      out.add(new Entry(tableOffset, (int) tableSize, flags, granularityBits, name));
      pos = (int) entryEnd;
    }
    if (out.size() != nb) {
      throw new ImageFormatException(where + ": the bitmap directory holds " + out.size()
          + " bitmaps, fewer than the " + nb + " the bitmaps extension gives");
    }
    return out;
  }

  /** The size in bytes of the directory of {@code entries}. */
  static long sizeOf(List<Entry> entries) {
    long n = 0;
    for (Entry e : entries) {
      n += entrySize(e.name().getBytes(StandardCharsets.UTF_8).length);
    }
    return n;
  }

  /** Encodes {@code entries} as a directory, with no extra data. */
  static ByteBuffer encode(List<Entry> entries) {
    ByteBuffer b = ByteBuffer.allocate((int) sizeOf(entries));
    int pos = 0;
    for (Entry e : entries) {
      byte[] name = e.name().getBytes(StandardCharsets.UTF_8);
      b.putLong(pos, e.tableOffset()).putInt(pos + 8, e.tableSize()).putInt(pos + 12, e.flags());
      b.put(pos + 16, (byte) TYPE_DIRTY_TRACKING).put(pos + 17, (byte) e.granularityBits());
      b.putShort(pos + 18, (short) name.length).putInt(pos + 20, 0);
      b.put(pos + ENTRY_HEADER, name);
      pos += entrySize(name.length);
    }
    return b;
  }

  /** The bitmaps header extension as QEMU checks it at open; fields: nb, directory size, offset. */
  record Extension(long nbBitmaps, long directorySize, long directoryOffset) {}

  /** Decodes the extension's {@code len} bytes at {@code data} of cluster 0 and checks it. */
  static Extension parseExtension(ByteBuffer c0, int data, long len, int clusterSize, String where)
      throws ImageFormatException {
    if (len != EXTENSION_LENGTH) {
      throw new ImageFormatException(where + ": the bitmaps extension has " + len + " bytes, not "
          + EXTENSION_LENGTH);
    }
    long nb = Integer.toUnsignedLong(c0.getInt(data));
    int reserved = c0.getInt(data + 4);
    long dirSize = c0.getLong(data + 8);
    long dirOffset = c0.getLong(data + 16);
    if (reserved != 0) {
      throw new ImageFormatException(where + ": the bitmaps extension's reserved field is 0x"
          + Integer.toHexString(reserved) + ", not zero");
    }
    if (nb > MAX_BITMAPS) {
      throw new ImageFormatException(where + ": the bitmaps extension gives " + nb + " bitmaps, above QEMU's limit of "
          + MAX_BITMAPS);
    }
    if (nb == 0) {
      throw new ImageFormatException(where + ": the bitmaps extension gives zero bitmaps");
    }
    if (dirOffset <= 0 || dirOffset % clusterSize != 0 || dirOffset >= RefcountTable.MAX_HOST_OFFSET) {
      throw new ImageFormatException(where + ": bitmap_directory_offset 0x" + Long.toHexString(dirOffset)
          + " is not a cluster-aligned host offset (cluster size " + clusterSize + ")");
    }
    if (dirSize <= 0 || dirSize > MAX_DIRECTORY_SIZE) {
      throw new ImageFormatException(where + ": bitmap_directory_size " + Long.toUnsignedString(dirSize)
          + " is outside 1.." + MAX_DIRECTORY_SIZE);
    }
    return new Extension(nb, dirSize, dirOffset);
  }
}
