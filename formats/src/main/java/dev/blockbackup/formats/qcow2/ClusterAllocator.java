package dev.blockbackup.formats.qcow2;

import static dev.blockbackup.formats.qcow2.Qcow2Image.COMPRESSED;
import static dev.blockbackup.formats.qcow2.Qcow2Image.COPIED;
import static dev.blockbackup.formats.qcow2.Qcow2Image.OFFSET_MASK;
import static dev.blockbackup.formats.qcow2.Qcow2Image.ZERO_FLAG;

import java.io.IOException;
import java.nio.ByteBuffer;

/**
 * Guest writes: in place into clusters this image owns alone, and otherwise into newly allocated
 * host clusters, filled around the guest bytes with what the clusters read as before (backing
 * file, zeros, data shared with a snapshot, compressed data) so that a partial write keeps the
 * rest. The new mapping replaces the old one only after the data is written; the old host
 * clusters are freed once the new mapping is durable (crash order, {@link ClusterFrees}).
 *
 * <p>The caller holds the guest clusters it writes exclusively (the image's range lock), so no
 * other request allocates, frees or reads them meanwhile.
 */
final class ClusterAllocator {

  private final Qcow2Metadata md;
  private final ClusterReader reader;

  ClusterAllocator(Qcow2Metadata md, ClusterReader reader) {
    this.md = md;
    this.reader = reader;
  }

  /** Whether L2 entry {@code e} is a data cluster this image owns alone: writable in place. */
  boolean isCopiedNormal(long e) {
    return isCopiedNormal(e, md.externalData);
  }

  /** As {@link #isCopiedNormal(long)}; with an external data file host offset 0 is a data cluster too. */
  static boolean isCopiedNormal(long e, boolean externalData) {
    return (e & (COPIED | COMPRESSED | ZERO_FLAG)) == COPIED && ((e & OFFSET_MASK) != 0 || externalData);
  }

  /**
   * Whether every cluster under {@code [offset, offset+length)} is writable in place, so that a
   * write holding only its own bytes may go ahead: it changes no mapping.
   */
  boolean allInPlace(long offset, long length) throws IOException {
    long last = (offset + length - 1) >>> md.clusterBits;
    md.lock.lock();
    try {
      for (long gci = offset >>> md.clusterBits; gci <= last; gci++) {
        if (!isCopiedNormal(md.map.entryAt(gci))) {
          return false;
        }
      }
      return true;
    } finally {
      md.lock.unlock();
    }
  }

  /** Writes {@code src} (its remaining bytes, left unconsumed) at guest {@code offset}. */
  void write(long offset, ByteBuffer src) throws IOException {
    int clusterBits = md.clusterBits;
    long end = offset + src.remaining();
    int base = src.position();
    long pos = offset;
    long lastCluster = end == offset ? -1 : (end - 1) >>> clusterBits;
    while (pos < end) {
      long gci = pos >>> clusterBits;
      Run run = nextRun(gci, lastCluster - gci + 1);
      long runStart = gci << clusterBits;
      long wEnd = Math.min(end, runStart + ((long) run.clusters << clusterBits));
      int srcOff = base + (int) (pos - offset);
      if (run.old == null) {
        writeData(src.slice(srcOff, (int) (wEnd - pos)), run.host + (pos - runStart));
      } else {
        writeRun(gci, run, pos, wEnd, src, srcOff);
      }
      pos = wEnd;
    }
  }

  /**
   * Writes data at {@code host}. A raw data file's clusters sit at their guest offsets, so there
   * the image's last partial cluster is written only up to the virtual size: the raw file keeps the
   * disk's size.
   */
  private void writeData(ByteBuffer b, long host) throws IOException {
    if (md.rawData && host + b.remaining() > md.size) {
      b = b.slice(b.position(), (int) Math.max(0, md.size - host));
    }
    md.data.write(b, host);
  }

  /**
   * A run of guest clusters from {@code gci} written the same way: in place ({@code old} null), or
   * into {@code clusters} host clusters from {@code host}, newly allocated or (ZERO_ALLOC) reused.
   */
  private record Run(long host, int clusters, long[] old, boolean reused) {}

  /** Looks up (and when needed allocates) the run of at most {@code max} clusters from {@code gci}. */
  private Run nextRun(long gci, long max) throws IOException {
    int clusterBits = md.clusterBits;
    ClusterMap map = md.map;
    md.lock.lock();
    try {
      long e = map.entryAt(gci);
      if (isCopiedNormal(e)) {
        long host = e & OFFSET_MASK;
        int n = 1;
        while (n < max) {
          long e2 = map.entryAt(gci + n);
          if (!isCopiedNormal(e2) || (e2 & OFFSET_MASK) != host + ((long) n << clusterBits)) {
            break;
          }
          n++;
        }
        return new Run(host, n, null, false);
      }
      if ((e & (COPIED | COMPRESSED | ZERO_FLAG)) == (COPIED | ZERO_FLAG) && (e & OFFSET_MASK) != 0) {
        // ZERO_ALLOC: the cluster is ours already; write it in place (zeros around the data),
        // then clear the zero flag, as QEMU does
        map.ensureWritableL2(gci / md.l2Entries);
        return new Run(e & OFFSET_MASK, 1, new long[] {ZERO_FLAG}, true);
      }
      int n = 1;
      while (n < max && n < Integer.MAX_VALUE / 2 && !isCopiedNormal(map.entryAt(gci + n))) {
        n++;
      }
      // L2 tables first, then data: the layout QEMU produces
      for (long l1i = gci / md.l2Entries; l1i <= (gci + n - 1) / md.l2Entries; l1i++) {
        map.ensureWritableL2(l1i);
      }
      long[] old = new long[n];
      for (int k = 0; k < n; k++) {
        old[k] = map.entryAt(gci + k);
      }
      if (md.externalData) {
        // QEMU maps a data file's clusters one to one and keeps no refcounts for them: nothing to
        // allocate, nothing to give back if the data write fails
        return new Run(gci << clusterBits, n, old, true);
      }
      long host = md.refcounts.allocate(n) << clusterBits;
      return new Run(host, md.refcounts.lastCount, old, false);
    } finally {
      md.lock.unlock();
    }
  }

  /** Fills the run's host clusters, then points the guest clusters at them and frees the old ones. */
  private void writeRun(long gci, Run run, long pos, long wEnd, ByteBuffer src, int srcOff) throws IOException {
    int n = run.clusters;
    try {
      fill(gci, run, pos, wEnd, src, srcOff);
    } catch (IOException | RuntimeException ex) {
      if (!run.reused) {
        md.undoAfter(ex, () -> {
          for (int k = 0; k < n; k++) {
            md.refcounts.add((run.host >>> md.clusterBits) + k, -1);
          }
        });
      }
      throw ex;
    }
    md.lock.lock();
    try {
      for (int k = 0; k < n; k++) {
        md.map.setEntry(gci + k, (run.host + ((long) k << md.clusterBits)) | COPIED);
        if (md.holdsRefcounts(run.old[k])) {
          md.frees.freeLater(run.old[k]);
        }
      }
      md.frees.applyIfMany();
    } finally {
      md.lock.unlock();
    }
  }

  /** Writes the guest bytes {@code [pos, wEnd)} into the run's host clusters, and the old content around them. */
  private void fill(long gci, Run run, long pos, long wEnd, ByteBuffer src, int srcOff) throws IOException {
    int clusterBits = md.clusterBits;
    int clusterSize = md.clusterSize;
    int n = run.clusters;
    long host = run.host;
    long runStart = gci << clusterBits;
    long runEnd = runStart + ((long) n << clusterBits);
    long head = pos - runStart;
    long tail = runEnd - wEnd;
    int len = (int) (wEnd - pos);
    if (head == 0 && tail == 0) {
      writeData(src.slice(srcOff, len), host);
      return;
    }
    if (n == 1) {
      ByteBuffer c = ByteBuffer.allocate(clusterSize);
      reader.readCluster(run.old[0], runStart, c);
      c.put((int) head, src, srcOff, len);
      c.clear();
      writeData(c, host);
      return;
    }
    int firstFull = 0;
    int lastFull = n - 1;
    if (head > 0) {
      ByteBuffer c = ByteBuffer.allocate(clusterSize);
      reader.readCluster(run.old[0], runStart, c);
      c.put((int) head, src, srcOff, (int) (clusterSize - head));
      c.clear();
      writeData(c, host);
      firstFull = 1;
    }
    if (tail > 0) {
      lastFull = n - 2;
    }
    if (lastFull >= firstFull) {
      long gStart = runStart + ((long) firstFull << clusterBits);
      int mLen = (lastFull - firstFull + 1) << clusterBits;
      writeData(src.slice(srcOff + (int) (gStart - pos), mLen), host + ((long) firstFull << clusterBits));
    }
    if (tail > 0) {
      long tStart = runEnd - clusterSize;
      ByteBuffer c = ByteBuffer.allocate(clusterSize);
      reader.readCluster(run.old[n - 1], tStart, c);
      c.put(0, src, srcOff + (int) (tStart - pos), (int) (wEnd - tStart));
      c.clear();
      writeData(c, host + ((long) (n - 1) << clusterBits));
    }
  }
}
