package dev.blockbackup.nbd;

import io.netty.handler.ssl.ClientAuth;
import io.netty.handler.ssl.SslContext;
import io.netty.handler.ssl.SslContextBuilder;
import io.netty.handler.ssl.SslProvider;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.KeyFactory;
import java.security.PrivateKey;
import java.security.cert.CertificateException;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.security.interfaces.RSAKey;
import java.security.spec.InvalidKeySpecException;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Objects;
import javax.net.ssl.SSLException;

/**
 * The server side of a QEMU {@code tls-creds-x509} object: the files of its {@code dir} in
 * QEMU's layout, loaded into a Netty {@link SslContext} (JDK provider, TLS 1.3 and 1.2).
 *
 * <ul>
 *   <li>{@code ca-cert.pem}: the CA certificate(s). Required, as QEMU requires it for a server:
 *       it is what client certificates are checked against when the peer is verified.
 *   <li>{@code server-cert.pem}: the server's certificate, optionally followed by its chain.
 *   <li>{@code server-key.pem}: the server's unencrypted private key, PKCS#8 ({@code BEGIN
 *       PRIVATE KEY}) or PKCS#1 RSA ({@code BEGIN RSA PRIVATE KEY}, as older certtool and
 *       {@code openssl genrsa} write it), which is rewrapped as PKCS#8 here because the JDK only
 *       reads that. Encrypted keys (QEMU's {@code passwordid}) are refused.
 * </ul>
 *
 * <p>Not read: {@code ca-crl.pem} (QEMU checks client certificates against it; here revocation is
 * not checked, so a revoked client certificate signed by the CA is still accepted) and {@code
 * dh-params.pem} (the JDK picks its own groups).
 *
 * <p>{@code verifyPeer} is QEMU's {@code verify-peer}: when on, a client must present a
 * certificate signed by the CA, or its TLS handshake fails. QEMU defaults it to on for every
 * {@code tls-creds} object, so {@code qemu-nbd --tls-creds} verifies clients unless the object
 * says {@code verify-peer=off}; {@link #load(Path)} does the same.
 */
public final class TlsCredentials {

  static final String CA_CERT = "ca-cert.pem";
  static final String SERVER_CERT = "server-cert.pem";
  static final String SERVER_KEY = "server-key.pem";

  /** DER of the AlgorithmIdentifier for rsaEncryption (OID 1.2.840.113549.1.1.1, NULL parameters). */
  private static final byte[] RSA_ALGORITHM = {
      0x30, 0x0d, 0x06, 0x09, 0x2a, (byte) 0x86, 0x48, (byte) 0x86, (byte) 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00};

  private final Path dir;
  private final boolean verifyPeer;
  private final SslContext sslContext;

  private TlsCredentials(Path dir, boolean verifyPeer, SslContext sslContext) {
    this.dir = dir;
    this.verifyPeer = verifyPeer;
    this.sslContext = sslContext;
  }

  /** {@link #load(Path, boolean)} with the peer verified, QEMU's default. */
  public static TlsCredentials load(Path dir) throws TlsCredentialsException {
    return load(dir, true);
  }

  /**
   * Reads and checks the server credentials in {@code dir}.
   *
   * @throws TlsCredentialsException naming the file that is missing, unreadable or unusable
   */
  public static TlsCredentials load(Path dir, boolean verifyPeer) throws TlsCredentialsException {
    Objects.requireNonNull(dir, "dir");
    if (!Files.isDirectory(dir)) {
      throw new TlsCredentialsException(dir, "not a directory of TLS credentials");
    }
    List<X509Certificate> ca = certificates(dir.resolve(CA_CERT));
    List<X509Certificate> chain = certificates(dir.resolve(SERVER_CERT));
    PrivateKey key = privateKey(dir.resolve(SERVER_KEY));
    X509Certificate cert = chain.get(0);
    try {
      cert.checkValidity();
    } catch (CertificateException e) {
      throw new TlsCredentialsException(dir.resolve(SERVER_CERT), "the certificate is not valid now: " + e.getMessage());
    }
    // a key of another certificate would only show as every client's handshake failing
    if (key instanceof RSAKey k && cert.getPublicKey() instanceof RSAKey c && !k.getModulus().equals(c.getModulus())) {
      throw new TlsCredentialsException(dir.resolve(SERVER_KEY), "the key does not belong to " + SERVER_CERT);
    }
    try {
      SslContextBuilder b = SslContextBuilder.forServer(key, chain.toArray(X509Certificate[]::new))
          .sslProvider(SslProvider.JDK)
          .protocols("TLSv1.3", "TLSv1.2");
      if (verifyPeer) {
        b.clientAuth(ClientAuth.REQUIRE).trustManager(ca.toArray(X509Certificate[]::new));
      }
      return new TlsCredentials(dir, verifyPeer, b.build());
    } catch (SSLException | IllegalArgumentException e) {
      throw new TlsCredentialsException(dir, "cannot set up TLS with these credentials: " + e.getMessage(), e);
    }
  }

  public Path dir() {
    return dir;
  }

  public boolean verifyPeer() {
    return verifyPeer;
  }

  SslContext sslContext() {
    return sslContext;
  }

  @Override
  public String toString() {
    return "TlsCredentials[" + dir + ", verifyPeer=" + verifyPeer + "]";
  }

  private static String read(Path file) throws TlsCredentialsException {
    try {
      return Files.readString(file, StandardCharsets.US_ASCII);
    } catch (NoSuchFileException e) {
      throw new TlsCredentialsException(file, "missing (QEMU's x509 credentials layout needs it)");
    } catch (IOException | java.io.UncheckedIOException e) {
      throw new TlsCredentialsException(file, "cannot be read: " + e.getMessage(), e);
    }
  }

  private static List<X509Certificate> certificates(Path file) throws TlsCredentialsException {
    List<X509Certificate> out = new ArrayList<>();
    try {
      CertificateFactory f = CertificateFactory.getInstance("X.509");
      for (Pem p : pems(file)) {
        if (p.type.equals("CERTIFICATE")) {
          out.add((X509Certificate) f.generateCertificate(new ByteArrayInputStream(p.der)));
        }
      }
    } catch (CertificateException e) {
      throw new TlsCredentialsException(file, "not a valid X.509 certificate: " + e.getMessage(), e);
    }
    if (out.isEmpty()) {
      throw new TlsCredentialsException(file, "holds no PEM certificate (BEGIN CERTIFICATE)");
    }
    return out;
  }

  static PrivateKey privateKey(Path file) throws TlsCredentialsException {
    for (Pem p : pems(file)) {
      switch (p.type) {
        case "PRIVATE KEY" -> {
          return pkcs8(file, p.der);
        }
        case "RSA PRIVATE KEY" -> {
          if (p.encrypted) {
            throw new TlsCredentialsException(file, "the key is encrypted; only unencrypted keys are supported");
          }
          return pkcs8(file, rsaPkcs1ToPkcs8(p.der));
        }
        case "ENCRYPTED PRIVATE KEY" ->
            throw new TlsCredentialsException(file, "the key is encrypted; only unencrypted keys are supported");
        case "EC PRIVATE KEY" ->
            throw new TlsCredentialsException(file, "SEC1 EC keys are not supported; convert with "
                + "'openssl pkcs8 -topk8 -nocrypt' to PKCS#8 (BEGIN PRIVATE KEY)");
        default -> { } // e.g. EC PARAMETERS before the key
      }
    }
    throw new TlsCredentialsException(file, "holds no PEM private key (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)");
  }

  private static PrivateKey pkcs8(Path file, byte[] der) throws TlsCredentialsException {
    for (String alg : new String[] {"RSA", "EC", "Ed25519", "Ed448", "RSASSA-PSS"}) {
      try {
        return KeyFactory.getInstance(alg).generatePrivate(new PKCS8EncodedKeySpec(der));
      } catch (InvalidKeySpecException e) {
        // not this algorithm: try the next
      } catch (GeneralSecurityException e) {
        // the algorithm is not in this JDK
      }
    }
    throw new TlsCredentialsException(file, "not an RSA, EC or EdDSA private key the JDK can read");
  }

  /**
   * PKCS#8 PrivateKeyInfo around a PKCS#1 RSAPrivateKey: SEQUENCE { INTEGER 0, rsaEncryption,
   * OCTET STRING pkcs1 } (RFC 5208 section 5, RFC 8017 appendix A.1.2).
   */
  static byte[] rsaPkcs1ToPkcs8(byte[] pkcs1) {
    ByteArrayOutputStream body = new ByteArrayOutputStream();
    body.writeBytes(new byte[] {0x02, 0x01, 0x00});
    body.writeBytes(RSA_ALGORITHM);
    body.write(0x04);
    derLength(body, pkcs1.length);
    body.writeBytes(pkcs1);
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    out.write(0x30);
    derLength(out, body.size());
    out.writeBytes(body.toByteArray());
    return out.toByteArray();
  }

  /** A DER length: short form below 128, else 0x80 | count of big-endian length bytes. */
  private static void derLength(ByteArrayOutputStream out, int n) {
    if (n < 0x80) {
      out.write(n);
      return;
    }
    int bytes = (32 - Integer.numberOfLeadingZeros(n) + 7) / 8;
    out.write(0x80 | bytes);
    for (int i = bytes - 1; i >= 0; i--) {
      out.write(n >>> (8 * i));
    }
  }

  private record Pem(String type, boolean encrypted, byte[] der) {}

  /** The PEM blocks of {@code file}, in order; text outside them (as openssl x509 -text writes) is ignored. */
  private static List<Pem> pems(Path file) throws TlsCredentialsException {
    String text = read(file);
    List<Pem> out = new ArrayList<>();
    int at = 0;
    while (true) {
      int begin = text.indexOf("-----BEGIN ", at);
      if (begin < 0) {
        return out;
      }
      int typeEnd = text.indexOf("-----", begin + 11);
      if (typeEnd < 0) {
        throw new TlsCredentialsException(file, "malformed PEM header at character " + begin);
      }
      String type = text.substring(begin + 11, typeEnd);
      String endMark = "-----END " + type + "-----";
      int end = text.indexOf(endMark, typeEnd);
      if (end < 0) {
        throw new TlsCredentialsException(file, "PEM block '" + type + "' has no END line");
      }
      StringBuilder b64 = new StringBuilder();
      boolean encrypted = false;
      for (String line : text.substring(typeEnd + 5, end).split("\r?\n")) {
        // RFC 1421 headers of old OpenSSL keys, e.g. "Proc-Type: 4,ENCRYPTED"
        if (line.contains(":")) {
          encrypted |= line.startsWith("Proc-Type:") && line.contains("ENCRYPTED");
        } else {
          b64.append(line.trim());
        }
      }
      try {
        out.add(new Pem(type, encrypted, Base64.getDecoder().decode(b64.toString())));
      } catch (IllegalArgumentException e) {
        throw new TlsCredentialsException(file, "PEM block '" + type + "' is not valid base64");
      }
      at = end + endMark.length();
    }
  }
}
