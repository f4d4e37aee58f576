package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.ImageFormatException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.OptionalLong;

/**
 * Reads the snapshot table of a qcow2 image: nb_snapshots entries from snapshots_offset, each a
 * 40-byte fixed part (L1 table offset and size, id and name lengths, date, VM clock, 32-bit VM
 * state size, extra data length), then the extra data (64-bit VM state size, disk size, icount,
 * each there only if the extra data is long enough), the id and the name, padded to 8 bytes. The
 * limits are QEMU's (1 KiB of extra data, 64 MiB of table), so a hostile table costs no more.
 */
public final class Qcow2Snapshots {

  private static final int MAX_EXTRA_DATA = SnapshotEntry.MAX_EXTRA_DATA;
  private static final long MAX_TABLE_BYTES = SnapshotEntry.MAX_TABLE_BYTES;
  private static final int FIXED = SnapshotEntry.FIXED;

  private Qcow2Snapshots() {}

  /** The internal snapshots of the qcow2 image {@code path}, in table order; the file is only read. */
  public static List<Qcow2Snapshot> read(Path path) throws BlockIOException {
    String where = path.toString();
    try (FileChannel ch = FileChannel.open(path, StandardOpenOption.READ)) {
      long fileSize = ch.size();
      ByteBuffer fixed = ByteBuffer.allocate(Qcow2Header.V3_HEADER_LENGTH);
      readFully(ch, fixed, 0, fileSize, where, "header", true);
      Qcow2Header h = Qcow2Header.parse(fixed, fileSize, where);
      List<Qcow2Snapshot> list = new ArrayList<>((int) h.nbSnapshots);
      long pos = h.snapshotsOffset;
      ByteBuffer e = ByteBuffer.allocate(FIXED);
      for (long i = 0; i < h.nbSnapshots; i++) {
        readFully(ch, e.clear(), pos, fileSize, where, "snapshot " + i, false);
        SnapshotEntry entry = SnapshotEntry.parse(e);
        int idLen = entry.idLen();
        int nameLen = entry.nameLen();
        long extraLen = entry.extraLen();
        if (extraLen > MAX_EXTRA_DATA) {
          throw new ImageFormatException(where + ": snapshot " + i + " has " + extraLen
              + " bytes of extra data, above QEMU's limit of " + MAX_EXTRA_DATA);
        }
        ByteBuffer rest = ByteBuffer.allocate((int) extraLen + idLen + nameLen);
        readFully(ch, rest, pos + FIXED, fileSize, where, "snapshot " + i, false);
        long vmStateSize = extraLen >= 8 ? rest.getLong(0) : Integer.toUnsignedLong(e.getInt(32));
        OptionalLong icount = OptionalLong.empty();
        // QEMU writes -1 for "no instruction count" as well as leaving the field out.
        if (extraLen >= 24 && rest.getLong(16) != -1L) {
          icount = OptionalLong.of(rest.getLong(16));
        }
        byte[] id = new byte[idLen];
        byte[] name = new byte[nameLen];
        rest.get((int) extraLen, id).get((int) extraLen + idLen, name);
        list.add(new Qcow2Snapshot(new String(id, StandardCharsets.UTF_8), new String(name, StandardCharsets.UTF_8),
            Integer.toUnsignedLong(e.getInt(16)), Integer.toUnsignedLong(e.getInt(20)), e.getLong(24), vmStateSize,
            icount));
        pos += entry.length();
        if (pos - h.snapshotsOffset > MAX_TABLE_BYTES) {
          throw new ImageFormatException(where + ": the snapshot table is larger than QEMU's limit of 64 MiB");
        }
      }
      return list;
    } catch (IOException e) {
      throw BlockIOException.fromHost("cannot open " + where, e);
    }
  }

  /** Fills {@code b} from {@code offset}; a table that runs past the end of the file is malformed. */
  private static void readFully(FileChannel ch, ByteBuffer b, long offset, long fileSize, String where, String what,
      boolean shortOk) throws IOException {
    if (!shortOk && offset + b.remaining() > fileSize) {
      throw new ImageFormatException(where + ": " + what + " at 0x" + Long.toHexString(offset)
          + " lies beyond the end of the file (" + fileSize + " bytes)");
    }
    long at = offset;
    while (b.hasRemaining()) {
      int n = ch.read(b, at);
      if (n < 0) {
        break;
      }
      at += n;
    }
    // Read only with absolute gets; what a short header lacks stays zero, and parse refuses it.
  }
}
