package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.testkit.QemuImg;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** {@code blockbackup serve}: argument checks in-process; serving as a subprocess judged by QEMU's tools. */
class CliServeTest {

  @TempDir Path dir;

  @ParameterizedTest
  @ValueSource(strings = {"--nbd=tcp:127.0.0.1:99999", "--nbd=bogus", "--max-connections=-1",
      "--handshake-max-seconds=-1", "-f=vmdk"})
  void badArgumentsAreOneLineAndExit1(String arg) throws Exception {
    Path img = dir.resolve("a.raw");
    Files.write(img, new byte[4096]);
    Cli.Run r = Cli.run("serve", arg, img);
    assertThat(r.exit()).as(r.toString()).isEqualTo(1);
    assertThat(r.err().strip()).startsWith("blockbackup: ").doesNotContain("\n").doesNotContain("Exception");
  }

  @Test
  void aPortInUseIsOneLineAndExit1AndTheImageStaysUsable() throws Exception {
    Path img = dir.resolve("a.raw");
    Files.write(img, new byte[4096]);
    try (java.net.ServerSocket taken = new java.net.ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress())) {
      Cli.Run r = Cli.run("serve", "--nbd", "tcp:127.0.0.1:" + taken.getLocalPort(), img);
      assertThat(r.exit()).as(r.toString()).isEqualTo(1);
      assertThat(r.err().strip()).startsWith("blockbackup: ").doesNotContain("\n").doesNotContain("Exception");
    }
    // the failed serve closed the image and left no lock behind
    assertThat(Cli.run("info", img).exit()).isZero();
  }

  @Test
  void missingImageIsRefusedBeforeAnythingIsCreated() {
    Path sock = dir.resolve("s.sock");
    Cli.Run r = Cli.run("serve", "--nbd", "unix:" + sock, dir.resolve("none.qcow2"));
    assertThat(r.exit()).isEqualTo(1);
    assertThat(r.err()).contains("none.qcow2");
    assertThat(sock).doesNotExist();
  }

  @Test
  void forceShareNeedsReadOnly() throws Exception {
    Path img = dir.resolve("a.raw");
    Files.write(img, new byte[4096]);
    Cli.Run r = Cli.run("serve", "-U", img);
    assertThat(r.exit()).isEqualTo(1);
    assertThat(r.err()).contains("read-only");
  }

  @Test
  @Tag("interop")
  void servesAQcow2ThatQemuWritesAndSigtermClosesCleanly() throws Exception {
    Path img = dir.resolve("disk.qcow2");
    QemuImg.img("create", "-f", "qcow2", img, "16M").assertExit(0);
    QemuImg.io("-c", "write -P 0xab 1M 1M", img).assertExit(0);
    Path sock = dir.resolve("nbd.sock");
    try (ServeProcess serve = ServeProcess.start(img, "--nbd", "unix:" + sock)) {
      String uri = serve.line();
      assertThat(uri).isEqualTo("nbd+unix:///disk?socket=" + sock);
      QemuImg.io("-f", "raw", "-c", "write -P 0xcd 0 64k", uri).assertExit(0);
      Path copy = dir.resolve("copy.raw");
      QemuImg.img("convert", "-f", "raw", "-O", "raw", uri, copy).assertExit(0);
      assertThat(serve.stop()).isZero();
      assertThat(sock).doesNotExist();
      QemuImg.assertCheckClean(img);
      QemuImg.io("-c", "read -P 0xcd 0 64k", "-c", "read -P 0xab 1M 1M", img).assertExit(0);
      QemuImg.assertIdentical(img, "qcow2", copy, "raw");
    }
  }
}
