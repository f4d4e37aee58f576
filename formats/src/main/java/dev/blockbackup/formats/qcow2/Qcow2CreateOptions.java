package dev.blockbackup.formats.qcow2;

/**
 * What {@code qemu-img create -f qcow2} takes: the virtual size, {@code -o cluster_size},
 * {@code -b backing -F backing_fmt} and {@code -o data_file=NAME,data_file_raw=on|off}. Images are
 * always v3 (compat=1.1) with 16-bit refcounts.
 *
 * @param size virtual size in bytes; a multiple of 512 (QEMU counts it in sectors)
 * @param clusterSize a power of two from 512 B to 2 MiB
 * @param backingFile the backing file's name as stored in the header (relative names are resolved
 *     against the overlay's directory), or null for none
 * @param backingFormat "raw" or "qcow2"; required with a backing file (as qemu-img 7.2 requires -F)
 * @param dataFile the external data file's name as stored in the header (relative names are
 *     resolved against the image's directory), or null: the data clusters then live in the data
 *     file at their guest offsets
 * @param dataFileRaw data_file_raw: the data file is, and stays, a raw image of the disk (every
 *     cluster is mapped to itself at creation, as QEMU does); needs a data file and no backing file
 */
public record Qcow2CreateOptions(long size, int clusterSize, String backingFile, String backingFormat,
    String dataFile, boolean dataFileRaw) {

  public static final int DEFAULT_CLUSTER_SIZE = 64 * 1024;
  public static final int MIN_CLUSTER_SIZE = 512;
  public static final int MAX_CLUSTER_SIZE = 2 * 1024 * 1024;
  /** The longest backing file name the header holds, in bytes of UTF-8 (QEMU's limit). */
  public static final int MAX_BACKING_NAME = Qcow2Header.MAX_BACKING_NAME;

  /** An image without an external data file. */
  public Qcow2CreateOptions(long size, int clusterSize, String backingFile, String backingFormat) {
    this(size, clusterSize, backingFile, backingFormat, null, false);
  }

  public Qcow2CreateOptions {
    if (size < 0 || size % 512 != 0) {
      throw new IllegalArgumentException("image size (" + size + ") must be a non-negative multiple of 512");
    }
    if (clusterSize < MIN_CLUSTER_SIZE || clusterSize > MAX_CLUSTER_SIZE || Integer.bitCount(clusterSize) != 1) {
      throw new IllegalArgumentException(
          "cluster size (" + clusterSize + ") must be a power of two from 512 to 2097152 bytes");
    }
    if ((backingFile == null) != (backingFormat == null)) {
      throw new IllegalArgumentException("a backing file needs its format (-F raw|qcow2), and a format needs a file");
    }
    if (backingFormat != null && !backingFormat.equals("raw") && !backingFormat.equals("qcow2")) {
      throw new IllegalArgumentException("backing format '" + backingFormat + "' is not raw or qcow2");
    }
    // qemu-img create's messages
    if (dataFileRaw && dataFile == null) {
      throw new IllegalArgumentException("data-file-raw requires data-file");
    }
    if (dataFileRaw && backingFile != null) {
      throw new IllegalArgumentException("Backing file and data-file-raw cannot be used at the same time");
    }
    if (dataFile != null && dataFile.isEmpty()) {
      throw new IllegalArgumentException("Could not create '': No such file or directory");
    }
    if (dataFile != null && (dataFile.indexOf('\0') >= 0
        || dataFile.getBytes(java.nio.charset.StandardCharsets.UTF_8).length > Qcow2Header.MAX_DATA_FILE_NAME)) {
      throw new IllegalArgumentException("data file name of " + dataFile.length() + " characters is longer than "
          + Qcow2Header.MAX_DATA_FILE_NAME + " bytes or holds a NUL");
    }
  }

  /**
   * The largest virtual size an image with {@code clusterSize}-byte clusters can have: what an L1
   * table of QEMU's maximum (32 MiB of 8-byte entries, each mapping an L2 table of clusterSize / 8
   * clusters) maps. 2 PiB for 64 KiB clusters; qemu-img create refuses anything larger. Not checked
   * by the constructor, whose withers may set the size before the cluster size; creation refuses it.
   */
  public static long maxSize(int clusterSize) {
    return Qcow2Header.MAX_L1_BYTES / 8 * (clusterSize / 8) * clusterSize;
  }

  /** A plain image of {@code size} bytes with 64 KiB clusters and no backing file. */
  public static Qcow2CreateOptions of(long size) {
    return new Qcow2CreateOptions(size, DEFAULT_CLUSTER_SIZE, null, null);
  }

  public Qcow2CreateOptions withClusterSize(int clusterSize) {
    return new Qcow2CreateOptions(size, clusterSize, backingFile, backingFormat, dataFile, dataFileRaw);
  }

  public Qcow2CreateOptions withBacking(String file, String format) {
    return new Qcow2CreateOptions(size, clusterSize, file, format, dataFile, dataFileRaw);
  }

  /** With the external data file {@code name} ({@code -o data_file=name,data_file_raw=on|off}). */
  public Qcow2CreateOptions withDataFile(String name, boolean raw) {
    return new Qcow2CreateOptions(size, clusterSize, backingFile, backingFormat, name, raw);
  }
}
