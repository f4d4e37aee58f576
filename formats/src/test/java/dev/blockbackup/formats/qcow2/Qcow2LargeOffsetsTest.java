package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.WriteFlag;
import dev.blockbackup.testkit.QemuImg;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Offsets past 2 GiB and 4 GiB and up to the end of a multi-terabyte image, where an int in the
 * arithmetic would overflow. There is no byte-array model this large, so QEMU is the model: the
 * same pattern writes, zeroes and discards go into an image of ours and, through qemu-io, into an
 * image of QEMU's, and qemu-img compare must find the two identical.
 */
@Tag("interop")
class Qcow2LargeOffsetsTest {

  private static final long G = 1L << 30;

  @TempDir Path dir;

  /** One request, applied to our image and turned into a qemu-io command. */
  record Req(String kind, long offset, long length, int pattern) {
    String qemuIo() {
      return switch (kind) {
        case "write" -> "write -P " + pattern + " " + offset + " " + length;
        case "zero" -> "write -z " + offset + " " + length;
        case "zero-unmap" -> "write -z -u " + offset + " " + length;
        default -> "discard " + offset + " " + length;
      };
    }
  }

  static List<Req> requests(long size, int cluster) {
    List<Req> reqs = new ArrayList<>();
    long[] around = {2 * G, 4 * G, 8 * G, 16 * G, 1L << 40, size}; // int overflow edges, then the end
    int p = 1;
    for (long edge : around) {
      if (edge > size) {
        continue;
      }
      reqs.add(new Req("write", edge - 3 * cluster - 77, 2L * cluster + 177, p++)); // ends just before the edge
      if (edge < size) {
        reqs.add(new Req("write", edge - 700, 1400, p++)); // straddles it
      }
      reqs.add(new Req("write", edge - 5L * cluster, cluster, p++)); // a whole cluster below it
    }
    SplittableRandom r = new SplittableRandom(size + cluster);
    for (int i = 0; i < 24; i++) {
      long off = r.nextLong(size - 70_000) / 512 * 512 + (r.nextBoolean() ? r.nextInt(512) : 0);
      reqs.add(new Req("write", off, Math.min(size - off, 1 + r.nextInt(3 * cluster)), p++));
    }
    // zero and discard some of what was written, whole clusters and partial ones
    List<Req> written = new ArrayList<>(reqs);
    for (int i = 0; i < written.size(); i += 3) {
      Req w = written.get(i);
      long c0 = w.offset() / cluster * cluster;
      String kind = switch (i % 4) {
        case 0 -> "zero";
        case 1 -> "zero-unmap";
        default -> "discard";
      };
      reqs.add(new Req(kind, c0, Math.min(size - c0, 2L * cluster), 0));
      reqs.add(new Req("zero", w.offset() + w.length() / 3, Math.max(1, w.length() / 3), 0));
    }
    reqs.add(new Req("discard", size - cluster, cluster, 0)); // the last cluster
    reqs.add(new Req("write", size - 300, 300, p)); // and its last bytes again
    return reqs;
  }

  @ParameterizedTest(name = "{0}-byte clusters, {1} GiB")
  @CsvSource({"65536, 2048", "4096, 17", "512, 5", "2097152, 4096"})
  void requestsAboveTheIntRangeMatchQemu(int cluster, long gib) throws Exception {
    long size = gib * G - 512 * 3; // not cluster-aligned: the last cluster is partial
    List<Req> reqs = requests(size, cluster);
    Path ours = dir.resolve("ours.qcow2");
    Path theirs = dir.resolve("theirs.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=" + cluster, theirs, size).assertExit(0);
    List<Object> io = new ArrayList<>(List.of("-f", "qcow2"));
    for (Req q : reqs) {
      io.add("-c");
      io.add(q.qemuIo());
    }
    io.add(theirs);
    QemuImg.io(io.toArray()).assertExit(0);

    try (Qcow2Image img = Qcow2Image.create(ours, Qcow2CreateOptions.of(size).withClusterSize(cluster))) {
      apply(img, reqs);
    }
    QemuImg.assertCheckClean(ours);
    QemuImg.assertIdentical(ours, "qcow2", theirs, "qcow2");

    // and our reads and blockStatus around every request agree with the requests replayed on that window
    // (qemu-img compare above has judged that replay's semantics against QEMU's over the whole image)
    try (Qcow2Image img = Qcow2Image.open(ours, true)) {
      for (Req q : reqs) {
        long from = Math.max(0, q.offset() - 64);
        long to = Math.min(size, q.offset() + q.length() + 64);
        byte[] expected = window(reqs, from, to, size, cluster);
        ByteBuffer got = ByteBuffer.allocate((int) (to - from));
        img.read(from, got);
        ModelRunner.assertSameBytes(got.array(), 0, expected, 0, expected.length,
            "our read of [" + from + ", " + to + ") around " + q + " against qemu's image");
        for (Extent e : img.blockStatus(from, to - from)) {
          if (e.zero()) {
            int nz = ModelRunner.firstNonZero(expected, (int) (e.offset() - from), (int) (e.end() - from));
            assertThat(nz).as("extent %s says zero, around %s", e, q).isEqualTo(-1);
          }
        }
      }
    }
  }

  /**
   * qemu-img's metadata preallocation maps every guest cluster to a host cluster of a sparse file
   * as large as the disk, so writes near the end of a 4.5 GiB image land at host offsets above
   * 4 GiB without writing gigabytes.
   */
  @ParameterizedTest(name = "{0}-byte clusters")
  @CsvSource({"65536", "2097152"})
  void writesAtHostOffsetsAbove4GiBInAPreallocatedImageMatchQemu(int cluster) throws Exception {
    long size = 4608L << 20;
    Path ours = dir.resolve("ours.qcow2");
    Path theirs = dir.resolve("theirs.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", "-o", "preallocation=metadata,cluster_size=" + cluster, ours, size)
        .assertExit(0);
    QemuImg.img("create", "-q", "-f", "qcow2", "-o", "preallocation=metadata,cluster_size=" + cluster, theirs, size)
        .assertExit(0);
    List<Req> reqs = requests(size, cluster);
    List<Object> io = new ArrayList<>(List.of("-f", "qcow2"));
    for (Req q : reqs) {
      io.add("-c");
      io.add(q.qemuIo());
    }
    io.add(theirs);
    QemuImg.io(io.toArray()).assertExit(0);
    try (Qcow2Image img = Qcow2Image.open(ours, false)) {
      apply(img, reqs);
    }
    QemuImg.assertCheckClean(ours);
    QemuImg.assertIdentical(ours, "qcow2", theirs, "qcow2");
    try (Qcow2Image img = Qcow2Image.open(ours, true)) {
      for (Req q : reqs) {
        long from = Math.max(0, q.offset() - 64);
        long to = Math.min(size, q.offset() + q.length() + 64);
        byte[] expected = window(reqs, from, to, size, cluster);
        ByteBuffer got = ByteBuffer.allocate((int) (to - from));
        img.read(from, got);
        ModelRunner.assertSameBytes(got.array(), 0, expected, 0, expected.length,
            "our read of [" + from + ", " + to + ") around " + q);
      }
    }
  }

  static void apply(Qcow2Image img, List<Req> reqs) throws Exception {
    for (Req q : reqs) {
      switch (q.kind()) {
        case "write" -> {
          byte[] b = new byte[(int) q.length()];
          Arrays.fill(b, (byte) q.pattern());
          img.write(q.offset(), ByteBuffer.wrap(b));
        }
        case "zero" -> img.writeZeroes(q.offset(), q.length());
        case "zero-unmap" -> img.writeZeroes(q.offset(), q.length(), WriteFlag.MAY_UNMAP);
        default -> img.discard(q.offset(), q.length());
      }
    }
  }

  /** The bytes {@code [from, to)} after all requests: a model of just that window. */
  static byte[] window(List<Req> reqs, long from, long to, long size, int cluster) {
    byte[] w = new byte[(int) (to - from)];
    for (Req q : reqs) {
      long a = q.offset();
      long b = q.offset() + q.length();
      byte fill = 0;
      if (q.kind().equals("write")) {
        fill = (byte) q.pattern();
      } else if (q.kind().equals("discard")) { // whole clusters only; the last one counts as whole at the end
        a = (a + cluster - 1) / cluster * cluster;
        b = b == size ? size : b / cluster * cluster;
      }
      long lo = Math.max(a, from);
      long hi = Math.min(b, to);
      if (lo < hi) {
        Arrays.fill(w, (int) (lo - from), (int) (hi - from), fill);
      }
    }
    return w;
  }
}
