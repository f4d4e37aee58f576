package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;

import com.fasterxml.jackson.databind.JsonNode;
import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.WriteFlag;
import dev.blockbackup.formats.qcow2.ModelOps.Compress;
import dev.blockbackup.formats.qcow2.ModelOps.Discard;
import dev.blockbackup.formats.qcow2.ModelOps.Flush;
import dev.blockbackup.formats.qcow2.ModelOps.Op;
import dev.blockbackup.formats.qcow2.ModelOps.Read;
import dev.blockbackup.formats.qcow2.ModelOps.Reopen;
import dev.blockbackup.formats.qcow2.ModelOps.Write;
import dev.blockbackup.formats.qcow2.ModelOps.Zero;
import dev.blockbackup.testkit.QemuImg;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.BitSet;
import java.util.HexFormat;
import java.util.List;

/**
 * Runs {@link ModelOps} against an open {@link Qcow2Image} and a byte-array model that follows the
 * API contract of {@link Qcow2Image}: writes and writeZeroes change exactly their range; discard
 * zeroes exactly the clusters lying wholly inside its range (the last cluster counts as whole when
 * the range reaches the end of the image) and keeps every other byte; writeCompressed fills its
 * cluster where the cluster could take it (see {@link #compress}). It also judges the result:
 * reads, blockStatus, and after closing qemu-img check, compare and map.
 */
final class ModelRunner implements AutoCloseable {

  final Path path;
  final long size;
  final int cluster;
  /** What the guest must read. */
  final byte[] model;
  /** What the backing chain reads, zero-extended to {@link #size}; null without a backing file. */
  final byte[] backing;
  /**
   * Clusters written (by a non-zero {@link Write} or a {@link Compress}) and not touched by a zero or
   * discard since: blockStatus must call them allocated data.
   */
  final BitSet mustBeData = new BitSet();
  Qcow2Image img;

  ModelRunner(Qcow2Image img, byte[] initial, byte[] backing) {
    this.img = img;
    this.path = img.path();
    this.size = img.size();
    this.cluster = img.alignment();
    assertThat(initial.length).as("initial model length").isEqualTo(size);
    this.model = initial;
    this.backing = backing;
  }

  /** Fits {@code content} to {@code size} bytes: cut, or zero-extended. */
  static byte[] fit(byte[] content, long size) {
    return content.length == size ? content : Arrays.copyOf(content, Math.toIntExact(size));
  }

  void applyAll(List<Op> ops) throws IOException {
    for (int i = 0; i < ops.size(); i++) {
      try {
        apply(ops.get(i));
      } catch (AssertionError | IOException | RuntimeException e) {
        throw new AssertionError("op #" + i + " " + ops.get(i) + ": " + e, e);
      }
    }
  }

  /** Runs {@code op} on the image, then {@link #record records} it in the model. */
  void apply(Op op) throws IOException {
    if (op instanceof Write w) {
      img.write(w.offset(), ByteBuffer.wrap(w.data()), w.fua() ? new WriteFlag[] {WriteFlag.FUA} : new WriteFlag[0]);
    } else if (op instanceof Zero z) {
      List<WriteFlag> flags = new ArrayList<>();
      if (z.mayUnmap()) {
        flags.add(WriteFlag.MAY_UNMAP);
      }
      if (z.fua()) {
        flags.add(WriteFlag.FUA);
      }
      img.writeZeroes(z.offset(), z.length(), flags.toArray(WriteFlag[]::new));
    } else if (op instanceof Discard d) {
      img.discard(d.offset(), d.length());
    } else if (op instanceof Flush) {
      img.flush();
    } else if (op instanceof Read r) {
      ByteBuffer got = ByteBuffer.allocate(r.length());
      img.read(r.offset(), got);
      assertSameBytes(got.array(), 0, model, r.offset(), r.length(), "read " + r);
    } else if (op instanceof Reopen) {
      img.close();
      img = Qcow2Image.open(path, false);
      assertThat(img.size()).as("size after reopening").isEqualTo(size);
    } else if (op instanceof Compress k) {
      compress(k);
      return;
    } else {
      throw new IllegalArgumentException("unknown op " + op);
    }
    record(op);
  }

  /**
   * writeCompressed succeeds on an unallocated cluster and fails with EIO, changing nothing, on one
   * holding data. A zero cluster may go either way: QEMU (and so the driver) accepts compressed
   * writes into zero clusters without a host cluster (ZERO_PLAIN) and refuses them for preallocated
   * zero clusters (ZERO_ALLOC), which blockStatus does not tell apart.
   */
  private void compress(Compress k) throws IOException {
    long off = k.index() * cluster;
    int len = (int) Math.min(cluster, size - off);
    byte[] data = k.data(len);
    boolean hasData = false;
    boolean zeroFlagged = false;
    for (long at = off; at < off + len; ) {
      for (Extent e : img.blockStatus(at, off + len - at)) {
        hasData |= e.allocated() && e.data();
        zeroFlagged |= e.allocated() && e.zero();
        at = e.end();
      }
    }
    try {
      img.writeCompressed(off, ByteBuffer.wrap(data));
    } catch (BlockIOException e) {
      if (!hasData && !zeroFlagged) {
        throw new AssertionError("writeCompressed into unallocated cluster " + k.index() + " failed: " + e, e);
      }
      assertThat(e.error()).as("writeCompressed into allocated cluster %d: %s", k.index(), e).isEqualTo(BlockError.EIO);
      ByteBuffer back = ByteBuffer.allocate(len);
      img.read(off, back);
      assertSameBytes(back.array(), 0, model, off, len, "cluster " + k.index() + " after a refused writeCompressed");
      return;
    }
    if (hasData) {
      throw new AssertionError("writeCompressed into cluster " + k.index() + ", which holds data, succeeded; EIO expected");
    }
    System.arraycopy(data, 0, model, (int) off, len);
    mustBeData.set(clusterOf(off));
  }

  /** Applies {@code op} to the model only (for requests the test already ran on the image, e.g. from other threads). */
  void record(Op op) {
    if (op instanceof Write w) {
      // a write of zeros may legitimately become a zero cluster; any other write leaves data
      mustBeData.set(clusterOf(w.offset()), clusterOf(w.offset() + w.length() - 1) + 1, w.fill() != 0);
    } else if (op instanceof Zero z) {
      mustBeData.clear(clusterOf(z.offset()), clusterOf(z.offset() + z.length() - 1) + 1);
    } else if (op instanceof Discard d) {
      mustBeData.clear(clusterOf(d.offset()), clusterOf(d.offset() + d.length() - 1) + 1);
    }
    applyToModel(op, model, size, cluster);
  }

  /**
   * What {@code op} does to the guest's bytes under the contract: writes and zeroes change exactly
   * their range; a discard zeroes the clusters lying wholly inside it (the last one counts as whole
   * when the range reaches the end of the image) and keeps every other byte.
   */
  static void applyToModel(Op op, byte[] model, long size, int cluster) {
    if (op instanceof Write w) {
      System.arraycopy(w.data(), 0, model, (int) w.offset(), w.length());
    } else if (op instanceof Zero z) {
      Arrays.fill(model, (int) z.offset(), (int) (z.offset() + z.length()), (byte) 0);
    } else if (op instanceof Discard d) {
      long end = d.offset() + d.length();
      long zeroFrom = (d.offset() + cluster - 1) / cluster * cluster;
      long zeroTo = end == size ? size : end / cluster * cluster;
      if (zeroFrom < zeroTo) {
        Arrays.fill(model, (int) zeroFrom, (int) zeroTo, (byte) 0);
      }
    }
  }

  private int clusterOf(long off) {
    return (int) (off / cluster);
  }

  /** Reads the whole image in one request and again in odd-sized pieces, and compares both with the model. */
  void verifyContent(String when) throws IOException {
    verifyContent(img, model, when);
  }

  static void verifyContent(BlockDevice dev, byte[] expected, String when) throws IOException {
    ByteBuffer all = ByteBuffer.allocate(expected.length);
    dev.read(0, all);
    assertSameBytes(all.array(), 0, expected, 0, expected.length, when + ", one read of the whole image");
    int piece = 65_536 + 4_097;
    ByteBuffer buf = ByteBuffer.allocate(piece);
    for (long off = 0; off < expected.length; off += piece) {
      int len = (int) Math.min(piece, expected.length - off);
      buf.clear().limit(len);
      dev.read(off, buf);
      assertSameBytes(buf.array(), 0, expected, off, len, when + ", reads of " + piece + " bytes");
    }
  }

  /**
   * Walks blockStatus over the whole image and checks it against the contract: contiguous
   * extents; zero extents read as zero; unallocated extents read as the backing file (or zero, and
   * say so, without one); allocated extents are either data or zero; clusters written since their
   * last zero/discard are allocated data.
   */
  void verifyBlockStatus(String when) throws IOException {
    List<Extent> whole = new ArrayList<>();
    long pos = 0;
    while (pos < size) {
      List<Extent> extents = img.blockStatus(pos, size - pos);
      assertThat(extents).as("%s: blockStatus(%d, %d) is empty", when, pos, size - pos).isNotEmpty();
      for (Extent e : extents) {
        assertThat(e.offset()).as("%s: extent %s does not start where the previous ended", when, e).isEqualTo(pos);
        assertThat(e.end()).as("%s: extent %s reaches past the image", when, e).isLessThanOrEqualTo(size);
        int from = (int) e.offset();
        int to = (int) e.end();
        if (e.zero()) {
          int nz = firstNonZero(model, from, to);
          assertThat(nz).as("%s: extent %s says zero but the model has data at %d", when, e, nz).isEqualTo(-1);
        }
        if (e.allocated()) {
          assertThat(e.data() != e.zero()).as("%s: allocated extent %s must be exactly one of data or zero", when, e)
              .isTrue();
        } else {
          if (backing == null) {
            assertThat(e.zero()).as("%s: unallocated extent %s without backing file must be zero", when, e).isTrue();
          } else {
            assertSameBytes(backing, from, model, from, to - from,
                when + ": unallocated extent " + e + " must read as the backing file");
          }
        }
        int firstCluster = clusterOf(e.offset());
        int lastCluster = clusterOf(e.end() - 1);
        if (!(e.allocated() && e.data())) {
          int written = mustBeData.nextSetBit(firstCluster);
          assertThat(written != -1 && written <= lastCluster)
              .as("%s: extent %s covers cluster %d, which was written and must be allocated data", when, e, written)
              .isFalse();
        }
        whole.add(e);
        pos = e.end();
      }
    }
    // Queries of odd sub-ranges must describe each byte as the walk over the whole image did.
    java.util.SplittableRandom r = new java.util.SplittableRandom(size * 31 + cluster);
    for (int i = 0; i < 24; i++) {
      ModelOps.Range g = ModelOps.range(r, size, cluster);
      List<Extent> part = img.blockStatus(g.offset(), g.length());
      assertThat(part).as("%s: blockStatus(%d, %d) is empty", when, g.offset(), g.length()).isNotEmpty();
      long at = g.offset();
      for (Extent e : part) {
        assertThat(e.offset()).as("%s: blockStatus(%d, %d) extent %s is not contiguous", when, g.offset(), g.length(), e)
            .isEqualTo(at);
        assertThat(e.end()).as("%s: blockStatus(%d, %d) extent %s reaches past the range", when, g.offset(), g.length(),
            e).isLessThanOrEqualTo(g.offset() + g.length());
        for (Extent w : whole) {
          if (w.offset() < e.end() && e.offset() < w.end()) {
            assertThat(List.of(e.allocated(), e.data(), e.zero()))
                .as("%s: blockStatus(%d, %d) says %s, the whole-image walk said %s", when, g.offset(), g.length(), e, w)
                .isEqualTo(List.of(w.allocated(), w.data(), w.zero()));
          }
        }
        at = e.end();
      }
    }
  }

  /**
   * Closes the image, lets qemu-img check and compare judge it against the model, then reopens it
   * read-only with our driver and compares again.
   */
  void closeAndJudge(Path scratchDir) throws IOException {
    img.close();
    QemuImg.assertCheckClean(path);
    Path raw = Files.createTempFile(scratchDir, "model", ".raw");
    try {
      writeRaw(raw, model);
      QemuImg.assertIdentical(path, "qcow2", raw, "raw");
    } finally {
      Files.deleteIfExists(raw);
    }
    boolean rawBacking = "raw".equals(QemuImg.info(path).path("backing-filename-format").asText(null));
    try (Qcow2Image again = Qcow2Image.open(path, true)) {
      assertInfoMatchesQemu(again.info(), path);
      verifyContent(again, model, "after closing and reopening read-only");
      assertStatusMatchesQemuMap(again, path, rawBacking);
    }
  }

  @Override
  public void close() throws IOException {
    img.close();
  }

  /** Asserts that {@code info} says what {@code qemu-img info} (and, for the clusters in use, check) says of {@code path}. */
  static void assertInfoMatchesQemu(Qcow2Info info, Path path) {
    JsonNode q = QemuImg.info(path);
    JsonNode spec = q.path("format-specific").path("data");
    assertThat(info.virtualSize()).as("virtual-size").isEqualTo(q.get("virtual-size").asLong());
    assertThat(info.clusterSize()).as("cluster-size").isEqualTo(q.get("cluster-size").asInt());
    assertThat(info.version()).as("compat %s", spec.path("compat").asText())
        .isEqualTo(spec.path("compat").asText().equals("0.10") ? 2 : 3);
    assertThat(info.backingFile()).as("backing-filename").isEqualTo(textOrNull(q, "backing-filename"));
    assertThat(info.backingFormat()).as("backing-filename-format").isEqualTo(textOrNull(q, "backing-filename-format"));
    assertThat(info.dirty()).as("dirty-flag").isEqualTo(q.path("dirty-flag").asBoolean(false));
    assertThat(info.corrupt()).as("corrupt").isEqualTo(spec.path("corrupt").asBoolean(false));
    assertThat(info.lazyRefcounts()).as("lazy-refcounts").isEqualTo(spec.path("lazy-refcounts").asBoolean(false));
    assertThat(info.refcountBits()).as("refcount-bits").isEqualTo(spec.path("refcount-bits").asInt());
    assertThat(info.compressionType()).as("compression-type")
        .isEqualTo(spec.path("compression-type").asText("zlib"));
    assertThat(info.extendedL2()).as("extended-l2").isEqualTo(spec.path("extended-l2").asBoolean(false));
    // the header, the refcount table, a refcount block and the L1 table are in use in every image
    assertThat(info.hostClustersInUse()).as("hostClustersInUse").isGreaterThanOrEqualTo(4);
    QemuImg.Result checked = QemuImg.img("check", "--output=json", "-f", "qcow2", path);
    JsonNode check = checked.json();
    // (a dirty image's refcounts are stale by design: check reports corruptions and no bound holds)
    assertThat(info.dataFile()).as("data-file").isEqualTo(textOrNull(spec, "data-file"));
    assertThat(info.dataFileRaw()).as("data-file-raw").isEqualTo(spec.path("data-file-raw").asBoolean(false));
    // (an external data file's clusters are allocated without taking any of the image's)
    if (checked.exit() == 0 && check.path("compressed-clusters").asLong(0) == 0 && info.dataFile() == null) {
      assertThat(info.hostClustersInUse()).as("hostClustersInUse vs qemu-img check allocated-clusters %s", check)
          .isGreaterThanOrEqualTo(4 + check.path("allocated-clusters").asLong());
    }
  }

  private static String textOrNull(JsonNode n, String field) {
    return n.hasNonNull(field) ? n.get(field).asText() : null;
  }

  /** Writes {@code content} to a sparse raw file (only its non-zero 64 KiB pieces). */
  static void writeRaw(Path raw, byte[] content) throws IOException {
    try (RandomAccessFile f = new RandomAccessFile(raw.toFile(), "rw")) {
      f.setLength(0);
      f.setLength(content.length);
      int chunk = 65536;
      for (int off = 0; off < content.length; off += chunk) {
        int len = Math.min(chunk, content.length - off);
        if (firstNonZero(content, off, off + len) != -1) {
          f.seek(off);
          f.write(content, off, len);
        }
      }
    }
  }

  static int firstNonZero(byte[] a, int from, int to) {
    for (int i = from; i < to; i++) {
      if (a[i] != 0) {
        return i;
      }
    }
    return -1;
  }

  /**
   * Compares {@code actual[aOff..]} with {@code expected[eOff..]} over {@code len} bytes; on a
   * mismatch fails with the first differing guest offset, how many bytes differ, and both sides'
   * bytes around it (instead of printing megabytes).
   */
  static void assertSameBytes(byte[] actual, int aOff, byte[] expected, long eOff, int len, String what) {
    int e0 = (int) eOff;
    int mismatch = Arrays.mismatch(actual, aOff, aOff + len, expected, e0, e0 + len);
    if (mismatch < 0) {
      return;
    }
    int differing = 0;
    int lastDiff = mismatch;
    for (int i = mismatch; i < len; i++) {
      if (actual[aOff + i] != expected[e0 + i]) {
        differing++;
        lastDiff = i;
      }
    }
    int from = Math.max(0, mismatch - 8);
    int to = Math.min(len, mismatch + 24);
    HexFormat hex = HexFormat.of();
    throw new AssertionError(String.format(
        "%s: %d bytes differ, first at guest offset %d (0x%x), last at %d%n  actual   @%d: %s%n  expected @%d: %s",
        what, differing, eOff + mismatch, eOff + mismatch, eOff + lastDiff, eOff + from,
        hex.formatHex(actual, aOff + from, aOff + to), eOff + from, hex.formatHex(expected, e0 + from, e0 + to)));
  }

  /** The image's guest content as {@code qemu-img convert -O raw} produces it. */
  static byte[] qemuContent(Path image, String format, Path scratchDir) throws IOException {
    Path raw = Files.createTempFile(scratchDir, "convert", ".raw");
    try {
      QemuImg.img("convert", "-f", format, "-O", "raw", image, raw).assertExit(0);
      return Files.readAllBytes(raw);
    } finally {
      Files.deleteIfExists(raw);
    }
  }

  /** Deletes a directory tree (scratch directories of property tries). */
  static void deleteTree(Path dir) throws IOException {
    if (!Files.exists(dir)) {
      return;
    }
    try (var s = Files.walk(dir)) {
      for (Path p : s.sorted(java.util.Comparator.reverseOrder()).toList()) {
        Files.deleteIfExists(p);
      }
    }
  }

  /**
   * Compares our blockStatus over the whole image with {@code qemu-img map}: allocated here means
   * present at depth 0 there, and data and zero must agree. With {@code onlyAllocation} (a raw
   * backing file, whose holes qemu sees and Java cannot) data and zero are compared only where
   * the top layer decides them.
   */
  static void assertStatusMatchesQemuMap(Qcow2Image img, Path path, boolean onlyAllocation) throws IOException {
    List<Seg> ours = new ArrayList<>();
    long pos = 0;
    while (pos < img.size()) {
      List<Extent> extents = img.blockStatus(pos, img.size() - pos);
      assertThat(extents).as("blockStatus(%d, ...)", pos).isNotEmpty();
      for (Extent e : extents) {
        assertThat(e.offset()).as("extents must be contiguous").isEqualTo(pos);
        ours.add(new Seg(e.offset(), e.end(), e.allocated(), e.data(), e.zero()));
        pos = e.end();
      }
    }
    List<Seg> qemu = new ArrayList<>();
    for (QemuImg.MapEntry e : QemuImg.map(path, "qcow2")) {
      qemu.add(new Seg(e.start(), e.start() + e.length(), e.present() && e.depth() == 0, e.data(), e.zero()));
    }
    assertSameStatus(ours, qemu, onlyAllocation);
  }

  /** A run of bytes with one status: allocated in the top layer, data, zero. */
  record Seg(long start, long end, boolean allocated, boolean data, boolean zero) {}

  /** Compares two segmentations byte range by byte range and fails at the first range where the flags differ. */
  static void assertSameStatus(List<Seg> ours, List<Seg> qemu, boolean onlyAllocation) {
    assertThat(ours).isNotEmpty();
    assertThat(qemu).isNotEmpty();
    assertThat(ours.get(ours.size() - 1).end()).as("our blockStatus ends where qemu-img map ends")
        .isEqualTo(qemu.get(qemu.size() - 1).end());
    int i = 0;
    int j = 0;
    long pos = 0;
    while (i < ours.size() && j < qemu.size()) {
      Seg a = ours.get(i);
      Seg b = qemu.get(j);
      long end = Math.min(a.end(), b.end());
      boolean flagsCount = !onlyAllocation || a.allocated();
      if (a.allocated() != b.allocated() || flagsCount && (a.data() != b.data() || a.zero() != b.zero())) {
        throw new AssertionError(String.format(
            "blockStatus differs from qemu-img map over [%d, %d): ours allocated=%s data=%s zero=%s (extent %s), "
                + "qemu present-at-depth-0=%s data=%s zero=%s (entry %s)",
            pos, end, a.allocated(), a.data(), a.zero(), a, b.allocated(), b.data(), b.zero(), b));
      }
      pos = end;
      if (a.end() == end) {
        i++;
      }
      if (b.end() == end) {
        j++;
      }
    }
  }
}
