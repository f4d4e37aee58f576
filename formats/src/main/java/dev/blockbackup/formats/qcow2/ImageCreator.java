package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.ImageLock;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.file.Path;

/**
 * Writes a new, empty v3 image the way {@code qemu-img create -f qcow2} lays it out: header in
 * cluster 0, the refcount table from cluster 1, its refcount blocks, then the L1 table. Refcounts
 * are 16 bits wide and lazy refcounts are off. Unlike QEMU, the refcount table is sized up front
 * for the fully allocated image (up to QEMU's 8 MiB limit), so it rarely has to grow.
 */
final class ImageCreator {

  private ImageCreator() {}

  /** Creates (or truncates) {@code path} and writes the empty image, synced. */
  static void write(Path path, Qcow2CreateOptions options, CacheMode cacheMode) throws BlockIOException {
    int cs = options.clusterSize();
    int cb = Integer.numberOfTrailingZeros(cs);
    long size = options.size();
    long l2e = cs / 8;
    long l1Size = Qcow2Header.ceilDiv(size, (long) cs * l2e);
    if (l1Size * 8 > Qcow2Header.MAX_L1_BYTES) {
      throw new BlockIOException(BlockError.EINVAL, "image size " + size + " needs an L1 table of " + l1Size * 8
          + " bytes with " + cs + "-byte clusters, above QEMU's limit of 32 MiB");
    }
    // an empty image has no L1 cluster to count (QEMU's layout: the offset points past the file)
    long l1Clusters = Qcow2Header.ceilDiv(l1Size * 8, cs);
    long perBlock = (long) cs * 8 / 16;
    // Size the refcount table for the fully allocated image, so it never has to grow.
    long rtc = 1;
    long rbc = 1;
    for (int i = 0; i < 8; i++) {
      long total = 1 + rtc + rbc + l1Clusters + l1Size + Qcow2Header.ceilDiv(size, cs) + 64;
      rbc = Qcow2Header.ceilDiv(total, perBlock);
      rtc = Math.max(1, Qcow2Header.ceilDiv(rbc * 8, cs));
    }
    rtc = Math.min(rtc, Qcow2Header.MAX_REFTABLE_BYTES / cs);
    long nrb = 1;
    while (nrb * perBlock < 1 + rtc + nrb + l1Clusters) {
      nrb++;
    }
    long reftableOff = (long) cs;
    long refblocksOff = (1 + rtc) * cs;
    long l1Off = l1Size == 0 ? 0 : (1 + rtc + nrb) * cs;
    long used = 1 + rtc + nrb + l1Clusters;
    ByteBuffer c0;
    try {
      c0 = Qcow2Header.newCluster0(cb, size, l1Size, l1Off, reftableOff, rtc, options.backingFile(), options.backingFormat());
    } catch (IllegalArgumentException e) {
      throw new BlockIOException(BlockError.EINVAL, path + ": " + e.getMessage(), e);
    }
    try (RandomAccessFile f = ImageLock.openFile(path, false)) {
      HostFile hf = new HostFile(f.getChannel(), cacheMode);
      f.setLength(0);
      hf.write(c0, 0);
      ByteBuffer rt = ByteBuffer.allocate((int) (rtc * cs));
      for (int i = 0; i < nrb; i++) {
        rt.putLong(i * 8, refblocksOff + (long) i * cs);
      }
      hf.write(rt, reftableOff);
      ByteBuffer rbs = ByteBuffer.allocate((int) (nrb * cs));
      for (int i = 0; i < used; i++) {
        rbs.putShort(i * 2, (short) 1);
      }
      hf.write(rbs, refblocksOff);
      if (l1Clusters > 0) {
        hf.write(ByteBuffer.allocate((int) (l1Clusters * cs)), l1Off);
      }
      hf.sync();
    } catch (IOException e) {
      throw BlockIOException.fromHost("cannot create " + path, e);
    }
  }
}
