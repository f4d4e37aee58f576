package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.qcow2.ModelOps.Discard;
import dev.blockbackup.formats.qcow2.ModelOps.Write;
import dev.blockbackup.formats.qcow2.ModelOps.Zero;
import dev.blockbackup.testkit.QemuImg;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * writeCompressed: several compressed clusters packed into shared host clusters, incompressible
 * ones stored as normal clusters, the image's partial last cluster, packing continued after a
 * reopen; checked by qemu-img check, compare and map, and by our reads after reopening.
 */
@Tag("interop")
class Qcow2CompressedWritesTest {

  @TempDir Path dir;

  /** What cluster {@code k} holds. */
  enum Kind {
    TEXT, // compresses well
    RANDOM, // does not compress: stored as a normal cluster
    SPARSE, // a few non-zero bytes in zeros
    NONE // left unallocated
  }

  static Kind kindOf(int k) {
    return switch (k % 6) {
      case 0, 1, 3 -> Kind.TEXT;
      case 2 -> Kind.RANDOM;
      case 4 -> Kind.NONE;
      default -> Kind.SPARSE;
    };
  }

  static byte[] content(Kind kind, int k, int len) {
    byte[] b = new byte[len];
    switch (kind) {
      case TEXT -> {
        byte[] text = ("cluster " + k + " compresses well. ").repeat(len / 20 + 1).getBytes(StandardCharsets.US_ASCII);
        System.arraycopy(text, 0, b, 0, len);
      }
      case RANDOM -> new SplittableRandom(k).nextBytes(b);
      case SPARSE -> {
        for (int i = 0; i < len; i += 997) {
          b[i] = (byte) (k + i);
        }
      }
      case NONE -> { }
    }
    return b;
  }

  @ParameterizedTest(name = "{0}-byte clusters")
  @ValueSource(ints = {4096, 65536, 2 * 1024 * 1024})
  void compressedClustersArePackedAndReadBackAfterReopen(int c) throws Exception {
    int clusters = c == 2 * 1024 * 1024 ? 7 : 30;
    long size = (long) clusters * c + 1536; // the last cluster is partial
    int total = clusters + 1;
    byte[] model = new byte[(int) size];
    Path path = dir.resolve("compressed.qcow2");
    Qcow2Image img = Qcow2Image.create(path, Qcow2CreateOptions.of(size).withClusterSize(c));
    try {
      for (int k = 0; k < total; k++) {
        if (k == total / 2) { // packing must continue correctly after a reopen
          img.close();
          img = Qcow2Image.open(path, false);
        }
        Kind kind = k == total - 1 ? Kind.TEXT : kindOf(k);
        if (kind == Kind.NONE) {
          continue;
        }
        int len = (int) Math.min(c, size - (long) k * c);
        byte[] data = content(kind, k, len);
        img.writeCompressed((long) k * c, ByteBuffer.wrap(data));
        System.arraycopy(data, 0, model, k * c, len);
      }
      ModelRunner.verifyContent(img, model, "after writeCompressed, before close");
    } finally {
      img.close();
    }
    QemuImg.assertCheckClean(path);
    Path raw = dir.resolve("model.raw");
    ModelRunner.writeRaw(raw, model);
    QemuImg.assertIdentical(path, "qcow2", raw, "raw");
    List<QemuImg.MapEntry> map = QemuImg.map(path, "qcow2");
    for (int k = 0; k < total; k++) {
      Kind kind = k == total - 1 ? Kind.TEXT : kindOf(k);
      QemuImg.MapEntry e = entryAt(map, (long) k * c);
      switch (kind) {
        case TEXT, SPARSE -> assertThat(e.data() && e.present() && e.offset() == null)
            .as("cluster %d (%s) must be compressed: data, no host offset; qemu-img map says %s", k, kind, e).isTrue();
        case RANDOM -> assertThat(e.data() && e.present() && e.offset() != null)
            .as("cluster %d (incompressible) must be a normal cluster with a host offset; qemu-img map says %s", k, e)
            .isTrue();
        case NONE -> assertThat(e.present()).as("cluster %d was never written; qemu-img map says %s", k, e).isFalse();
      }
    }
    try (Qcow2Image again = Qcow2Image.open(path, true)) {
      ModelRunner.verifyContent(again, model, "after reopening read-only");
      for (int k = 0; k < total; k++) {
        List<Extent> st = again.blockStatus((long) k * c, Math.min(c, size - (long) k * c));
        boolean written = (k == total - 1 ? Kind.TEXT : kindOf(k)) != Kind.NONE;
        assertThat(st.get(0).allocated() && st.get(0).data()).as("blockStatus of cluster %d: %s", k, st)
            .isEqualTo(written);
      }
    }

    // Rewrite some of them: compressed clusters become normal ones, their shared host clusters lose one reference each.
    try (ModelRunner m = new ModelRunner(Qcow2Image.open(path, false), model, null)) {
      byte[] before = Arrays.copyOfRange(m.model, 0, c);
      assertThatThrownBy(() -> m.img.writeCompressed(0, ByteBuffer.wrap(content(Kind.TEXT, 99, c))))
          .as("writeCompressed into an allocated cluster")
          .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EIO));
      ModelRunner.assertSameBytes(readCluster(m.img, 0, c), 0, before, 0, c, "cluster 0 after the refused writeCompressed");
      m.apply(new Write(c + 100, 300, 1, -1, false)); // partial overwrite of a compressed cluster: COW
      m.apply(new Discard(3L * c, c));
      m.apply(new Zero(5L * c, c, true, false));
      m.apply(new Zero(6L * c + 10, 100, false, false));
      m.apply(new Write(0, c, 2, -1, false)); // whole-cluster overwrite of a compressed cluster
      m.apply(new Discard((long) clusters * c, size - (long) clusters * c)); // the partial last cluster counts as whole
      m.verifyContent("after rewriting compressed clusters");
      m.verifyBlockStatus("after rewriting compressed clusters");
      m.closeAndJudge(dir);
    }
  }

  @ParameterizedTest(name = "{0}-byte clusters")
  @ValueSource(ints = {4096, 65536})
  void ourCompressedWritesIntoAQemuCompressedImageStayClean(int c) throws Exception {
    int clusters = 30;
    long size = (long) clusters * c + 3584;
    byte[] src = new byte[(int) size];
    for (int k = 0; k < clusters; k++) { // qemu compresses the even clusters; the odd ones stay unallocated
      if (k % 2 == 0) {
        System.arraycopy(content(k % 4 == 0 ? Kind.TEXT : Kind.RANDOM, k, c), 0, src, k * c, c);
      }
    }
    Path srcRaw = dir.resolve("src.raw");
    Files.write(srcRaw, src);
    Path path = dir.resolve("qemu-compressed.qcow2");
    QemuImg.img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=" + c, srcRaw, path).assertExit(0);
    byte[] model = src.clone();
    try (Qcow2Image img = Qcow2Image.open(path, false)) {
      for (int k = 1; k <= clusters; k += k == clusters - 1 ? 1 : 2) { // the odd ones and the partial last one
        int len = (int) Math.min(c, size - (long) k * c);
        byte[] data = content(k % 3 == 0 ? Kind.RANDOM : Kind.TEXT, k, len);
        img.writeCompressed((long) k * c, ByteBuffer.wrap(data));
        System.arraycopy(data, 0, model, k * c, len);
      }
    }
    QemuImg.assertCheckClean(path);
    Path raw = dir.resolve("model.raw");
    ModelRunner.writeRaw(raw, model);
    QemuImg.assertIdentical(path, "qcow2", raw, "raw");
    try (Qcow2Image again = Qcow2Image.open(path, true)) {
      ModelRunner.verifyContent(again, model, "after reopening read-only");
    }
  }

  private static byte[] readCluster(Qcow2Image img, long off, int c) throws BlockIOException {
    ByteBuffer b = ByteBuffer.allocate(c);
    img.read(off, b);
    return b.array();
  }

  private static QemuImg.MapEntry entryAt(List<QemuImg.MapEntry> map, long off) {
    for (QemuImg.MapEntry e : map) {
      if (e.start() <= off && off < e.start() + e.length()) {
        return e;
      }
    }
    throw new AssertionError("qemu-img map has no entry for offset " + off + ": " + map);
  }
}
