package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;

import com.fasterxml.jackson.databind.JsonNode;
import dev.blockbackup.formats.DirtyBitmap;
import dev.blockbackup.testkit.QemuImg;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Crash order of the bitmap metadata: a JVM that opens an image with QEMU's bitmaps read-write,
 * writes and closes is killed at every write and sync it makes; whatever is left, qemu-img check
 * finds no corruption (leaks are allowed), and each bitmap is either in use (inconsistent) or holds
 * exactly the old bits, or the old bits and the new write. Also: a dirty image's refcount rebuild
 * counts the bitmap clusters. Needs strace and qemu-img.
 */
@Tag("interop")
class Qcow2BitmapsCrashTest {

  private static final long SIZE = 64L << 20;
  private static final long WRITE_AT = 5L << 20;

  @TempDir
  Path dir;

  private Path qemuImageWithBits() {
    Path img = dir.resolve("base.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", img, SIZE).assertExit(0);
    QemuImg.img("bitmap", "--add", img, "b1").assertExit(0);
    QemuImg.img("bitmap", "--add", "-g", "4096", img, "b2").assertExit(0);
    QemuImg.io("-f", "qcow2", "-c", "write 1M 64k", "-c", "write 40M 8k", img).assertExit(0);
    return img;
  }

  private static int run(List<String> prefix, Path img) throws Exception {
    List<String> cmd = new ArrayList<>(prefix);
    cmd.addAll(List.of(Path.of(System.getProperty("java.home"), "bin", "java").toString(), "-XX:-UsePerfData",
        "-XX:TieredStopAtLevel=1", "-Xshare:auto", "-cp", System.getProperty("java.class.path"),
        BitmapHoldMain.class.getName(), img.toString(), Long.toString(WRITE_AT), "4096", "close"));
    Process p = new ProcessBuilder(cmd).redirectOutput(ProcessBuilder.Redirect.DISCARD)
        .redirectError(ProcessBuilder.Redirect.DISCARD).start();
    p.getOutputStream().close();
    if (!p.waitFor(120, TimeUnit.SECONDS)) {
      p.destroyForcibly();
      throw new AssertionError(cmd + " did not finish");
    }
    return p.exitValue();
  }

  private static void assertNoCorruption(Path img, String when) {
    QemuImg.Result r = QemuImg.img("check", "--output=json", "-f", "qcow2", img);
    assertThat(r.exit()).as("check after %s: %s %s", when, r.out(), r.err()).isIn(0, 3);
    JsonNode j = r.json();
    assertThat(j.path("corruptions").asLong(0)).as("corruptions after %s: %s", when, r.out()).isZero();
    assertThat(j.path("check-errors").asLong(0)).as("check errors after %s: %s", when, r.out()).isZero();
  }

  @Test
  void aKillAtAnyWriteOrSyncLeavesTheBitmapsOldNewOrInUse() throws Exception {
    Path base = qemuImageWithBits();
    long[] oldCount = new long[2];
    try (Qcow2Image q = Qcow2Image.open(base, true)) {
      oldCount[0] = q.findBitmap("b1").bitmap().count();
      oldCount[1] = q.findBitmap("b2").bitmap().count();
    }
    Path img = dir.resolve("disk.qcow2");
    int finished = 0;
    for (String syscall : List.of("pwrite64", "fdatasync")) {
      for (int n = 1; ; n++) {
        assertThat(n).as("still killed at %s call %d", syscall, n).isLessThan(200);
        Files.copy(base, img, StandardCopyOption.REPLACE_EXISTING);
        int exit = run(List.of("strace", "-f", "-o", "/dev/null", "-e",
            "inject=" + syscall + ":signal=SIGKILL:when=" + n), img);
        String when = syscall + " call " + n;
        assertNoCorruption(img, when);
        try (Qcow2Image q = Qcow2Image.open(img, true)) {
          for (int i = 0; i < 2; i++) {
            Qcow2Bitmap b = q.findBitmap(i == 0 ? "b1" : "b2");
            assertThat(b).as("bitmap %d after %s", i, when).isNotNull();
            if (b.inconsistent()) {
              continue;
            }
            DirtyBitmap bits = b.bitmap();
            long written = i == 0 ? 65536 : 4096;
            assertThat(bits.count()).as("bits of %s after %s", b.name(), when)
                .isIn(oldCount[i], oldCount[i] + written);
            assertThat(bits.isDirty(1 << 20)).isTrue();
            assertThat(bits.isDirty(40L << 20)).isTrue();
            if (exit == 0) {
              assertThat(bits.isDirty(WRITE_AT)).isTrue();
            }
          }
        }
        if (exit == 0) {
          QemuImg.assertCheckClean(img);
          finished++;
          break;
        }
        assertThat(exit).as("exit after %s", when).isEqualTo(128 + 9);
      }
    }
    assertThat(finished).isEqualTo(2);
  }

  @Test
  void theRefcountRebuildOfADirtyImageCountsTheBitmapClusters() throws Exception {
    Path img = dir.resolve("dirty.qcow2");
    QemuImg.img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", img, SIZE).assertExit(0);
    QemuImg.img("bitmap", "--add", img, "b").assertExit(0);
    QemuImg.io("-f", "qcow2", "-c", "write 3M 64k", img).assertExit(0);
    try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
      f.seek(Qcow2Header.OFF_INCOMPAT);
      long incompat = f.readLong();
      f.seek(Qcow2Header.OFF_INCOMPAT);
      f.writeLong(incompat | Qcow2Header.INCOMPAT_DIRTY);
    }
    try (Qcow2Image q = Qcow2Image.open(img, false)) {
      assertThat(q.findBitmap("b").bitmap().isDirty(3 << 20)).isTrue();
      q.write(7L << 20, ByteBuffer.wrap("x".getBytes(StandardCharsets.UTF_8)));
    }
    QemuImg.assertCheckClean(img);
    assertThat(Qcow2BitmapsInteropTest.qemuDirty(img, "b")).containsOnlyKeys(3L << 20, 7L << 20);
  }
}
