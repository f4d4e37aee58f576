package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.blockbackup.testkit.QemuImg;
import dev.blockbackup.testkit.TlsTestCertificates;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code blockbackup serve --tls-creds}: credential mistakes before anything opens; qemu-img over TLS. */
class CliServeTlsTest {

  @TempDir Path dir;

  Path image() throws Exception {
    Path img = dir.resolve("disk.raw");
    Files.write(img, new byte[1 << 20]);
    return img;
  }

  void assertOneLineError(Cli.Run r, String contains) {
    assertThat(r.exit()).as(r.toString()).isEqualTo(1);
    assertThat(r.err().strip()).startsWith("blockbackup: ").doesNotContain("\n").doesNotContain("Exception")
        .contains(contains);
  }

  @Test
  void badTlsArgumentsAreOneLineAndExit1BeforeAnythingIsBound() throws Exception {
    Path img = image();
    Path sock = dir.resolve("s.sock");
    assertOneLineError(Cli.run("serve", "--nbd", "unix:" + sock, "--tls-creds", dir.resolve("nowhere"), img), "nowhere");
    Path partial = Files.createDirectories(dir.resolve("partial"));
    Files.writeString(partial.resolve("ca-cert.pem"), "junk\n");
    assertOneLineError(Cli.run("serve", "--nbd", "unix:" + sock, "--tls-creds", partial, img), "ca-cert.pem");
    assertOneLineError(Cli.run("serve", "--nbd", "unix:" + sock, "--tls-verify-peer", img), "--tls-creds");
    assertOneLineError(Cli.run("serve", "--nbd", "unix:" + sock, "--no-tls-verify-peer", img), "--tls-creds");
    assertThat(sock).doesNotExist();
  }

  @Test
  @Tag("interop")
  void qemuImgReadsTheExportOverTlsAndPlaintextIsRefused() throws Exception {
    TlsTestCertificates certs = TlsTestCertificates.create(dir.resolve("certs"));
    assumeTrue(TlsTestCertificates.onPath("qemu-img"), "qemu-img is installed");
    Path img = image();
    String java = ProcessHandle.current().info().command().orElse("java");
    Process p = new ProcessBuilder(java, "-cp", System.getProperty("java.class.path"), Main.class.getName(),
        "serve", img.toString(), "--nbd", "tcp:127.0.0.1:0", "--tls-creds", certs.server().toString())
        .redirectErrorStream(true).start();
    try (BufferedReader out = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
      String uri = out.readLine();
      assertThat(uri).startsWith("nbd://127.0.0.1:").endsWith("/disk");
      assertThat(out.readLine()).startsWith("TLS required (verify-peer on)");
      String port = uri.substring("nbd://127.0.0.1:".length(), uri.lastIndexOf('/'));
      String opts = "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=" + port + ",export=disk";
      String tls = "tls-creds-x509,id=tls0,endpoint=client,dir=" + certs.client();
      assertThat(QemuImg.img("info", "--output=json", "--object", tls, "--image-opts", opts + ",tls-creds=tls0")
          .assertExit(0).json().get("virtual-size").asLong()).isEqualTo(1 << 20);
      assertThat(QemuImg.img("info", "--image-opts", opts).exit()).as("plaintext").isNotZero();
      // the same credentials without a client certificate: refused, as verify-peer is on by default
      Path anonymous = certs.anonymous();
      assertThat(QemuImg.img("info", "--object", "tls-creds-x509,id=tls0,endpoint=client,dir=" + anonymous,
          "--image-opts", opts + ",tls-creds=tls0").exit()).as("no client certificate").isNotZero();
      p.destroy(); // SIGTERM
      assertThat(p.waitFor(60, TimeUnit.SECONDS)).isTrue();
      assertThat(p.exitValue()).isZero();
    } finally {
      p.destroyForcibly();
    }
  }
}
