package dev.blockbackup.formats.qcow2;

import static dev.blockbackup.formats.qcow2.Qcow2Image.COMPRESSED;
import static dev.blockbackup.formats.qcow2.Qcow2Image.OFFSET_MASK;

import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import java.io.IOException;
import java.nio.ByteBuffer;

/**
 * Compressed writes: one whole guest cluster deflated into a stream that is packed after the
 * previous one ({@link CompressedPacker}), into a guest cluster that holds no host cluster, as
 * QEMU's compressed writes go (qemu-img convert -c, backup with compress=on). The caller holds the
 * guest cluster exclusively.
 */
final class CompressedClusters {

  private final Qcow2Metadata md;

  CompressedClusters(Qcow2Metadata md) {
    this.md = md;
  }

  /**
   * Writes the {@code expect} bytes of {@code cluster} compressed at guest cluster {@code gci}.
   * Returns false, writing nothing, when they do not compress to under one cluster: the caller
   * writes them as a normal cluster then.
   *
   * @throws BlockIOException EIO when the guest cluster holds a host cluster already, as in QEMU
   */
  boolean write(long gci, ByteBuffer cluster, int expect) throws IOException {
    int clusterSize = md.clusterSize;
    int clusterBits = md.clusterBits;
    byte[] in = new byte[clusterSize];
    cluster.duplicate().get(in, 0, expect);
    byte[] out = new byte[clusterSize];
    int clen = CompressedCluster.deflate(in, out);
    long descriptor;
    md.lock.lock();
    try {
      long e = md.map.entryAt(gci);
      if ((e & COMPRESSED) != 0 || (e & OFFSET_MASK) != 0) {
        throw new BlockIOException(BlockError.EIO, md.where + ": guest cluster at " + (gci << clusterBits)
            + " is already allocated; compressed writes go to unallocated clusters only");
      }
      if (clen < 0) {
        return false;
      }
      md.map.ensureWritableL2(gci / md.l2Entries);
      long coff = md.packer.allocate(clen);
      descriptor = CompressedCluster.descriptor(coff, clen, clusterBits);
    } finally {
      md.lock.unlock();
    }
    try {
      md.file.write(ByteBuffer.wrap(out, 0, clen), CompressedCluster.hostOffset(descriptor, clusterBits));
    } catch (IOException | RuntimeException ex) {
      md.undoAfter(ex, () -> md.frees.freeNow(descriptor)); // nothing points to the stream yet
      throw ex;
    }
    md.lock.lock();
    try {
      md.map.setEntry(gci, descriptor);
    } finally {
      md.lock.unlock();
    }
    return true;
  }
}
