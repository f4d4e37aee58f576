package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.testkit.QemuImg;
import com.sun.jna.Platform;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Kills a real create (a JVM running {@link CreateMain}) at every system call it makes that changes
 * the disk, with strace's fault injection, and lets qemu-img judge what is left: no image at the
 * target, or one that passes {@code qemu-img check}. Failing system calls (ENOSPC, EIO) must leave
 * nothing behind and say so in one line. Needs strace (Debian package strace) and qemu-img.
 */
@Tag("interop")
class Qcow2CreateCrashTest {

  private static final long SIZE = 1L << 30;
  /** More calls of one kind than a create makes: a run past this never completed. */
  private static final int MAX_CALLS = 40;
  /** The system calls through which a create (the JVM's Java file I/O) changes the disk. */
  private static final List<String> SYSCALLS =
      List.of("openat", "pwrite64", "write", "fdatasync", "fsync", "ftruncate", "link", "rename", "unlink");

  /**
   * JNA's native stub, unpacked once for every child: JNA would otherwise unpack it anew in each
   * child, in a hundred small writes that are not the create's and would only lengthen the search.
   */
  private static final Path JNA_BOOT = unpackJnaDispatch();

  @TempDir Path dir;

  private static Path unpackJnaDispatch() {
    String lib = "com/sun/jna/" + Platform.RESOURCE_PREFIX + "/" + System.mapLibraryName("jnidispatch");
    try (InputStream in = Platform.class.getClassLoader().getResourceAsStream(lib)) {
      if (in == null) {
        throw new AssertionError("no " + lib + " in JNA's jar");
      }
      Path d = Files.createTempDirectory("jna-boot");
      Files.copy(in, d.resolve(System.mapLibraryName("jnidispatch")));
      d.toFile().deleteOnExit();
      d.resolve(System.mapLibraryName("jnidispatch")).toFile().deleteOnExit();
      return d;
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  private record Run(int exit, String err) {}

  @Test
  void aKillAtAnySystemCallLeavesNoImageOrACleanOne() throws Exception {
    Path target = dir.resolve("disk.qcow2");
    for (String syscall : SYSCALLS) {
      for (int n = 1; ; n++) {
        assertThat(n).as("create still killed at %s call %d", syscall, n).isLessThan(MAX_CALLS + (syscall.equals("openat") ? 400 : 0));
        clean();
        Run r = strace(syscall + ":signal=SIGKILL:when=" + n, target);
        if (r.exit() == 0) {
          QemuImg.assertCheckClean(target);
          assertThat(others(target)).as("files beside the image").isEmpty();
          break;
        }
        assertThat(r.exit()).as("%s call %d: exit (stderr %s)", syscall, n, r.err()).isEqualTo(128 + 9);
        if (Files.exists(target)) {
          QemuImg.assertCheckClean(target);
        }
        assertThat(others(target)).as("left after a kill at %s call %d", syscall, n)
            .allMatch(f -> f.startsWith(".disk.qcow2.") && f.endsWith(ImageCreator.TEMP_SUFFIX));
      }
    }
    // a rerun is not disturbed by what a killed create left
    clean();
    strace("pwrite64:signal=SIGKILL:when=2", target);
    assertThat(others(target)).hasSize(1);
    assertThat(run(List.of(), target).exit()).isZero();
    QemuImg.assertCheckClean(target);
  }

  @Test
  void aFailingWriteOrSyncLeavesNothingAndSaysWhyInOneLine() throws Exception {
    Path target = dir.resolve("disk.qcow2");
    List<String> faults = new ArrayList<>();
    for (int n = 1; n <= 4; n++) {
      faults.add("pwrite64:error=ENOSPC:when=" + n);
      faults.add("pwrite64:error=EIO:when=" + n);
    }
    for (int n = 1; n <= 2; n++) {
      faults.add("fdatasync:error=EIO:when=" + n);
      faults.add("fsync:error=EIO:when=" + n);
    }
    faults.add("link:error=ENOSPC:when=1");
    for (String fault : faults) {
      clean();
      Run r = strace(fault, target);
      assertThat(r.exit()).as("exit with %s (stderr %s)", fault, r.err()).isEqualTo(1);
      String[] lines = r.err().strip().split("\n");
      assertThat(lines).as("stderr with %s", fault).hasSize(1);
      String why = fault.contains("ENOSPC") ? "No space left on device" : "Input/output error";
      assertThat(lines[0]).startsWith("create: cannot create " + target).contains(why);
      assertThat(Files.exists(target)).as("target after %s", fault).isFalse();
      assertThat(others(target)).as("files after %s", fault).isEmpty();
    }
  }

  @Test
  void anExistingTargetIsOverwrittenHeaderLast() throws Exception {
    Path target = dir.resolve("disk.qcow2");
    for (String syscall : List.of("ftruncate", "pwrite64", "fdatasync")) {
      for (int n = 1; ; n++) {
        assertThat(n).isLessThan(MAX_CALLS);
        clean();
        Files.write(target, new byte[4096]);
        Run r = strace(syscall + ":signal=SIGKILL:when=" + n, target);
        byte[] head = new byte[4];
        try (var in = Files.newInputStream(target)) {
          in.readNBytes(head, 0, 4);
        }
        boolean hasHeader = new String(head, StandardCharsets.ISO_8859_1).equals("QFI\u00fb");
        if (r.exit() == 0 || hasHeader) {
          QemuImg.assertCheckClean(target);
        }
        if (r.exit() == 0) {
          break;
        }
      }
    }
  }

  private void clean() throws IOException {
    try (Stream<Path> s = Files.list(dir)) {
      for (Path p : (Iterable<Path>) s::iterator) {
        Files.delete(p);
      }
    }
  }

  private List<String> others(Path target) throws IOException {
    try (Stream<Path> s = Files.list(dir)) {
      return s.filter(p -> !p.equals(target)).map(p -> p.getFileName().toString()).toList();
    }
  }

  private static Run strace(String inject, Path target) throws Exception {
    return run(List.of("strace", "-f", "-o", "/dev/null", "-e", "inject=" + inject), target);
  }

  private static Run run(List<String> prefix, Path target) throws Exception {
    List<String> cmd = new ArrayList<>(prefix);
    cmd.addAll(List.of(Path.of(System.getProperty("java.home"), "bin", "java").toString(), "-XX:-UsePerfData",
        "-XX:TieredStopAtLevel=1", "-Xshare:auto", "-Djna.boot.library.path=" + JNA_BOOT,
        "-cp", System.getProperty("java.class.path"), CreateMain.class.getName(), target.toString(), Long.toString(SIZE)));
    Process p;
    try {
      p = new ProcessBuilder(cmd).redirectOutput(ProcessBuilder.Redirect.DISCARD).start();
    } catch (IOException e) {
      throw new AssertionError("cannot run " + cmd.get(0) + " (is strace installed? apt-get install strace)", e);
    }
    p.getOutputStream().close();
    String err = new String(p.getErrorStream().readAllBytes(), StandardCharsets.UTF_8);
    if (!p.waitFor(120, TimeUnit.SECONDS)) {
      p.destroyForcibly();
      throw new AssertionError(cmd + " did not finish");
    }
    return new Run(p.exitValue(), err);
  }
}
