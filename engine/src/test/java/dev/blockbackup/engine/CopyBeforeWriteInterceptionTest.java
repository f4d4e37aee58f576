package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.InterceptingBlockDevice;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.SplittableRandom;
import java.util.TreeSet;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The contract between {@link BlockDevice} and copy-before-write: every call of the interface that
 * can change data, found by reflection, is intercepted. A call added to the interface later is
 * either listed below as one that changes nothing, or it must be final in {@link
 * InterceptingBlockDevice}, forwarded by {@link BlockNode}, and shown here to copy the old data
 * first, else this test fails.
 *
 * <p>The source is a qcow2, so a compressed write is real. For each changing call, a sync=none job
 * runs while the call goes through the node on a cluster of its own; the {@link SnapshotView} must
 * still read that cluster as it was, while the source holds the change.
 */
@Timeout(60)
class CopyBeforeWriteInterceptionTest {

  static final int CLUSTER = 64 * 1024;
  static final long SIZE = 32L * CLUSTER;
  static final Duration WAIT = Duration.ofSeconds(30);

  /** The calls that change no data, by signature; every other call of BlockDevice must be intercepted. */
  static final Set<String> NON_MUTATING = Set.of(
      "size()", "alignment()", "isReadOnly()", "read(long,ByteBuffer)", "readNoWait(long,ByteBuffer)", "flush()",
      "supportsCompressedWrites()", "blockStatus(long,long)", "close()");

  @TempDir Path dir;

  /** One changing call, made through {@code device} on the cluster at {@code offset}. */
  interface Mutation {
    void apply(BlockDevice device, long offset, byte[] data) throws Exception;
  }

  /** How to make each changing call; a signature missing here fails the test. */
  static final Map<String, Mutation> MUTATIONS = new LinkedHashMap<>();

  static {
    MUTATIONS.put("write(long,ByteBuffer,WriteFlag[])", (d, off, data) -> d.write(off, ByteBuffer.wrap(data)));
    MUTATIONS.put("writeZeroes(long,long,WriteFlag[])", (d, off, data) -> d.writeZeroes(off, CLUSTER));
    MUTATIONS.put("discard(long,long)", (d, off, data) -> d.discard(off, CLUSTER));
    MUTATIONS.put("writeCompressed(long,ByteBuffer)", (d, off, data) -> d.writeCompressed(off, ByteBuffer.wrap(data)));
  }

  static String signature(Method m) {
    StringBuilder b = new StringBuilder(m.getName()).append('(');
    Class<?>[] params = m.getParameterTypes();
    for (int i = 0; i < params.length; i++) {
      b.append(i > 0 ? "," : "").append(params[i].getSimpleName());
    }
    return b.append(')').toString();
  }

  /** Every public call of the interface (with those it inherits, such as close) except Object's. */
  static List<Method> contract() {
    List<Method> out = new ArrayList<>();
    for (Method m : BlockDevice.class.getMethods()) {
      if (!Modifier.isStatic(m.getModifiers())) {
        out.add(m);
      }
    }
    return out;
  }

  static List<Method> mutating() {
    List<Method> out = new ArrayList<>();
    for (Method m : contract()) {
      if (!NON_MUTATING.contains(signature(m))) {
        out.add(m);
      }
    }
    return out;
  }

  @Test
  void everyChangingCallIsFinalInTheInterceptionBase() throws Exception {
    assertThat(mutating()).as("the contract has changing calls").isNotEmpty();
    for (Method m : mutating()) {
      Method own = InterceptingBlockDevice.class.getDeclaredMethod(m.getName(), m.getParameterTypes());
      assertThat(Modifier.isFinal(own.getModifiers()))
          .as("%s must be final in InterceptingBlockDevice, so no filter can skip its hook", signature(m))
          .isTrue();
    }
  }

  @Test
  void theNodeForwardsEveryCallOfTheContract() throws Exception {
    for (Method m : contract()) {
      Method own = BlockNode.class.getDeclaredMethod(m.getName(), m.getParameterTypes());
      assertThat(own.isDefault()).as("%s of BlockNode", signature(m)).isFalse();
    }
  }

  @Test
  void theListsHereNameOnlyCallsOfTheContract() {
    Set<String> all = new TreeSet<>();
    contract().forEach(m -> all.add(signature(m)));
    assertThat(all).containsAll(NON_MUTATING).containsAll(MUTATIONS.keySet());
  }

  @Test
  void everyChangingCallThroughTheNodeCopiesTheOldDataFirst() throws Exception {
    byte[] pointInTime = new byte[(int) SIZE];
    new SplittableRandom(7).nextBytes(pointInTime);
    // the odd clusters stay unallocated in the source: a compressed write needs one of those
    for (int c = 1; c < SIZE / CLUSTER; c += 2) {
      Arrays.fill(pointInTime, c * CLUSTER, (c + 1) * CLUSTER, (byte) 0);
    }
    Qcow2Image src = Qcow2Image.create(dir.resolve("src.qcow2"), Qcow2CreateOptions.of(SIZE));
    for (int c = 0; c < SIZE / CLUSTER; c += 2) {
      src.write((long) c * CLUSTER, ByteBuffer.wrap(pointInTime, c * CLUSTER, CLUSTER));
    }
    Qcow2Image tgt = Qcow2Image.create(dir.resolve("tgt.qcow2"), Qcow2CreateOptions.of(SIZE));
    BlockNode node = BlockNode.of("drive0", src);
    assertThat(node.supportsCompressedWrites()).as("a node over a qcow2 writes compressed").isTrue();

    BackupJob job = BackupJob.create(new JobManager(), node, tgt, BackupOptions.of(MirrorSyncMode.none));
    job.start();
    assertThat(job.awaitStatus(WAIT, JobStatus.running)).isTrue();
    assertThat(node.supportsCompressedWrites()).as("also with the filter on top").isTrue();
    SnapshotView view = job.snapshotView();

    int next = 0; // each call gets two clusters of its own: one with data, one unallocated
    SplittableRandom random = new SplittableRandom(11);
    for (Method m : mutating()) {
      String sig = signature(m);
      Mutation mutation = MUTATIONS.get(sig);
      assertThat(mutation).as("no test shows that %s is intercepted: add it to MUTATIONS", sig).isNotNull();
      // a compressed write goes where the source allocates nothing yet (the odd cluster); the others
      // change the data cluster, where zeroing or discarding is a change
      long off = (long) (sig.startsWith("writeCompressed") ? next + 1 : next) * CLUSTER;
      next += 2;
      byte[] data = new byte[CLUSTER];
      random.nextBytes(data);
      mutation.apply(node, off, data);
      byte[] want = Arrays.copyOfRange(pointInTime, (int) off, (int) off + CLUSTER);
      assertThat(read(src, off)).as("%s at %d changed the source", sig, off).isNotEqualTo(want);
      assertThat(read(view, off)).as("%s at %d: the snapshot still reads the point in time", sig, off)
          .isEqualTo(want);
      assertThat(read(tgt, off)).as("%s at %d: the old data was copied to the target", sig, off).isEqualTo(want);
    }
    assertThat(next).isLessThan((int) (SIZE / CLUSTER));
    // the untouched clusters still read through too
    assertThat(read(view, SIZE - CLUSTER)).isEqualTo(Arrays.copyOfRange(pointInTime, (int) SIZE - CLUSTER, (int) SIZE));

    job.cancel();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    tgt.close();
    node.close();
  }

  @Test
  void theNodesDirtyTrackingIsAnInterceptionFilterRightAboveTheBase() throws Exception {
    Qcow2Image src = Qcow2Image.create(dir.resolve("t.qcow2"), Qcow2CreateOptions.of(SIZE));
    BlockNode node = BlockNode.of("drive0", src);
    assertThat(node.unfiltered()).isInstanceOf(DirtyTracking.class).isInstanceOf(InterceptingBlockDevice.class);
    Qcow2Image tgt = Qcow2Image.create(dir.resolve("tt.qcow2"), Qcow2CreateOptions.of(SIZE));
    BackupJob job = BackupJob.create(new JobManager(), node, tgt, BackupOptions.of(MirrorSyncMode.none));
    assertThat(job.filter().blockCopy().source()).as("a job's filter goes above the tracking").isSameAs(node.unfiltered());
    job.cancel();
    assertThat(job.awaitConcluded(WAIT)).isTrue();
    tgt.close();
    node.close();
  }

  @Test
  void everyChangingCallThroughTheNodeMarksItsBitmaps() throws Exception {
    Qcow2Image src = Qcow2Image.create(dir.resolve("m.qcow2"), Qcow2CreateOptions.of(SIZE));
    BlockNode node = BlockNode.of("drive0", src);
    BlockDirtyBitmap bitmap = node.addBitmap("b0", CLUSTER, false, false);
    int next = 0;
    SplittableRandom random = new SplittableRandom(13);
    for (Method m : mutating()) {
      String sig = signature(m);
      Mutation mutation = MUTATIONS.get(sig);
      assertThat(mutation).as("no test shows that %s marks bitmaps: add it to MUTATIONS", sig).isNotNull();
      long off = (long) next * CLUSTER;
      byte[] data = new byte[CLUSTER];
      random.nextBytes(data);
      node.clearBitmap("b0");
      mutation.apply(node, off, data);
      assertThat(bitmap.count()).as("%s marked one cluster", sig).isEqualTo(CLUSTER);
      assertThat(bitmap.isDirty(off)).as("%s at %d", sig, off).isTrue();
      next += 2;
    }
    node.close();
  }

  private static byte[] read(BlockDevice d, long off) throws Exception {
    ByteBuffer b = ByteBuffer.allocate(CLUSTER);
    d.read(off, b);
    return b.array();
  }
}
