package dev.blockbackup.testkit;

import static org.assertj.core.api.Assumptions.assumeThat;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * X.509 credentials made with {@code openssl} in QEMU's {@code tls-creds-x509} layout, for TLS
 * tests: a CA, a server certificate for localhost and 127.0.0.1, a client certificate of the same
 * CA, and a client certificate of a second, "rogue" CA. Assumes (skips) when openssl is missing.
 *
 * @param server {@code ca-cert.pem}, {@code server-cert.pem}, {@code server-key.pem} (PKCS#1 RSA)
 * @param client {@code ca-cert.pem}, {@code client-cert.pem}, {@code client-key.pem} (PKCS#8)
 * @param rogue the CA above (to trust the server) and a client certificate and key of the rogue CA
 * @param anonymous the CA only: a client that verifies the server but has no certificate
 */
public record TlsTestCertificates(Path server, Path client, Path rogue, Path anonymous) {

  /** The extensions QEMU's certificate checks (and GnuTLS) look for, per role. */
  private static final String EXTENSIONS = """
      [ca]
      basicConstraints = critical, CA:TRUE
      keyUsage = critical, keyCertSign, cRLSign
      subjectKeyIdentifier = hash
      [server]
      basicConstraints = critical, CA:FALSE
      keyUsage = critical, digitalSignature, keyEncipherment
      extendedKeyUsage = serverAuth
      subjectAltName = DNS:localhost, IP:127.0.0.1
      [client]
      basicConstraints = critical, CA:FALSE
      keyUsage = critical, digitalSignature, keyEncipherment
      extendedKeyUsage = clientAuth
      """;

  /** Makes the four directories under {@code dir}. */
  public static TlsTestCertificates create(Path dir) throws IOException {
    assumeThat(onPath("openssl")).as("openssl is installed").isTrue();
    Path work = Files.createDirectories(dir.resolve("work"));
    Path ext = Files.writeString(work.resolve("ext.cnf"), EXTENSIONS);
    Path ca = ca(work, "ca", "blockbackup test CA");
    Path rogueCa = ca(work, "rogue-ca", "rogue test CA");
    TlsTestCertificates c = new TlsTestCertificates(Files.createDirectories(dir.resolve("server")),
        Files.createDirectories(dir.resolve("client")), Files.createDirectories(dir.resolve("rogue")),
        Files.createDirectories(dir.resolve("anonymous")));
    for (Path d : new Path[] {c.server, c.client, c.rogue, c.anonymous}) {
      Files.copy(ca.resolve("cert.pem"), d.resolve("ca-cert.pem"));
    }
    // openssl 3 writes PKCS#8; -traditional gives the PKCS#1 "RSA PRIVATE KEY" older tools write
    openssl("genrsa", "-traditional", "-out", c.server.resolve("server-key.pem"), "2048");
    sign(work, ca, ext, "server", "/CN=localhost", c.server.resolve("server-key.pem"), c.server.resolve("server-cert.pem"));
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", c.client.resolve("client-key.pem"));
    sign(work, ca, ext, "client", "/CN=client", c.client.resolve("client-key.pem"), c.client.resolve("client-cert.pem"));
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", c.rogue.resolve("client-key.pem"));
    sign(work, rogueCa, ext, "client", "/CN=rogue", c.rogue.resolve("client-key.pem"), c.rogue.resolve("client-cert.pem"));
    return c;
  }

  private static Path ca(Path work, String name, String cn) throws IOException {
    Path d = Files.createDirectories(work.resolve(name));
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d.resolve("key.pem"), "-out", d.resolve("cert.pem"),
        "-days", "30", "-subj", "/CN=" + cn, "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign");
    return d;
  }

  private static void sign(Path work, Path ca, Path ext, String section, String subject, Path key, Path cert)
      throws IOException {
    Path csr = work.resolve(section + "-" + cert.getParent().getFileName() + ".csr");
    openssl("req", "-new", "-key", key, "-subj", subject, "-out", csr);
    openssl("x509", "-req", "-in", csr, "-CA", ca.resolve("cert.pem"), "-CAkey", ca.resolve("key.pem"),
        "-CAcreateserial", "-days", "30", "-extfile", ext, "-extensions", section, "-out", cert);
  }

  private static void openssl(Object... args) {
    QemuImg.run("openssl", args).assertExit(0);
  }

  /** Whether {@code tool} is an executable on the PATH. */
  public static boolean onPath(String tool) {
    for (String d : System.getenv().getOrDefault("PATH", "").split(java.io.File.pathSeparator)) {
      if (!d.isEmpty() && Files.isExecutable(Path.of(d, tool))) {
        return true;
      }
    }
    return false;
  }
}
