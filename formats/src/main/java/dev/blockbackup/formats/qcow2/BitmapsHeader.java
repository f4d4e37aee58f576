package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import java.io.IOException;
import java.nio.ByteBuffer;

/**
 * Rewrites cluster 0 with a new bitmaps extension (or none) and a new autoclear field, the way
 * QEMU's header update does: the fixed header as it is, every other extension as it is and in its
 * order (the bitmaps one where it was, or last), the end marker, then the backing file name, whose
 * offset field follows it. One write of the whole cluster, synced after; the caller has synced
 * everything the new header names before.
 */
final class BitmapsHeader {

  private BitmapsHeader() {}

  static void rewrite(Qcow2Metadata md, BitmapDirectory.Extension ext, long autoclear) throws IOException {
    HostFile file = md.file;
    int cs = md.clusterSize;
    int headerLength = md.header.headerLength;
    ByteBuffer old = ByteBuffer.allocate(cs);
    file.read(old, 0);
    long backingOff = old.getLong(8);
    int backingSize = old.getInt(16);
    byte[] backing = null;
    if (backingOff != 0) {
      backing = new byte[backingSize];
      old.get((int) backingOff, backing);
    }
    int end = backingOff != 0 ? (int) backingOff : cs;
    int at = find(old, headerLength, end);
    if (ext != null && at >= 0 && old.getLong(Qcow2Header.OFF_AUTOCLEAR) == autoclear) {
      // the extension is where it was: change its fields alone, in one small write
      ByteBuffer f = ByteBuffer.allocate(BitmapDirectory.EXTENSION_LENGTH);
      f.putInt(0, (int) ext.nbBitmaps()).putLong(8, ext.directorySize()).putLong(16, ext.directoryOffset());
      file.writeMetadata(OverlapCheck.Kind.HEADER, f, at + 8);
      file.sync();
      return;
    }
    ByteBuffer b = ByteBuffer.allocate(cs);
    b.put(0, old, 0, headerLength);
    b.putLong(Qcow2Header.OFF_AUTOCLEAR, autoclear);
    int in = headerLength;
    int out = headerLength;
    boolean placed = false;
    while (in + 8 <= end) {
      int type = old.getInt(in);
      int len = old.getInt(in + 4);
      if (type == Qcow2Header.EXT_END) {
        break;
      }
      int span = 8 + ((len + 7) & ~7);
      if (type == Qcow2Header.EXT_BITMAPS) {
        if (ext != null && !placed) {
          out = putBitmaps(b, out, ext, cs);
          placed = true;
        }
      } else {
        check(out + span, cs, md.where);
        b.put(out, old, in, span);
        out += span;
      }
      in += span;
    }
    if (ext != null && !placed) {
      out = putBitmaps(b, out, ext, cs);
    }
    check(out + 8, cs, md.where);
    out += 8; // end marker: type 0, length 0
    if (backing != null) {
      check(out + backing.length, cs, md.where);
      b.put(out, backing);
      b.putLong(8, out);
    }
    file.writeMetadata(OverlapCheck.Kind.HEADER, b, 0);
    file.sync();
  }

  /** Where the bitmaps extension of 24 bytes starts in {@code c0}, or -1. */
  private static int find(ByteBuffer c0, int from, int end) {
    int in = from;
    while (in + 8 <= end) {
      int type = c0.getInt(in);
      int len = c0.getInt(in + 4);
      if (type == Qcow2Header.EXT_END || len < 0) {
        return -1;
      }
      if (type == Qcow2Header.EXT_BITMAPS) {
        return len == BitmapDirectory.EXTENSION_LENGTH && in + 8 + len <= end ? in : -1;
      }
      in += 8 + ((len + 7) & ~7);
    }
    return -1;
  }

  private static int putBitmaps(ByteBuffer b, int out, BitmapDirectory.Extension ext, int cs) throws BlockIOException {
    check(out + 8 + BitmapDirectory.EXTENSION_LENGTH, cs, "cluster 0");
    b.putInt(out, Qcow2Header.EXT_BITMAPS).putInt(out + 4, BitmapDirectory.EXTENSION_LENGTH);
    b.putInt(out + 8, (int) ext.nbBitmaps()).putInt(out + 12, 0);
    b.putLong(out + 16, ext.directorySize()).putLong(out + 24, ext.directoryOffset());
    return out + 8 + BitmapDirectory.EXTENSION_LENGTH;
  }

  private static void check(int need, int cs, String where) throws BlockIOException {
    if (need > cs) {
      throw new BlockIOException(BlockError.ENOSPC, where + ": the header extensions do not fit in cluster 0 ("
          + cs + " bytes)");
    }
  }
}
