package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.formats.ImageFormatException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;

/**
 * The persistent dirty bitmaps of one image, kept as QEMU keeps them: loaded at open (a bitmap
 * found {@code in_use} loads inconsistent), marked {@code in_use} on disk before the first write of
 * a read-write open, marked by every write, and stored on close: new data clusters and tables, a
 * new directory, then the header extension, then the old clusters are freed. The autoclear bit 0
 * says the extension is valid; an image whose bit is clear was written by a program that knows no
 * bitmaps, and its extension is ignored, as QEMU ignores it.
 *
 * <p>Crash order: whatever a crash interrupts, the header points to a complete directory whose
 * tables and data are durable with their refcounts, or to none; a crash may leak clusters, never
 * corrupt. Changes happen under the metadata lock; {@link #mark} needs none.
 */
final class Qcow2Bitmaps {

  /** One directory entry as on disk, with its table (null when it could not be read: in use, never read). */
  private record Stored(BitmapDirectory.Entry entry, long[] table) {}

  private final Qcow2Metadata md;
  private final HostFile file;
  private final String where;
  private final int clusterSize;
  private final boolean readOnly;
  /** Every bitmap, in directory order (new ones last); read without a lock by {@link #mark}. */
  private final CopyOnWriteArrayList<Qcow2Bitmap> bitmaps = new CopyOnWriteArrayList<>();
  /** The directory as it is on disk now. */
  private List<Stored> onDisk = new ArrayList<>();
  private long dirOffset;
  private long dirSize;
  /** The autoclear field as it is on disk now. */
  private long autoclear;

  private Qcow2Bitmaps(Qcow2Metadata md, boolean readOnly) {
    this.md = md;
    this.file = md.file;
    this.where = md.where;
    this.clusterSize = md.clusterSize;
    this.readOnly = readOnly;
    this.autoclear = md.header.autoclear;
  }

  /**
   * Reads the bitmaps extension of {@code c0} (cluster 0), the directory, tables and data, checking
   * everything as QEMU does at open. Writes nothing.
   */
  static Qcow2Bitmaps load(Qcow2Metadata md, ByteBuffer c0, boolean readOnly) throws IOException {
    Qcow2Bitmaps b = new Qcow2Bitmaps(md, readOnly);
    Qcow2Header h = md.header;
    if (h.bitmapsExtOffset < 0) {
      return b;
    }
    if (h.bitmapsExtLength != BitmapDirectory.EXTENSION_LENGTH) {
      throw new ImageFormatException(b.where + ": the bitmaps extension has " + h.bitmapsExtLength + " bytes, not "
          + BitmapDirectory.EXTENSION_LENGTH);
    }
    if (h.version < 3 || (h.autoclear & Qcow2Header.AUTOCLEAR_BITMAPS) == 0) {
      return b; // written by a program that knows no bitmaps: every bitmap is stale, as in QEMU
    }
    BitmapDirectory.Extension x = BitmapDirectory.parseExtension(c0, h.bitmapsExtOffset + 8, h.bitmapsExtLength,
        b.clusterSize, b.where);
    b.loadDirectory(x);
    return b;
  }

  private void loadDirectory(BitmapDirectory.Extension x) throws IOException {
    long fileSize = file.size();
    if (x.directoryOffset() + x.directorySize() > fileSize) {
      throw new ImageFormatException(where + ": the bitmap directory [0x" + Long.toHexString(x.directoryOffset())
          + ", +" + x.directorySize() + ") lies beyond the end of the file (" + fileSize + " bytes)");
    }
    ByteBuffer dir = ByteBuffer.allocate((int) x.directorySize());
    file.read(dir, x.directoryOffset());
    dir.flip();
    List<BitmapDirectory.Entry> entries = BitmapDirectory.parse(dir, x.nbBitmaps(), clusterSize, md.size, where,
        x.directoryOffset());
    // a hostile image may list many big bitmaps: refuse before holding more than a quarter of the heap
    long budget = Runtime.getRuntime().maxMemory() / 4;
    long charged = 0;
    List<Stored> stored = new ArrayList<>();
    List<Qcow2Bitmap> loaded = new ArrayList<>();
    for (BitmapDirectory.Entry e : entries) {
      String bm = where + ": bitmap '" + e.name() + "'";
      if (e.granularityBits() > BitmapDirectory.MAX_SUPPORTED_GRANULARITY_BITS) {
        throw new ImageFormatException(bm + ": granularity 2^" + e.granularityBits() + " is not supported (at most 2^"
            + BitmapDirectory.MAX_SUPPORTED_GRANULARITY_BITS + ")");
      }
      int granularity = 1 << e.granularityBits();
      long granules = Qcow2Header.ceilDiv(md.size, granularity);
      charged += granules / 4096 + (e.inUse() ? 0 : e.tableSize() * (long) clusterSize);
      if (charged > budget) {
        throw new ImageFormatException(bm + ": the bitmaps need about " + charged + " bytes of memory, more than "
            + budget + " (a quarter of the heap)");
      }
      if (e.tableOffset() + e.tableBytes() > fileSize) {
        throw new ImageFormatException(bm + ": its table [0x" + Long.toHexString(e.tableOffset()) + ", +"
            + e.tableBytes() + ") lies beyond the end of the file (" + fileSize + " bytes)");
      }
      DirtyBitmap bits;
      try {
        bits = new DirtyBitmap(md.size, granularity);
      } catch (IllegalArgumentException ex) {
        throw new ImageFormatException(bm + ": " + ex.getMessage());
      }
      long[] table;
      if (e.inUse()) {
        try {
          table = BitmapTables.read(file, e, clusterSize, where);
        } catch (ImageFormatException ex) {
          table = null; // QEMU never reads an in-use bitmap's table; its clusters stay as they are
        }
      } else {
        long need = BitmapDirectory.tableSizeFor(md.size, e.granularityBits(), clusterSize);
        if (need != e.tableSize()) {
          throw new ImageFormatException(bm + ": bitmap_table_size " + e.tableSize() + " does not match the "
              + need + " entries the image size " + md.size + " needs at granularity " + granularity);
        }
        table = BitmapTables.read(file, e, clusterSize, where);
        BitmapTables.load(file, table, bits, clusterSize);
      }
      stored.add(new Stored(e, table));
      loaded.add(new Qcow2Bitmap(e.name(), bits, e.auto(), e.inUse()));
    }
    onDisk = stored;
    dirOffset = x.directoryOffset();
    dirSize = x.directorySize();
    bitmaps.addAll(loaded);
  }

  /** What a {@link RefcountRebuild} must count: every bitmap cluster, as qemu-img check counts them. */
  interface Ranges {
    void range(long offset, long length) throws IOException;
  }

  /** Calls {@code r} for the directory, each table and each data cluster on disk. */
  void forEachRange(Ranges r) throws IOException {
    if (dirSize > 0) {
      r.range(dirOffset, dirSize);
    }
    for (Stored s : onDisk) {
      r.range(s.entry().tableOffset(), s.entry().tableBytes());
      if (s.table() != null) {
        for (long t : s.table()) {
          long off = t & BitmapTables.ENTRY_OFFSET_MASK;
          if (off != 0) {
            r.range(off, clusterSize);
          }
        }
      }
    }
  }

  /** Starts protecting the bitmap metadata on disk from stray writes. */
  private void protect(List<Stored> list, boolean add) {
    OverlapCheck o = file.overlaps();
    for (Stored s : list) {
      if (add) {
        o.add(OverlapCheck.Kind.BITMAP_TABLE, s.entry().tableOffset(), s.entry().tableBytes());
      } else {
        o.remove(OverlapCheck.Kind.BITMAP_TABLE, s.entry().tableOffset(), s.entry().tableBytes());
      }
      if (s.table() != null) {
        for (long t : s.table()) {
          long off = t & BitmapTables.ENTRY_OFFSET_MASK;
          if (off != 0) {
            if (add) {
              o.add(OverlapCheck.Kind.BITMAP_DATA, off, clusterSize);
            } else {
              o.remove(OverlapCheck.Kind.BITMAP_DATA, off, clusterSize);
            }
          }
        }
      }
    }
  }

  /**
   * The read-write open, before the first guest write: unknown autoclear bits are cleared (we do
   * not maintain their features), and every loaded bitmap is marked {@code in_use}. QEMU rewrites
   * the directory in place with the bitmaps bit cleared meanwhile, so that a crash in between loses
   * every bitmap; we write the marked directory to new clusters and switch the extension's offset
   * field to it, so a crash leaves either the old directory or the new one (and a leaked cluster).
   */
  void openReadWrite() throws IOException {
    OverlapCheck o = file.overlaps();
    o.add(OverlapCheck.Kind.BITMAP_DIRECTORY, dirOffset, dirSize);
    protect(onDisk, true);
    long want = (onDisk.isEmpty() ? 0 : Qcow2Header.AUTOCLEAR_BITMAPS)
        | (autoclear & Qcow2Header.AUTOCLEAR_DATA_FILE_RAW);
    if (autoclear != want) {
      writeAutoclear(want);
    }
    boolean mark = false;
    List<Stored> marked = new ArrayList<>();
    for (Stored s : onDisk) {
      mark |= !s.entry().inUse();
      marked.add(new Stored(s.entry().withFlags(s.entry().flags() | BitmapDirectory.FLAG_IN_USE), s.table()));
    }
    if (mark) {
      md.lock.lock();
      try {
        writeDirectory(marked);
      } finally {
        md.lock.unlock();
      }
    }
  }

  private void writeAutoclear(long value) throws IOException {
    file.writeMetadata(OverlapCheck.Kind.HEADER, ByteBuffer.allocate(8).putLong(0, value), Qcow2Header.OFF_AUTOCLEAR);
    file.sync();
    autoclear = value;
  }

  /** Records a write (or an attempted one) of guest bytes in every enabled, consistent bitmap. */
  void mark(long offset, long length) {
    for (Qcow2Bitmap b : bitmaps) {
      b.mark(offset, length);
    }
  }

  List<Qcow2Bitmap> list() {
    return List.copyOf(bitmaps);
  }

  Qcow2Bitmap find(String name) {
    for (Qcow2Bitmap b : bitmaps) {
      if (b.name().equals(name)) {
        return b;
      }
    }
    return null;
  }

  /** A new bitmap, stored on close; refused as QEMU's block-dirty-bitmap-add refuses a persistent one. */
  Qcow2Bitmap add(String name, int granularity, boolean enabled) throws BlockIOException {
    checkWritable();
    if (md.version < 3) {
      throw new BlockIOException(BlockError.ENOTSUP, where + ": cannot store dirty bitmaps in qcow2 v2 files");
    }
    if (name == null || name.isEmpty()) {
      throw new BlockIOException(BlockError.EINVAL, "a bitmap name cannot be empty");
    }
    int nameBytes = name.getBytes(StandardCharsets.UTF_8).length;
    if (nameBytes > BitmapDirectory.MAX_NAME_SIZE) {
      throw new BlockIOException(BlockError.EINVAL, "bitmap name of " + nameBytes + " bytes is longer than "
          + BitmapDirectory.MAX_NAME_SIZE);
    }
    if (granularity < (1 << BitmapDirectory.MIN_GRANULARITY_BITS) || Integer.bitCount(granularity) != 1) {
      throw new BlockIOException(BlockError.EINVAL, "granularity " + granularity
          + " must be a power of two of at least 512");
    }
    int bits = Integer.numberOfTrailingZeros(granularity);
    if (md.size == 0) {
      throw new BlockIOException(BlockError.EINVAL, where + ": an image of 0 bytes cannot hold a bitmap (a bitmap"
          + " table has at least one entry)");
    }
    long bytes = Qcow2Header.ceilDiv(Qcow2Header.ceilDiv(md.size, granularity), 8);
    if (bytes > BitmapDirectory.MAX_PHYS_SIZE || bytes > BitmapDirectory.MAX_TABLE_SIZE * clusterSize) {
      throw new BlockIOException(BlockError.EINVAL, "bitmap '" + name + "' at granularity " + granularity + " needs "
          + bytes + " bytes, above QEMU's limit of " + BitmapDirectory.MAX_PHYS_SIZE + "; use a larger granularity");
    }
    md.lock.lock();
    try {
      if (find(name) != null) {
        throw new BlockIOException(BlockError.EINVAL, "bitmap '" + name + "' already exists in " + where);
      }
      if (bitmaps.size() + 1 > BitmapDirectory.MAX_BITMAPS) {
        throw new BlockIOException(BlockError.EINVAL, where + ": too many persistent bitmaps (at most "
            + BitmapDirectory.MAX_BITMAPS + ")");
      }
      long size = BitmapDirectory.entrySize(nameBytes);
      for (Qcow2Bitmap b : bitmaps) {
        size += BitmapDirectory.entrySize(b.name().getBytes(StandardCharsets.UTF_8).length);
      }
      if (size > BitmapDirectory.MAX_DIRECTORY_SIZE) {
        throw new BlockIOException(BlockError.EINVAL, where + ": the bitmap directory would be " + size
            + " bytes, above QEMU's limit of " + BitmapDirectory.MAX_DIRECTORY_SIZE);
      }
      Qcow2Bitmap b = new Qcow2Bitmap(name, new DirtyBitmap(md.size, 1 << bits), enabled, false);
      bitmaps.add(b);
      return b;
    } finally {
      md.lock.unlock();
    }
  }

  /** Removes {@code name} at once from the image, as QEMU's block-dirty-bitmap-remove of a persistent bitmap. */
  void remove(String name) throws IOException {
    checkWritable();
    md.lock.lock();
    try {
      Qcow2Bitmap b = find(name);
      if (b == null) {
        throw new BlockIOException(BlockError.EINVAL, "no bitmap '" + name + "' in " + where);
      }
      Stored s = stored(name);
      if (s != null) {
        List<Stored> rest = new ArrayList<>(onDisk);
        rest.remove(s);
        writeDirectory(rest);
        free(List.of(s));
      }
      bitmaps.remove(b);
    } finally {
      md.lock.unlock();
    }
  }

  void setEnabled(String name, boolean enabled) throws BlockIOException {
    checkWritable();
    Qcow2Bitmap b = find(name);
    if (b == null) {
      throw new BlockIOException(BlockError.EINVAL, "no bitmap '" + name + "' in " + where);
    }
    if (b.inconsistent() && enabled) {
      throw new BlockIOException(BlockError.EINVAL, "bitmap '" + name + "' is inconsistent and cannot be enabled;"
          + " remove it");
    }
    b.setEnabled(enabled);
  }

  private void checkWritable() throws BlockIOException {
    if (readOnly) {
      throw new BlockIOException(BlockError.EPERM, where + " is open read-only");
    }
  }

  private Stored stored(String name) {
    for (Stored s : onDisk) {
      if (s.entry().name().equals(name)) {
        return s;
      }
    }
    return null;
  }

  /**
   * Stores every consistent bitmap (close): its data and table in new clusters, then the new
   * directory and header, then frees the old tables. Inconsistent bitmaps keep their entry as it is,
   * in use. Nothing is written when there is no consistent bitmap, as in QEMU, nor once the image
   * is marked corrupt (its bitmaps stay in use, so they load inconsistent).
   */
  void store() throws IOException {
    if (readOnly || file.isCorrupt()) {
      return;
    }
    md.lock.lock();
    try {
      boolean need = false;
      for (Qcow2Bitmap b : bitmaps) {
        need |= !b.inconsistent();
      }
      if (!need) {
        return;
      }
      List<Stored> next = new ArrayList<>();
      List<Stored> old = new ArrayList<>();
      List<Stored> written = new ArrayList<>();
      try {
        for (Qcow2Bitmap b : bitmaps) {
          Stored s = stored(b.name());
          if (b.inconsistent()) {
            if (s != null) {
              next.add(s);
            }
            continue;
          }
          Stored n = storeBitmap(b);
          written.add(n);
          next.add(n);
          if (s != null) {
            old.add(s);
          }
        }
        writeDirectory(next);
      } catch (IOException | RuntimeException e) {
        // nothing on disk points to what was written: give it back (a failure here only leaks it)
        try {
          free(written);
        } catch (IOException | RuntimeException suppressed) {
          e.addSuppressed(suppressed);
        }
        throw e;
      }
      free(old);
    } finally {
      md.lock.unlock();
    }
  }

  /** Writes {@code b}'s data clusters and table into new clusters; returns its new entry. */
  private Stored storeBitmap(Qcow2Bitmap b) throws IOException {
    DirtyBitmap bits = b.bitmap();
    int gbits = Integer.numberOfTrailingZeros(bits.granularity());
    int n = (int) BitmapDirectory.tableSizeFor(md.size, gbits, clusterSize);
    long[] table = new long[n];
    ByteBuffer buf = ByteBuffer.allocate(clusterSize);
    OverlapCheck o = file.overlaps();
    long tableOff = 0;
    try {
      for (int i = 0; i < n; i++) {
        switch (BitmapTables.content(bits, i, clusterSize)) {
          case ZEROS -> table[i] = 0;
          case ONES -> table[i] = BitmapTables.ALL_ONES;
          case MIXED -> {
            long off = md.refcounts.allocate(1) << md.clusterBits;
            table[i] = off;
            BitmapTables.serialise(bits, i, buf);
            o.add(OverlapCheck.Kind.BITMAP_DATA, off, clusterSize);
            file.writeMetadata(OverlapCheck.Kind.BITMAP_DATA, buf, off);
          }
        }
      }
      long tableBytes = (long) n * 8;
      int tableClusters = (int) Qcow2Header.ceilDiv(tableBytes, clusterSize);
      tableOff = allocateContiguous(tableClusters);
      ByteBuffer t = ByteBuffer.allocate(tableClusters * clusterSize);
      t.asLongBuffer().put(table);
      o.add(OverlapCheck.Kind.BITMAP_TABLE, tableOff, tableBytes);
      file.writeMetadata(OverlapCheck.Kind.BITMAP_TABLE, t, tableOff);
    } catch (IOException | RuntimeException e) {
      BitmapDirectory.Entry partial = new BitmapDirectory.Entry(tableOff, tableOff == 0 ? 0 : n, 0, gbits, b.name());
      try {
        freeClusters(partial, table, tableOff != 0);
      } catch (IOException | RuntimeException suppressed) {
        e.addSuppressed(suppressed);
      }
      throw e;
    }
    int flags = b.enabled() ? BitmapDirectory.FLAG_AUTO : 0;
    return new Stored(new BitmapDirectory.Entry(tableOff, n, flags, gbits, b.name()), table);
  }

  /** {@code count} free clusters in a row, each with refcount 1; returns the first's offset. */
  private long allocateContiguous(int count) throws IOException {
    List<long[]> spare = new ArrayList<>();
    try {
      for (int attempt = 0; attempt < 64; attempt++) {
        long start = md.refcounts.allocate(count);
        int got = md.refcounts.lastCount;
        if (got == count) {
          return start << md.clusterBits;
        }
        spare.add(new long[] {start, got});
      }
      throw new BlockIOException(BlockError.ENOSPC, where + ": found no " + count + " free clusters in a row");
    } finally {
      for (long[] s : spare) {
        for (long c = s[0]; c < s[0] + s[1]; c++) {
          md.refcounts.add(c, -1);
        }
      }
    }
  }

  /**
   * Makes {@code next} the directory on disk: written to new clusters, made durable with every
   * refcount, then the header points to it (or carries no extension when it is empty), then the
   * old directory's clusters are freed.
   */
  private void writeDirectory(List<Stored> next) throws IOException {
    long oldOff = dirOffset;
    long oldSize = dirSize;
    long newOff = 0;
    long newSize = 0;
    OverlapCheck o = file.overlaps();
    if (!next.isEmpty()) {
      List<BitmapDirectory.Entry> entries = new ArrayList<>();
      for (Stored s : next) {
        entries.add(s.entry());
      }
      ByteBuffer d = BitmapDirectory.encode(entries);
      newSize = d.remaining();
      newOff = allocateContiguous((int) Qcow2Header.ceilDiv(newSize, clusterSize));
      o.add(OverlapCheck.Kind.BITMAP_DIRECTORY, newOff, newSize);
      try {
        file.writeMetadata(OverlapCheck.Kind.BITMAP_DIRECTORY, d, newOff);
        md.frees.flush(); // the new clusters and their refcounts are durable before the header names them
        long ac = (autoclear & ~Qcow2Header.AUTOCLEAR_BITMAPS) | Qcow2Header.AUTOCLEAR_BITMAPS;
        BitmapsHeader.rewrite(md, new BitmapDirectory.Extension(next.size(), newSize, newOff), ac);
        autoclear = ac;
      } catch (IOException | RuntimeException e) {
        o.remove(OverlapCheck.Kind.BITMAP_DIRECTORY, newOff, newSize);
        freeRange(newOff, newSize);
        throw e;
      }
    } else {
      long ac = autoclear & ~Qcow2Header.AUTOCLEAR_BITMAPS;
      md.frees.flush();
      BitmapsHeader.rewrite(md, null, ac);
      autoclear = ac;
    }
    onDisk = next;
    dirOffset = newOff;
    dirSize = newSize;
    if (oldSize > 0) {
      o.remove(OverlapCheck.Kind.BITMAP_DIRECTORY, oldOff, oldSize);
      freeRange(oldOff, oldSize);
    }
  }

  /** Frees the tables and data clusters of entries no longer on disk (their refcounts drop). */
  private void free(List<Stored> list) throws IOException {
    for (Stored s : list) {
      freeClusters(s.entry(), s.table(), true);
    }
  }

  private void freeClusters(BitmapDirectory.Entry e, long[] table, boolean withTable) throws IOException {
    OverlapCheck o = file.overlaps();
    if (table != null) {
      for (int i = 0; i < table.length; i++) {
        long off = table[i] & BitmapTables.ENTRY_OFFSET_MASK;
        if (off != 0) {
          o.remove(OverlapCheck.Kind.BITMAP_DATA, off, clusterSize);
          md.frees.freeNow(off);
          table[i] = 0;
        }
      }
    }
    if (withTable && e.tableOffset() != 0) {
      o.remove(OverlapCheck.Kind.BITMAP_TABLE, e.tableOffset(), e.tableBytes());
      freeRange(e.tableOffset(), e.tableBytes());
    }
  }

  private void freeRange(long off, long len) throws IOException {
    for (long c = off; c < off + len; c += clusterSize) {
      md.frees.freeNow(c);
    }
  }
}
