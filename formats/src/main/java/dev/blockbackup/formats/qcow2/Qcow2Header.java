package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.ImageFormatException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;

/**
 * The qcow2 header of cluster 0 and its extensions, as docs/interop/qcow2.txt lays them out. Parsing
 * refuses what QEMU 7.2 refuses at open, with a message that names the field, its value and the
 * limit. We never rewrite the whole header (only single fields in place), so unknown extensions,
 * the feature-name table and unknown additional fields are preserved as they are.
 */
final class Qcow2Header {

  static final int MAGIC = 0x514649FB;
  static final int V2_HEADER_LENGTH = 72;
  static final int V3_MIN_HEADER_LENGTH = 104;
  /** What QEMU 7.2 writes: the v3 fields plus compression_type and its padding. */
  static final int V3_HEADER_LENGTH = 112;

  static final long INCOMPAT_DIRTY = 1L;
  static final long INCOMPAT_CORRUPT = 1L << 1;
  static final long INCOMPAT_DATA_FILE = 1L << 2;
  static final long INCOMPAT_COMPRESSION = 1L << 3;
  static final long INCOMPAT_EXTL2 = 1L << 4;
  static final long KNOWN_INCOMPAT = 0x1F;
  static final long COMPAT_LAZY_REFCOUNTS = 1L;
  /** Autoclear bit 1: the external data file is a valid raw image of the guest disk (data_file_raw). */
  static final long AUTOCLEAR_DATA_FILE_RAW = 1L << 1;

  static final int EXT_END = 0;
  static final int EXT_BACKING_FORMAT = 0xE2792ACA;
  static final int EXT_FEATURE_TABLE = 0x6803F857;
  static final int EXT_BITMAPS = 0x23852875;
  static final int EXT_DATA_FILE = 0x44415441;
  /** The longest external data file name we accept, in bytes (a path, as the backing file name). */
  static final int MAX_DATA_FILE_NAME = 1023;

  /** Byte offsets of the fields we rewrite in place. */
  static final int OFF_INCOMPAT = 72;
  static final int OFF_AUTOCLEAR = 88;
  static final long AUTOCLEAR_BITMAPS = 1L;

  static final int MIN_CLUSTER_BITS = 9;
  static final int MAX_CLUSTER_BITS = 21;
  /** QEMU's QCOW_MAX_L1_SIZE and QCOW_MAX_REFTABLE_SIZE. */
  static final long MAX_L1_BYTES = 32L << 20;
  static final long MAX_REFTABLE_BYTES = 8L << 20;
  static final int MAX_BACKING_NAME = 1023;
  static final long MAX_SNAPSHOTS = 65536;
  /** QEMU refuses a backing-format extension of 16 bytes or more. */
  static final int MAX_BACKING_FORMAT = 15;

  final int version;
  final long backingFileOffset;
  final int backingFileSize;
  final int clusterBits;
  final long size;
  final int cryptMethod;
  final long l1Size;
  final long l1TableOffset;
  final long refcountTableOffset;
  final long refcountTableClusters;
  final long nbSnapshots;
  final long snapshotsOffset;
  final long incompatible;
  final long compatible;
  final long autoclear;
  final int refcountOrder;
  final int headerLength;
  final int compressionType;

  /** Filled by {@link #parseExtensions}. */
  String backingFile;
  String backingFormat;
  boolean hasBitmaps;
  /** Where the bitmaps extension's type field lies in cluster 0, or -1; its length field. */
  int bitmapsExtOffset = -1;
  long bitmapsExtLength;
  /** The external data file name (extension 0x44415441), or null. */
  String dataFile;
  /** Feature-name table: key {@code type << 8 | bit}. */
  final Map<Integer, String> featureNames = new HashMap<>();

  private Qcow2Header(ByteBuffer b, String where) throws ImageFormatException {
    version = b.getInt(4);
    backingFileOffset = b.getLong(8);
    backingFileSize = b.getInt(16);
    clusterBits = b.getInt(20);
    size = b.getLong(24);
    cryptMethod = b.getInt(32);
    l1Size = Integer.toUnsignedLong(b.getInt(36));
    l1TableOffset = b.getLong(40);
    refcountTableOffset = b.getLong(48);
    refcountTableClusters = Integer.toUnsignedLong(b.getInt(56));
    nbSnapshots = Integer.toUnsignedLong(b.getInt(60));
    snapshotsOffset = b.getLong(64);
    if (version == 2) {
      incompatible = 0;
      compatible = 0;
      autoclear = 0;
      refcountOrder = 4;
      headerLength = V2_HEADER_LENGTH;
      compressionType = 0;
    } else {
      incompatible = b.getLong(72);
      compatible = b.getLong(80);
      autoclear = b.getLong(88);
      refcountOrder = b.getInt(96);
      headerLength = b.getInt(100);
      compressionType = headerLength > 104 && b.limit() > 104 ? b.get(104) & 0xff : 0;
    }
  }

  int clusterSize() {
    return 1 << clusterBits;
  }

  /**
   * Parses and checks the fixed part. {@code b} holds the first {@code min(fileSize, 112)} bytes of
   * the file, big-endian.
   */
  static Qcow2Header parse(ByteBuffer b, long fileSize, String where) throws ImageFormatException {
    if (fileSize < 8) {
      throw new ImageFormatException(where + ": truncated header: the file has " + fileSize + " bytes");
    }
    if (b.getInt(0) != MAGIC) {
      throw new ImageFormatException(
          where + ": bad magic 0x" + Integer.toHexString(b.getInt(0)) + " (a qcow2 image starts with 0x514649fb)");
    }
    int version = b.getInt(4);
    if (version != 2 && version != 3) {
      throw new ImageFormatException(where + ": unsupported qcow2 version " + version + " (only 2 and 3 exist)");
    }
    int need = version == 2 ? V2_HEADER_LENGTH : V3_MIN_HEADER_LENGTH;
    if (fileSize < need) {
      throw new ImageFormatException(
          where + ": truncated header: the file has " + fileSize + " bytes, a v" + version + " header needs " + need);
    }
    Qcow2Header h = new Qcow2Header(b, where);
    h.check(fileSize, where);
    return h;
  }

  private void check(long fileSize, String where) throws ImageFormatException {
    if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
      throw new ImageFormatException(
          where + ": cluster_bits " + clusterBits + " is outside " + MIN_CLUSTER_BITS + ".." + MAX_CLUSTER_BITS);
    }
    int cs = clusterSize();
    if (version == 3) {
      if (headerLength < V3_MIN_HEADER_LENGTH || headerLength % 8 != 0 || headerLength > cs) {
        throw new ImageFormatException(where + ": header_length " + headerLength
            + " is invalid (a v3 header needs at least 104 bytes, a multiple of 8, at most the cluster size " + cs + ")");
      }
      if (headerLength > fileSize) {
        throw new ImageFormatException(
            where + ": truncated header: header_length is " + headerLength + " but the file has " + fileSize + " bytes");
      }
    }
    long unknown = incompatible & ~KNOWN_INCOMPAT;
    if (unknown != 0) {
      // the names come from the feature table, which is only parsed later; see checkFeatures
      return;
    }
    checkKnownFields(where);
  }

  /** The checks that come after the unknown-incompatible-feature check (which needs the name table). */
  private void checkKnownFields(String where) throws ImageFormatException {
    if (refcountOrder < 0 || refcountOrder > 6) {
      throw new ImageFormatException(where + ": refcount_order " + refcountOrder + " is outside 0..6");
    }
    if (compressionType != 0 && compressionType != 1) {
      throw new ImageFormatException(where + ": unknown compression_type " + compressionType);
    }
    boolean bit = (incompatible & INCOMPAT_COMPRESSION) != 0;
    if (bit != (compressionType != 0)) {
      throw new ImageFormatException(where + ": compression_type " + compressionType
          + (bit ? " with" : " without") + " the compression-type incompatible bit (3): the header is inconsistent");
    }
    if (compressionType == 1) {
      throw new ImageFormatException(where + ": zstd compression is not supported (compression_type 1)");
    }
    if ((incompatible & INCOMPAT_EXTL2) != 0) {
      throw new ImageFormatException(where + ": extended L2 entries are not supported (incompatible bit 4)");
    }
    if (cryptMethod != 0) {
      throw new ImageFormatException(where + ": encrypted images are not supported (crypt_method " + cryptMethod + ")");
    }
    if (size < 0) {
      throw new ImageFormatException(where + ": virtual size " + Long.toUnsignedString(size) + " is too large");
    }
    int cs = clusterSize();
    long l2Entries = cs / 8;
    long needL1 = ceilDiv(size, (long) cs * l2Entries);
    if (l1Size * 8 > MAX_L1_BYTES) {
      throw new ImageFormatException(where + ": l1_size " + l1Size + " is above QEMU's limit of "
          + (MAX_L1_BYTES / 8) + " entries (32 MiB of L1 table)");
    }
    if (l1Size < needL1) {
      throw new ImageFormatException(
          where + ": l1_size " + l1Size + " is too small for the virtual size " + size + " (needs " + needL1 + ")");
    }
    if (l1Size > 0) {
      checkAligned("l1_table_offset", l1TableOffset, where);
    }
    if (refcountTableClusters == 0) {
      throw new ImageFormatException(where + ": refcount_table_clusters is 0");
    }
    if (refcountTableClusters * cs > MAX_REFTABLE_BYTES) {
      throw new ImageFormatException(where + ": refcount table of " + refcountTableClusters + " clusters ("
          + refcountTableClusters * cs + " bytes) is above QEMU's limit of 8 MiB");
    }
    checkAligned("refcount_table_offset", refcountTableOffset, where);
    if (nbSnapshots > MAX_SNAPSHOTS) {
      throw new ImageFormatException(where + ": nb_snapshots " + nbSnapshots + " is above QEMU's limit of 65536");
    }
    if (nbSnapshots > 0) {
      checkAligned("snapshots_offset", snapshotsOffset, where);
    }
    if (backingFileOffset != 0) {
      if (backingFileSize < 0 || backingFileSize > MAX_BACKING_NAME) {
        throw new ImageFormatException(where + ": backing file name of " + Integer.toUnsignedString(backingFileSize)
            + " bytes is longer than " + MAX_BACKING_NAME);
      }
      if (backingFileOffset < 0 || backingFileOffset + backingFileSize > cs) {
        throw new ImageFormatException(where + ": backing file name at " + backingFileOffset + " (+" + backingFileSize
            + ") lies outside cluster 0 (" + cs + " bytes)");
      }
    }
  }

  private void checkAligned(String field, long value, String where) throws ImageFormatException {
    if (value <= 0 || (value & (clusterSize() - 1)) != 0 || value >= (1L << 56)) {
      throw new ImageFormatException(where + ": " + field + " 0x" + Long.toHexString(value)
          + " is not a cluster-aligned host offset (cluster size " + clusterSize() + ")");
    }
  }

  /**
   * Reads the extensions and the backing file name from cluster 0 ({@code c0}: the first {@code
   * min(clusterSize, fileSize)} bytes), then names unknown incompatible features.
   */
  void parseExtensions(ByteBuffer c0, String where) throws ImageFormatException {
    int end = (int) (backingFileOffset != 0 ? Math.min(backingFileOffset, c0.limit()) : c0.limit());
    int off = headerLength;
    // v2 images carry extensions too (from byte 72): qemu-img writes the backing format there.
    while (off + 8 <= end) {
      int type = c0.getInt(off);
      long len = Integer.toUnsignedLong(c0.getInt(off + 4));
      if (type == EXT_END) {
        break;
      }
      if (off + 8 + len > end) {
        throw new ImageFormatException(where + ": header extension 0x" + Integer.toHexString(type) + " at " + off
            + " with " + len + " bytes overruns the extension area (ends at " + end + ")");
      }
      int data = off + 8;
      switch (type) {
        case EXT_BACKING_FORMAT -> {
          if (len > MAX_BACKING_FORMAT) {
            throw new ImageFormatException(where + ": backing format extension of " + len + " bytes is too long");
          }
          backingFormat = string(c0, data, (int) len);
        }
        case EXT_FEATURE_TABLE -> {
          for (int e = 0; e + 48 <= len; e += 48) {
            int t = c0.get(data + e) & 0xff;
            int bit = c0.get(data + e + 1) & 0xff;
            String name = string(c0, data + e + 2, 46);
            int nul = name.indexOf('\0');
            featureNames.put(t << 8 | bit, nul >= 0 ? name.substring(0, nul) : name);
          }
        }
        case EXT_BITMAPS -> {
          hasBitmaps = true;
          bitmapsExtOffset = off;
          bitmapsExtLength = len;
        }
        case EXT_DATA_FILE -> {
          if (len == 0 || len > MAX_DATA_FILE_NAME) {
            throw new ImageFormatException(where + ": external data file name of " + len
                + " bytes (extension 0x44415441) is empty or longer than " + MAX_DATA_FILE_NAME);
          }
          dataFile = string(c0, data, (int) len);
          if (dataFile.indexOf('\0') >= 0) {
            throw new ImageFormatException(where + ": external data file name contains a NUL byte");
          }
        }
        default -> {
          // unknown extensions are skipped; they stay on disk untouched since we never rewrite cluster 0
        }
      }
      off = data + (int) ((len + 7) & ~7L);
    }
    long unknown = incompatible & ~KNOWN_INCOMPAT;
    if (unknown != 0) {
      StringBuilder m = new StringBuilder(where).append(": unsupported incompatible feature");
      String sep = " ";
      for (int bit = 0; bit < 64; bit++) {
        if ((unknown & (1L << bit)) != 0) {
          m.append(sep).append("bit ").append(bit);
          String name = featureNames.get(bit);
          if (name != null) {
            m.append(" ('").append(name).append("')");
          }
          sep = ", ";
        }
      }
      throw new ImageFormatException(m.toString());
    }
    checkKnownFields(where);
    checkDataFile(where);
    if (backingFileOffset != 0) {
      if (backingFileOffset + backingFileSize > c0.limit()) {
        throw new ImageFormatException(where + ": backing file name at " + backingFileOffset + " lies past the end of the file");
      }
      backingFile = string(c0, (int) backingFileOffset, backingFileSize);
    }
  }

  /** What QEMU's open refuses about external data files, once the extensions are known. */
  private void checkDataFile(String where) throws ImageFormatException {
    boolean external = (incompatible & INCOMPAT_DATA_FILE) != 0;
    if (!external && (autoclear & AUTOCLEAR_DATA_FILE_RAW) != 0) {
      throw new ImageFormatException(where + ": data-file-raw (autoclear bit 1) requires a data file");
    }
    if (external && dataFile == null) {
      throw new ImageFormatException(where + ": the image has an external data file (incompatible bit 2)"
          + " but no data file name (extension 0x44415441)");
    }
    if (external && nbSnapshots > 0) {
      // internal snapshots cannot share data clusters that live outside the image
      throw new ImageFormatException(where + ": an image with an external data file cannot have internal snapshots ("
          + nbSnapshots + ")");
    }
  }

  boolean hasDataFile() {
    return (incompatible & INCOMPAT_DATA_FILE) != 0;
  }

  boolean dataFileRaw() {
    return hasDataFile() && (autoclear & AUTOCLEAR_DATA_FILE_RAW) != 0;
  }

  private static String string(ByteBuffer b, int off, int len) {
    byte[] s = new byte[len];
    b.get(off, s);
    return new String(s, StandardCharsets.UTF_8);
  }

  static long ceilDiv(long a, long b) {
    return a == 0 ? 0 : (a - 1) / b + 1;
  }

  /** The feature names QEMU 7.2 writes in its feature table. */
  private static final Object[][] FEATURES = {
    {0, 0, "dirty bit"}, {0, 1, "corrupt bit"}, {0, 2, "external data file"}, {0, 3, "compression type"},
    {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"}, {2, 0, "bitmaps"}, {2, 1, "raw external data"},
  };

  /**
   * Cluster 0 of a new v3 image: header of 112 bytes, then the backing-format extension, the
   * feature table (only above 4 KiB clusters, as QEMU), the end marker and the backing file name.
   */
  static ByteBuffer newCluster0(int clusterBits, long size, long l1Size, long l1Offset, long reftableOffset,
      long reftableClusters, String backingFile, String backingFormat) {
    return newCluster0(clusterBits, size, l1Size, l1Offset, reftableOffset, reftableClusters, backingFile,
        backingFormat, null, false);
  }

  /** As above, with the external data file {@code dataFile} (or null) and data_file_raw. */
  static ByteBuffer newCluster0(int clusterBits, long size, long l1Size, long l1Offset, long reftableOffset,
      long reftableClusters, String backingFile, String backingFormat, String dataFile, boolean dataFileRaw) {
    int cs = 1 << clusterBits;
    ByteBuffer b = ByteBuffer.allocate(cs);
    b.putInt(0, MAGIC).putInt(4, 3);
    b.putInt(20, clusterBits).putLong(24, size).putInt(36, (int) l1Size).putLong(40, l1Offset);
    b.putLong(48, reftableOffset).putInt(56, (int) reftableClusters);
    b.putInt(96, 4).putInt(100, V3_HEADER_LENGTH);
    int off = V3_HEADER_LENGTH;
    if (backingFormat != null) {
      byte[] f = backingFormat.getBytes(StandardCharsets.UTF_8);
      b.putInt(off, EXT_BACKING_FORMAT).putInt(off + 4, f.length).put(off + 8, f);
      off += 8 + ((f.length + 7) & ~7);
    }
    if (dataFile != null) {
      byte[] n = dataFile.getBytes(StandardCharsets.UTF_8);
      // the feature table may follow; what must fit is the name, the end marker and a backing name
      if (off + 8 + n.length + 8 > cs) {
        throw new IllegalArgumentException("data file name of " + n.length + " bytes does not fit in cluster 0 ("
            + cs + " bytes)");
      }
      b.putLong(72, INCOMPAT_DATA_FILE).putLong(88, dataFileRaw ? AUTOCLEAR_DATA_FILE_RAW : 0);
      b.putInt(off, EXT_DATA_FILE).putInt(off + 4, n.length).put(off + 8, n);
      off += 8 + ((n.length + 7) & ~7);
    }
    if (cs > 4096) {
      b.putInt(off, EXT_FEATURE_TABLE).putInt(off + 4, FEATURES.length * 48);
      int e = off + 8;
      for (Object[] f : FEATURES) {
        b.put(e, (byte) (int) (Integer) f[0]).put(e + 1, (byte) (int) (Integer) f[1]);
        b.put(e + 2, ((String) f[2]).getBytes(StandardCharsets.US_ASCII));
        e += 48;
      }
      off = e;
    }
    off += 8; // end marker: type 0, length 0
    if (backingFile != null) {
      byte[] n = backingFile.getBytes(StandardCharsets.UTF_8);
      if (n.length > MAX_BACKING_NAME || off + n.length > cs) {
        throw new IllegalArgumentException("backing file name of " + n.length + " bytes does not fit in cluster 0 ("
            + cs + " bytes, at most " + MAX_BACKING_NAME + " for the name)");
      }
      b.putLong(8, off).putInt(16, n.length).put(off, n);
    }
    return b;
  }
}
