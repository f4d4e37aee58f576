package dev.blockbackup.formats.qcow2;

import static dev.blockbackup.formats.qcow2.Qcow2Image.COMPRESSED;
import static dev.blockbackup.formats.qcow2.Qcow2Image.OFFSET_MASK;

import java.io.IOException;
import java.util.Arrays;

/**
 * Freeing host clusters in crash-safe order, as QEMU orders it: a removed pointer (an L2 entry or
 * an old L2 table) is on disk before the refcount decrease it allows, so a crash can leak a cluster
 * but never leave a pointer to a freed one. Decreases are gathered and applied in batches; a flush
 * applies them all. Used under the metadata lock.
 */
final class ClusterFrees {

  /** Deferred refcount decreases are applied at latest when this many have gathered. */
  private static final int PENDING_LIMIT = 1024;

  private final HostFile file;
  private final RefcountTable refcounts;
  private final L2Cache l2;
  private final int clusterBits;
  private final CompressedPacker packer;
  /** L2 entries (or old L2 table offsets) whose host clusters lose a reference once the new mapping is durable. */
  private long[] pending = new long[64];
  private int pendingCount;

  ClusterFrees(HostFile file, RefcountTable refcounts, L2Cache l2, int clusterBits, CompressedPacker packer) {
    this.file = file;
    this.refcounts = refcounts;
    this.l2 = l2;
    this.clusterBits = clusterBits;
    this.packer = packer;
  }

  /** Whether L2 entry {@code e} holds references to host clusters (data or compressed). */
  static boolean holdsHostClusters(long e) {
    return (e & COMPRESSED) != 0 || (e & OFFSET_MASK) != 0;
  }

  /** Drops the references of {@code entry} once the pointer that replaced it is durable. */
  void freeLater(long entry) {
    if (pendingCount == pending.length) {
      pending = Arrays.copyOf(pending, pendingCount * 2);
    }
    pending[pendingCount++] = entry;
  }

  /** Applies the deferred decreases when many have gathered, so memory stays bounded between flushes. */
  void applyIfMany() throws IOException {
    if (pendingCount >= PENDING_LIMIT) {
      apply();
    }
  }

  /** Makes the pointer removals durable, then applies the refcount decreases they allow. */
  void apply() throws IOException {
    if (pendingCount == 0) {
      return;
    }
    writeL2Ordered();
    file.sync();
    for (int i = 0; i < pendingCount; i++) {
      freeNow(pending[i]);
    }
    pendingCount = 0;
  }

  /** Drops the references that {@code entry} held at once: for clusters nothing on disk points to. */
  void freeNow(long entry) throws IOException {
    if ((entry & COMPRESSED) != 0) {
      long last = CompressedCluster.lastCluster(entry, clusterBits);
      for (long c = CompressedCluster.firstCluster(entry, clusterBits); c <= last; c++) {
        decrease(c);
      }
    } else if ((entry & OFFSET_MASK) != 0) {
      decrease((entry & OFFSET_MASK) >>> clusterBits);
    }
  }

  private void decrease(long ci) throws IOException {
    refcounts.add(ci, -1);
    if (packer.packsInto(ci) && refcounts.get(ci) == 0) {
      packer.stop(); // the cluster may be handed out next as a data cluster
    }
  }

  /** Refcount blocks, sync (refcounts and copied data before the mappings), then dirty L2 tables. */
  private void writeL2Ordered() throws IOException {
    refcounts.flush();
    if (l2.hasDirty()) {
      file.sync();
      l2.flush();
    }
  }

  /** Everything written so far becomes durable, in crash-safe order. */
  void flush() throws IOException {
    apply();
    writeL2Ordered();
    refcounts.flush();
    file.sync();
  }
}
