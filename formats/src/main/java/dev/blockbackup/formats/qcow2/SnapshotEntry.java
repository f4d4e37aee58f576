package dev.blockbackup.formats.qcow2;

import java.nio.ByteBuffer;

/**
 * The fixed part of one entry of a qcow2 snapshot table, as far as walking the table needs it:
 * where the snapshot's L1 table is, and how long the entry is (the fixed 40 bytes, the extra data,
 * the id and the name, padded to 8 bytes). Every reader of the table (the snapshot list, the
 * overlap check, the refcount rebuild) parses it here, so they walk the same entries.
 *
 * @param l1Offset the host offset of the snapshot's L1 table
 * @param l1Size its number of entries
 * @param idLen the length of the id string
 * @param nameLen the length of the name string
 * @param extraLen the length of the extra data
 */
record SnapshotEntry(long l1Offset, long l1Size, int idLen, int nameLen, long extraLen) {

  /** The length of the fixed part, which {@link #parse} reads. */
  static final int FIXED = 40;
  /** QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA. */
  static final int MAX_EXTRA_DATA = 1024;
  /** QEMU's QCOW_MAX_SNAPSHOTS_SIZE. */
  static final long MAX_TABLE_BYTES = 64L << 20;

  /** The entry whose first {@link #FIXED} bytes are {@code fixed} (absolute gets: its position is ignored). */
  static SnapshotEntry parse(ByteBuffer fixed) {
    return new SnapshotEntry(fixed.getLong(0), Integer.toUnsignedLong(fixed.getInt(8)),
        Short.toUnsignedInt(fixed.getShort(12)), Short.toUnsignedInt(fixed.getShort(14)),
        Integer.toUnsignedLong(fixed.getInt(36)));
  }

  /** The bytes this entry takes in the table, up to where the next one starts. */
  long length() {
    return (FIXED + extraLen + idLen + nameLen + 7) & ~7L;
  }
}
