package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.formats.ImageFormatException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;

/**
 * The bitmap directory of one image as it is on disk, with each entry's bitmap table (QEMU's
 * bitmap list): read and checked at open, and replaced whole when it changes: new data clusters and
 * tables, a new directory, then the header extension, then the old clusters are freed.
 *
 * <p>Crash order: whatever a crash interrupts, the header points to a complete directory whose
 * tables and data are durable with their refcounts, or to none; a crash may leak clusters, never
 * corrupt. Changes happen under the metadata lock.
 */
final class Qcow2BitmapList {

  /** One directory entry as on disk, with its table (null when it could not be read: in use, never read). */
  private record Stored(BitmapDirectory.Entry entry, long[] table) {}

  private final Qcow2Metadata md;
  private final HostFile file;
  private final String where;
  private final int clusterSize;
  /** The directory as it is on disk now. */
  private List<Stored> onDisk = new ArrayList<>();
  private long dirOffset;
  private long dirSize;
  /** The autoclear field as it is on disk now. */
  private long autoclear;

  Qcow2BitmapList(Qcow2Metadata md) {
    this.md = md;
    this.file = md.file;
    this.where = md.where;
    this.clusterSize = md.clusterSize;
    this.autoclear = md.header.autoclear;
  }

  /**
   * Reads the bitmaps extension of {@code c0} (cluster 0), the directory, tables and data, checking
   * everything as QEMU does at open; returns the bitmaps in directory order. Writes nothing.
   */
  List<Qcow2Bitmap> load(ByteBuffer c0) throws IOException {
    Qcow2Header h = md.header;
    if (h.bitmapsExtOffset < 0) {
      return List.of();
    }
    if (h.bitmapsExtLength != BitmapDirectory.EXTENSION_LENGTH) {
      throw new ImageFormatException(where + ": the bitmaps extension has " + h.bitmapsExtLength + " bytes, not "
          + BitmapDirectory.EXTENSION_LENGTH);
    }
    if (h.version < 3 || (h.autoclear & Qcow2Header.AUTOCLEAR_BITMAPS) == 0) {
      return List.of(); // written by a program that knows no bitmaps: every bitmap is stale, as in QEMU
    }
    BitmapDirectory.Extension x = BitmapDirectory.parseExtension(c0, h.bitmapsExtOffset + 8, h.bitmapsExtLength,
        clusterSize, where);
    return loadDirectory(x);
  }

  private List<Qcow2Bitmap> loadDirectory(BitmapDirectory.Extension x) throws IOException {
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
    return loaded;
  }

  /** Calls {@code r} for the directory, each table and each data cluster on disk. */
  void forEachRange(Qcow2Bitmaps.Ranges r) throws IOException {
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

  /** Removes {@code name}'s entry from the directory on disk, if it has one, and frees its clusters. */
  void remove(String name) throws IOException {
    Stored s = stored(name);
    if (s != null) {
      List<Stored> rest = new ArrayList<>(onDisk);
      rest.remove(s);
      writeDirectory(rest);
      free(List.of(s));
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
   * Stores every consistent bitmap of {@code bitmaps}: its data and table in new clusters, then the
   * new directory and header, then frees the old tables. Inconsistent bitmaps keep their entry as it
   * is, in use.
   */
  void store(List<Qcow2Bitmap> bitmaps) throws IOException {
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
