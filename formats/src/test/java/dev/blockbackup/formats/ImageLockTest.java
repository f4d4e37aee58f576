package dev.blockbackup.formats;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.TreeSet;
import java.util.concurrent.TimeUnit;
import org.assertj.core.api.ThrowableAssert.ThrowingCallable;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Our opens lock images with QEMU's bytes, and exclude each other as QEMU's opens do. */
class ImageLockTest {

  @TempDir Path dir;

  private Path raw(String name) throws Exception {
    Path p = dir.resolve(name);
    RawImage.create(p, 1 << 20).close();
    return p;
  }

  private Path qcow2(String name, String backing) throws Exception {
    Path p = dir.resolve(name);
    Qcow2CreateOptions o = Qcow2CreateOptions.of(1 << 20);
    Qcow2Image.create(p, backing == null ? o : o.withBacking(backing, "qcow2")).close();
    return p;
  }

  /** The bytes of {@code file} that some open holds an OFD lock on, from /proc/locks. */
  private static TreeSet<Long> lockedBytes(Path file) throws Exception {
    long inode = (Long) Files.getAttribute(file, "unix:ino");
    TreeSet<Long> bytes = new TreeSet<>();
    for (String line : Files.readAllLines(Path.of("/proc/locks"))) {
      // "3: OFDLCK ADVISORY  READ -1 fe:00:2146951 100 101": device:inode, then first and last byte
      String[] f = line.trim().split("\\s+");
      if (f.length >= 8 && f[1].equals("OFDLCK") && f[5].endsWith(":" + inode)) {
        for (long b = Long.parseLong(f[6]); b <= Long.parseLong(f[7]); b++) {
          bytes.add(b);
        }
      }
    }
    return bytes;
  }

  private static void assertRefused(ThrowingCallable open, String lock, Path image) {
    assertThatThrownBy(open)
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EAGAIN))
        .hasMessageContaining("Failed to get " + lock + " lock. Is another process using the image [" + image + "]?");
  }

  @Test
  void readWriteOpenHoldsQemusPermissionAndSharedBytes() throws Exception {
    Path img = raw("a.raw");
    try (RawImage rw = RawImage.open(img, false)) {
      // consistent read, write, resize held; write and resize not shared
      assertThat(lockedBytes(img)).containsExactly(100L, 101L, 103L, 201L, 203L);
    }
    assertThat(lockedBytes(img)).isEmpty();
  }

  @Test
  void readOnlyOpenHoldsReadAndSharesNoWrite() throws Exception {
    Path img = qcow2("a.qcow2", null);
    try (Qcow2Image ro = Qcow2Image.open(img, true)) {
      assertThat(lockedBytes(img)).containsExactly(100L, 201L, 203L);
    }
    assertThat(lockedBytes(img)).isEmpty();
  }

  @Test
  void forceShareHoldsOnlyTheReadByte() throws Exception {
    Path img = raw("a.raw");
    try (RawImage ro = ImageLock.forceShare(() -> RawImage.open(img, true))) {
      assertThat(lockedBytes(img)).containsExactly(100L);
    }
  }

  @Test
  void forceShareRefusesAReadWriteOpen() throws Exception {
    Path img = raw("a.raw");
    assertThatThrownBy(() -> ImageLock.forceShare(() -> RawImage.open(img, false)))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EINVAL))
        .hasMessageContaining("force-share=on can only be used with read-only images");
    assertThat(lockedBytes(img)).isEmpty();
  }

  @Test
  void twoReadWriteOpensInOneJvmExcludeEachOther() throws Exception {
    Path raw = raw("a.raw");
    Path q = qcow2("a.qcow2", null);
    try (RawImage a = RawImage.open(raw, false); Qcow2Image b = Qcow2Image.open(q, false)) {
      assertRefused(() -> RawImage.open(raw, false), "\"write\"", raw);
      assertRefused(() -> Qcow2Image.open(q, false), "\"write\"", q);
      // the other driver over the same file is no way round it
      assertRefused(() -> RawImage.open(q, false), "\"write\"", q);
    }
    RawImage.open(raw, false).close();
    Qcow2Image.open(q, false).close();
  }

  @Test
  void readOnlyOpensShareButAReadOnlyOpenRefusesAWriter() throws Exception {
    Path img = qcow2("a.qcow2", null);
    try (Qcow2Image a = Qcow2Image.open(img, true); Qcow2Image b = Qcow2Image.open(img, true)) {
      assertRefused(() -> Qcow2Image.open(img, false), "\"write\"", img);
    }
    try (Qcow2Image w = Qcow2Image.open(img, false)) {
      assertRefused(() -> Qcow2Image.open(img, true), "shared \"write\"", img);
      try (Qcow2Image r = ImageLock.forceShare(() -> Qcow2Image.open(img, true))) {
        assertThat(r.size()).isEqualTo(1 << 20);
      }
    }
  }

  @Test
  void closingAnotherDescriptorOfTheFileKeepsTheLocks() throws Exception {
    Path img = raw("a.raw");
    try (RawImage a = RawImage.open(img, false)) {
      // a POSIX lock would be dropped here: any close of the file by the process releases them all
      Files.readAllBytes(img);
      ImageFormat.probe(img);
      assertThat(lockedBytes(img)).containsExactly(100L, 101L, 103L, 201L, 203L);
      assertRefused(() -> RawImage.open(img, false), "\"write\"", img);
    }
  }

  @Test
  void aFailedOpenLeavesNoLockBehind() throws Exception {
    Path img = raw("a.raw");
    try (RawImage a = RawImage.open(img, true)) {
      assertRefused(() -> RawImage.open(img, false), "\"write\"", img);
      assertThat(lockedBytes(img)).containsExactly(100L, 201L, 203L);
    }
    assertThat(lockedBytes(img)).isEmpty();
  }

  @Test
  void theBackingFileOfAnOpenOverlayCannotBeWrittenNorCreatedOver() throws Exception {
    Path base = qcow2("base.qcow2", null);
    try (Qcow2Image b = Qcow2Image.open(base, false)) {
      b.write(0, ByteBuffer.wrap(new byte[] {1, 2, 3, 4}));
    }
    Path overlay = qcow2("overlay.qcow2", "base.qcow2");
    byte[] before = Files.readAllBytes(base);
    try (Qcow2Image o = Qcow2Image.open(overlay, true)) {
      assertRefused(() -> Qcow2Image.open(base, false), "\"write\"", base);
      assertRefused(() -> Qcow2Image.create(base, Qcow2CreateOptions.of(1 << 20)), "\"write\"", base);
      assertRefused(() -> RawImage.create(base, 1 << 20), "\"write\"", base);
      // reading it beside the overlay is fine
      Qcow2Image.open(base, true).close();
    }
    assertThat(Files.readAllBytes(base)).isEqualTo(before);
  }

  @Test
  void anotherJvmHoldingAnImageReadWriteExcludesOurs() throws Exception {
    Path img = raw("a.raw");
    String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
    Process holder = new ProcessBuilder(java, "-cp", System.getProperty("java.class.path"),
        ImageLockHolder.class.getName(), img.toString()).redirectErrorStream(true).start();
    try {
      BufferedReader out = new BufferedReader(new InputStreamReader(holder.getInputStream(), StandardCharsets.UTF_8));
      assertThat(out.readLine()).isEqualTo("held");
      assertRefused(() -> RawImage.open(img, false), "\"write\"", img);
      assertRefused(() -> RawImage.open(img, true), "shared \"write\"", img);
      holder.getOutputStream().close();
      assertThat(holder.waitFor(60, TimeUnit.SECONDS)).isTrue();
      assertThat(holder.exitValue()).isZero();
      RawImage.open(img, false).close();
    } finally {
      holder.destroyForcibly();
    }
  }

  @Test
  void anotherJvmIsRefusedAnImageWeHold() throws Exception {
    Path img = raw("a.raw");
    try (RawImage ro = RawImage.open(img, true)) {
      String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
      Process p = new ProcessBuilder(java, "-cp", System.getProperty("java.class.path"),
          ImageLockHolder.class.getName(), img.toString()).redirectErrorStream(true).start();
      p.getOutputStream().close();
      String said = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
      assertThat(p.waitFor(60, TimeUnit.SECONDS)).isTrue();
      assertThat(p.exitValue()).as(said).isEqualTo(2);
      assertThat(said).contains("EAGAIN Failed to get \"write\" lock. Is another process using the image [" + img + "]?");
    }
  }

  @Test
  void aLockTakenWithoutTheFileExcludesLikeAnOpen() throws Exception {
    Path img = dir.resolve("new.raw");
    try (ImageLock held = ImageLock.lock(img, false)) {
      assertThat(img).exists();
      assertThat(lockedBytes(img)).containsExactly(100L, 101L, 103L, 201L, 203L);
      assertRefused(() -> RawImage.create(img, 1 << 20), "\"write\"", img);
      held.close();
      assertThat(lockedBytes(img)).isEmpty();
    }
    RawImage.create(img, 1 << 20).close();
  }

  @Test
  void aFailedOpenSaysWhyInTheCLibrarysWords() {
    // a read-only lock does not create: a missing file fails the open(2), and strerror names it
    Path missing = dir.resolve("missing.raw");
    assertThatThrownBy(() -> ImageLock.lock(missing, true))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EIO))
        .hasMessageContaining("cannot open " + missing)
        .hasMessageContaining("No such file or directory");
  }
}
