package dev.blockbackup.formats.qcow2;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A write-back LRU cache of whole L2 tables, keyed by host offset, used under the image's metadata
 * lock. A {@link Table} is valid only until the next {@link #get} or {@link #put}, which may evict it
 * and reuse its array.
 *
 * <p>Before a dirty table is written (eviction or flush) the {@code beforeWrite} action runs: the
 * image flushes its refcount blocks and syncs, so every cluster an L2 entry points to has its
 * refcount (and any copied-on-write data) on disk first (QEMU's L2-depends-on-refcount rule).
 */
final class L2Cache {

  interface IoAction {
    void run() throws IOException;
  }

  static final class Table {
    long offset;
    final long[] e;
    int dirtyLo = Integer.MAX_VALUE;
    int dirtyHi = -1;

    Table(long offset, long[] e) {
      this.offset = offset;
      this.e = e;
    }

    void set(int i, long v) {
      e[i] = v;
      dirtyLo = Math.min(dirtyLo, i);
      dirtyHi = Math.max(dirtyHi, i);
    }

    boolean dirty() {
      return dirtyHi >= 0;
    }
  }

  private final HostFile file;
  private final int entries;
  private final int capacity;
  private final IoAction beforeWrite;
  private final ByteBuffer scratch;
  private final LinkedHashMap<Long, Table> map = new LinkedHashMap<>(16, 0.75f, true);
  private Table last;

  L2Cache(HostFile file, int clusterSize, int capacity, IoAction beforeWrite) {
    this.file = file;
    this.entries = clusterSize / 8;
    this.capacity = Math.max(2, capacity);
    this.beforeWrite = beforeWrite;
    this.scratch = ByteBuffer.allocate(clusterSize);
  }

  /** The table at {@code offset}, loaded from the file when not cached. */
  Table get(long offset) throws IOException {
    if (last != null && last.offset == offset) {
      return last;
    }
    Table t = map.get(offset);
    if (t == null) {
      long[] arr = evictOne();
      scratch.clear();
      file.read(scratch, offset);
      scratch.flip();
      scratch.asLongBuffer().get(arr);
      t = new Table(offset, arr);
      map.put(offset, t);
    }
    last = t;
    return t;
  }

  /** Caches a table whose content is already on disk. */
  Table put(long offset, long[] content) throws IOException {
    Table old = map.remove(offset);
    if (old == last) {
      last = null;
    }
    long[] arr = evictOne();
    System.arraycopy(content, 0, arr, 0, entries);
    Table t = new Table(offset, arr);
    map.put(offset, t);
    last = t;
    return t;
  }

  /** Makes room for one table; returns an array to fill. */
  private long[] evictOne() throws IOException {
    if (map.size() < capacity) {
      return new long[entries];
    }
    Iterator<Map.Entry<Long, Table>> it = map.entrySet().iterator();
    Table victim = it.next().getValue();
    if (victim.dirty()) {
      beforeWrite.run();
      write(victim);
    }
    it.remove();
    if (victim == last) {
      last = null;
    }
    victim.offset = -1;
    return victim.e;
  }

  boolean hasDirty() {
    for (Table t : map.values()) {
      if (t.dirty()) {
        return true;
      }
    }
    return false;
  }

  /** Writes every dirty table; the caller has run the ordering action. */
  void flush() throws IOException {
    List<Table> dirty = new ArrayList<>();
    for (Table t : map.values()) {
      if (t.dirty()) {
        dirty.add(t);
      }
    }
    dirty.sort((a, b) -> Long.compare(a.offset, b.offset));
    for (Table t : dirty) {
      write(t);
    }
  }

  private void write(Table t) throws IOException {
    int lo = t.dirtyLo;
    int hi = t.dirtyHi;
    scratch.clear();
    for (int i = lo; i <= hi; i++) {
      scratch.putLong(t.e[i]);
    }
    scratch.flip();
    file.writeMetadata(OverlapCheck.Kind.ACTIVE_L2, scratch, t.offset + (long) lo * 8);
    t.dirtyLo = Integer.MAX_VALUE;
    t.dirtyHi = -1;
  }
}
