package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.ImageFormatException;
import java.io.IOException;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The refcount table (held whole in RAM, as QEMU does), a write-back LRU cache of refcount blocks,
 * and the first-fit cluster allocator built on them. All calls are made under the image's metadata
 * lock.
 *
 * <p>Ordering: an increased refcount may reach the disk at any time (a refcount too high is only a
 * leak), so dirty blocks are written on eviction without further ado. Decreases are applied by the
 * caller only once the pointer they undo is durable. A new refcount block is written and synced
 * before the reftable entry that points to it (QEMU's rule for refblock allocation), and it is
 * placed inside the range it covers so that it counts itself.
 */
final class RefcountTable {

  static final long REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00L;
  /** Host offsets must stay below 2^56 (the L2 entry's offset field). */
  static final long MAX_HOST_OFFSET = 1L << 56;

  private static final VarHandle BE16 = MethodHandles.byteArrayViewVarHandle(short[].class, ByteOrder.BIG_ENDIAN);
  private static final VarHandle BE32 = MethodHandles.byteArrayViewVarHandle(int[].class, ByteOrder.BIG_ENDIAN);
  private static final VarHandle BE64 = MethodHandles.byteArrayViewVarHandle(long[].class, ByteOrder.BIG_ENDIAN);

  private static final class Block {
    final long offset;
    final byte[] data;
    boolean dirty;

    Block(long offset, byte[] data) {
      this.offset = offset;
      this.data = data;
    }
  }

  private final HostFile file;
  private final String where;
  private final int clusterBits;
  private final int clusterSize;
  private final int order;
  /** Refcount entries per refcount block. */
  private final long entries;
  private final long maxRefcount;
  /** Where the refcount table lives; both change when it grows. */
  private long reftableOffset;
  private long[] reftable;
  private final int capacity;
  private final LinkedHashMap<Long, Block> cache = new LinkedHashMap<>(16, 0.75f, true);
  private Block last;
  /** No cluster below this index is free (QEMU's free_cluster_index). */
  private long freeHint;

  RefcountTable(HostFile file, String where, int clusterBits, int order, long reftableOffset, long[] reftable) {
    this.file = file;
    this.where = where;
    this.clusterBits = clusterBits;
    this.clusterSize = 1 << clusterBits;
    this.order = order;
    this.entries = ((long) clusterSize * 8) >>> order;
    this.maxRefcount = order == 6 ? Long.MAX_VALUE : (1L << (1 << order)) - 1;
    this.reftableOffset = reftableOffset;
    this.reftable = reftable;
    // QEMU's default and minimum refcount cache: 4 clusters.
    this.capacity = 4;
  }

  long maxRefcount() {
    return maxRefcount;
  }

  /** The refcount of host cluster {@code ci}. */
  long get(long ci) throws IOException {
    Block b = block(ci, false);
    return b == null ? 0 : entry(b.data, (int) (ci % entries));
  }

  /** Adds {@code delta} to the refcount of {@code ci}; the block must exist unless delta is positive. */
  void add(long ci, long delta) throws IOException {
    Block b = block(ci, false);
    if (b == null) {
      if (delta < 0) {
        throw new ImageFormatException(where + ": refcount of host cluster " + ci + " would drop below 0");
      }
      throw new IllegalStateException("no refcount block for cluster " + ci);
    }
    int i = (int) (ci % entries);
    long v = entry(b.data, i) + delta;
    if (v < 0) {
      throw new ImageFormatException(where + ": refcount of host cluster " + ci + " would drop below 0");
    }
    if (v > maxRefcount) {
      throw new ImageFormatException(where + ": refcount of host cluster " + ci + " would overflow " + maxRefcount);
    }
    setEntry(b.data, i, v);
    b.dirty = true;
    if (v == 0 && ci < freeHint) {
      freeHint = ci;
    }
  }

  /**
   * Allocates the first run of free clusters at or after the free hint, up to {@code max} long, and
   * gives each refcount 1. Returns the first cluster index; {@link #lastCount} says how many.
   */
  long allocate(int max) throws IOException {
    long ci = freeHint;
    while (true) {
      checkHostLimit(ci);
      long bi = ci / entries;
      if (bi >= reftable.length) {
        grow(bi);
        continue;
      }
      if ((reftable[(int) bi] & REFT_OFFSET_MASK) == 0) {
        newBlockAt(ci);
        ci++;
        continue;
      }
      Block b = block(ci, true);
      int i = (int) (ci % entries);
      while (i < entries && entry(b.data, i) != 0) {
        i++;
      }
      if (i == entries) {
        ci = (bi + 1) * entries;
        continue;
      }
      long start = bi * entries + i;
      int count = 0;
      long c = start;
      // a run may continue into the next block when that block exists already
      while (count < max) {
        checkHostLimit(c);
        long cbi = c / entries;
        if (cbi >= reftable.length || (reftable[(int) cbi] & REFT_OFFSET_MASK) == 0) {
          break;
        }
        Block cb = block(c, true);
        int ci2 = (int) (c % entries);
        if (entry(cb.data, ci2) != 0) {
          break;
        }
        setEntry(cb.data, ci2, 1);
        cb.dirty = true;
        count++;
        c++;
      }
      freeHint = start + count;
      lastCount = count;
      return start;
    }
  }

  /**
   * Takes cluster {@code ci} (refcount 1) if it is free and its refcount block exists already;
   * the byte allocator for compressed data uses it to let a stream run on into the next cluster.
   */
  boolean allocateAt(long ci) throws IOException {
    long bi = ci / entries;
    if (ci >= (MAX_HOST_OFFSET >>> clusterBits) || bi >= reftable.length || (reftable[(int) bi] & REFT_OFFSET_MASK) == 0) {
      return false;
    }
    Block b = block(ci, true);
    int i = (int) (ci % entries);
    if (entry(b.data, i) != 0) {
      return false;
    }
    setEntry(b.data, i, 1);
    b.dirty = true;
    return true;
  }

  /**
   * Replaces the refcount table with a bigger one (QEMU grows it by half) that covers block index
   * {@code bi}. The new table and the refcount blocks that count it are placed past everything the
   * old table could describe; they are written and synced, then the header is switched with a
   * synced write, and only then the old table's clusters are freed.
   */
  private void grow(long bi) throws IOException {
    long oldEntries = reftable.length;
    long wanted = Math.max(bi + 1, oldEntries + (oldEntries + 1) / 2);
    long tableClusters = Qcow2Header.ceilDiv(wanted * 8, clusterSize);
    if (tableClusters * clusterSize > Qcow2Header.MAX_REFTABLE_BYTES) {
      throw new BlockIOException(BlockError.ENOSPC, where + ": the refcount table would grow beyond QEMU's limit of 8 MiB");
    }
    long newEntries = tableClusters * clusterSize / 8;
    long start = Math.max(oldEntries * entries, Qcow2Header.ceilDiv(file.size(), clusterSize));
    // the new blocks count the table and themselves: find how many blocks that takes
    long blocks = 1;
    while (true) {
      long end = start + tableClusters + blocks;
      long need = (end - 1) / entries - start / entries + 1;
      if (need <= blocks) {
        break;
      }
      blocks = need;
    }
    long used = tableClusters + blocks;
    long firstBlock = start / entries;
    long lastBlock = (start + used - 1) / entries;
    checkHostLimit(start + used);
    if (lastBlock >= newEntries) {
      throw new BlockIOException(BlockError.ENOSPC, where + ": cannot place a grown refcount table");
    }
    long[] table = java.util.Arrays.copyOf(reftable, (int) newEntries);
    long blockCluster = start + tableClusters;
    for (long b = firstBlock; b <= lastBlock; b++, blockCluster++) {
      byte[] data = new byte[clusterSize];
      for (long c = Math.max(start, b * entries); c < Math.min(start + used, (b + 1) * entries); c++) {
        setEntry(data, (int) (c % entries), 1);
      }
      long off = blockCluster << clusterBits;
      file.writeMetadata(OverlapCheck.Kind.REFCOUNT_BLOCK, ByteBuffer.wrap(data), off);
      table[(int) b] = off;
    }
    ByteBuffer t = ByteBuffer.allocate((int) (tableClusters * clusterSize));
    t.asLongBuffer().put(table);
    long tableOff = start << clusterBits;
    file.writeMetadata(OverlapCheck.Kind.REFCOUNT_TABLE, t, tableOff);
    flush();
    file.sync();
    ByteBuffer h = ByteBuffer.allocate(12).putLong(0, tableOff).putInt(8, (int) tableClusters);
    file.writeMetadata(OverlapCheck.Kind.HEADER, h, 48);
    file.sync();
    long oldOff = reftableOffset;
    long oldClusters = Qcow2Header.ceilDiv(oldEntries * 8, clusterSize);
    reftable = table;
    reftableOffset = tableOff;
    OverlapCheck overlaps = file.overlaps();
    overlaps.add(OverlapCheck.Kind.REFCOUNT_TABLE, tableOff, tableClusters * clusterSize);
    for (long b = firstBlock; b <= lastBlock; b++) {
      overlaps.add(OverlapCheck.Kind.REFCOUNT_BLOCK, table[(int) b], clusterSize);
    }
    // the old table's clusters are freed below and may hold data from then on
    overlaps.remove(OverlapCheck.Kind.REFCOUNT_TABLE, oldOff, oldClusters * clusterSize);
    for (long c = 0; c < oldClusters; c++) {
      add((oldOff >>> clusterBits) + c, -1);
    }
  }

  /**
   * Overwrites every refcount with {@code ref[ci]} (0 past its end), for the refcount rebuild of a
   * dirty image. Returns the first cluster that needs a count but has no refcount block, or -1.
   */
  long overwriteAll(int[] ref) throws IOException {
    for (int bi = 0; bi < reftable.length; bi++) {
      if ((reftable[bi] & REFT_OFFSET_MASK) == 0) {
        long first = (long) bi * entries;
        for (long c = first; c < Math.min(ref.length, first + entries); c++) {
          if (ref[(int) c] != 0) {
            return c;
          }
        }
        continue;
      }
      Block b = block((long) bi * entries, true);
      for (int i = 0; i < entries; i++) {
        long ci = (long) bi * entries + i;
        long v = ci < ref.length ? ref[(int) ci] : 0;
        if (v > maxRefcount) {
          throw new ImageFormatException(where + ": host cluster " + ci + " has " + v + " references, more than "
              + maxRefcount + " that refcount_bits allows");
        }
        setEntry(b.data, i, v);
      }
      b.dirty = true;
    }
    for (long c = (long) reftable.length * entries; c < ref.length; c++) {
      if (ref[(int) c] != 0) {
        return c;
      }
    }
    freeHint = 0;
    return -1;
  }

  long reftableOffset() {
    return reftableOffset;
  }

  /** Whether host offset {@code off} lies inside the refcount table. */
  boolean inReftable(long off) {
    return off >= reftableOffset && off - reftableOffset < (long) reftable.length * 8;
  }

  /** The refcount block offsets (reftable entries), for the rebuild to count. */
  long[] reftable() {
    return reftable;
  }

  /** How many clusters the last {@link #allocate} gave. */
  int lastCount;

  private void checkHostLimit(long ci) throws BlockIOException {
    if (ci >= (MAX_HOST_OFFSET >>> clusterBits)) {
      throw new BlockIOException(BlockError.ENOSPC, where + ": host offsets would pass 2^56");
    }
  }

  /** A new refcount block at free cluster {@code ci}, inside the range it covers, counting itself. */
  private void newBlockAt(long ci) throws IOException {
    long bi = ci / entries;
    long off = ci << clusterBits;
    byte[] data = new byte[clusterSize];
    setEntry(data, (int) (ci % entries), 1);
    file.writeMetadata(OverlapCheck.Kind.REFCOUNT_BLOCK, ByteBuffer.wrap(data), off);
    file.sync();
    reftable[(int) bi] = off;
    ByteBuffer e = ByteBuffer.allocate(8).putLong(0, off);
    file.writeMetadata(OverlapCheck.Kind.REFCOUNT_TABLE, e, reftableOffset + bi * 8);
    file.overlaps().add(OverlapCheck.Kind.REFCOUNT_BLOCK, off, clusterSize);
    put(new Block(off, data));
  }

  /** Writes every dirty block (no sync). */
  void flush() throws IOException {
    List<Block> dirty = new ArrayList<>();
    for (Block b : cache.values()) {
      if (b.dirty) {
        dirty.add(b);
      }
    }
    dirty.sort((a, b) -> Long.compare(a.offset, b.offset));
    for (Block b : dirty) {
      writeBlock(b);
    }
  }

  boolean hasDirty() {
    for (Block b : cache.values()) {
      if (b.dirty) {
        return true;
      }
    }
    return false;
  }

  /** Host clusters whose refcount is not zero. */
  long countInUse() throws IOException {
    long n = 0;
    for (int bi = 0; bi < reftable.length; bi++) {
      if ((reftable[bi] & REFT_OFFSET_MASK) == 0) {
        continue;
      }
      Block b = block(bi * entries, false);
      for (int i = 0; i < entries; i++) {
        if (entry(b.data, i) != 0) {
          n++;
        }
      }
    }
    return n;
  }

  private void writeBlock(Block b) throws IOException {
    file.writeMetadata(OverlapCheck.Kind.REFCOUNT_BLOCK, ByteBuffer.wrap(b.data), b.offset);
    b.dirty = false;
  }

  private Block block(long ci, boolean mustExist) throws IOException {
    long bi = ci / entries;
    if (bi >= reftable.length) {
      return null;
    }
    long off = reftable[(int) bi];
    if ((off & ~REFT_OFFSET_MASK) != 0) {
      throw new ImageFormatException(where + ": refcount table entry " + bi + " (0x" + Long.toHexString(off)
          + ") has reserved bits set");
    }
    if (off == 0) {
      if (mustExist) {
        throw new IllegalStateException("refcount block " + bi + " missing");
      }
      return null;
    }
    if (last != null && last.offset == off) {
      return last;
    }
    Block b = cache.get(off);
    if (b == null) {
      if ((off & (clusterSize - 1)) != 0 || off < 0 || off >= file.size()) {
        throw new ImageFormatException(where + ": refcount block 0x" + Long.toHexString(off) + " (reftable entry " + bi
            + ") is unaligned or lies past the end of the file (" + file.size() + ")");
      }
      byte[] data = new byte[clusterSize];
      file.read(ByteBuffer.wrap(data), off);
      b = new Block(off, data);
      put(b);
    }
    last = b;
    return b;
  }

  private void put(Block b) throws IOException {
    if (cache.size() >= capacity) {
      Iterator<Map.Entry<Long, Block>> it = cache.entrySet().iterator();
      Block victim = it.next().getValue();
      if (victim.dirty) {
        writeBlock(victim);
      }
      it.remove();
      if (last == victim) {
        last = null;
      }
    }
    cache.put(b.offset, b);
    last = b;
  }

  private long entry(byte[] d, int i) {
    switch (order) {
      case 4:
        return Short.toUnsignedLong((short) BE16.get(d, i * 2));
      case 3:
        return d[i] & 0xff;
      case 5:
        return Integer.toUnsignedLong((int) BE32.get(d, i * 4));
      case 6:
        return (long) BE64.get(d, i * 8);
      default: {
        int bits = 1 << order;
        int perByte = 8 / bits;
        int shift = (i % perByte) * bits;
        return (d[i / perByte] >>> shift) & ((1 << bits) - 1);
      }
    }
  }

  private void setEntry(byte[] d, int i, long v) {
    switch (order) {
      case 4 -> BE16.set(d, i * 2, (short) v);
      case 3 -> d[i] = (byte) v;
      case 5 -> BE32.set(d, i * 4, (int) v);
      case 6 -> BE64.set(d, i * 8, v);
      default -> {
        int bits = 1 << order;
        int perByte = 8 / bits;
        int shift = (i % perByte) * bits;
        int mask = ((1 << bits) - 1) << shift;
        d[i / perByte] = (byte) ((d[i / perByte] & ~mask) | ((int) (v << shift) & mask));
      }
    }
  }
}
