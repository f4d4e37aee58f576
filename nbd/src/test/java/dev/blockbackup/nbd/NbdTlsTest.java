package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.*;
import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.nbd.Wire.OptReply;
import dev.blockbackup.testkit.QemuImg;
import dev.blockbackup.testkit.QemuImg.Result;
import dev.blockbackup.testkit.TlsTestCertificates;
import io.netty.buffer.ByteBuf;
import io.netty.channel.embedded.EmbeddedChannel;
import io.netty.handler.ssl.SslHandler;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.net.Socket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.Principal;
import java.security.PrivateKey;
import java.security.cert.X509Certificate;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.util.SplittableRandom;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.TrustManagerFactory;
import javax.net.ssl.X509ExtendedKeyManager;
import javax.net.ssl.X509KeyManager;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * NBD over TLS with X.509 credentials in QEMU's layout, as qemu-nbd --tls-creds serves it: QEMU's
 * and libnbd's TLS clients get in, plaintext clients and clients without a certificate of the CA
 * are refused, each refusal closing only its own connection.
 */
@Tag("interop")
@Timeout(120)
class NbdTlsTest {

  static final int SIZE = 4 << 20;

  @TempDir static Path certDir;
  static TlsTestCertificates certs;

  @TempDir Path dir;
  Path source;
  RawImage disk;
  NbdServer server;

  @BeforeAll
  static void makeCertificates() throws IOException {
    certs = TlsTestCertificates.create(certDir);
  }

  /** A server of a 4 MiB raw image of random data that requires TLS with {@code verifyPeer}. */
  void serve(boolean verifyPeer) throws IOException {
    source = dir.resolve("source.raw");
    byte[] content = new byte[SIZE];
    new SplittableRandom(7).nextBytes(content);
    Files.write(source, content);
    disk = RawImage.open(source, false, CacheMode.UNSAFE);
    server = NbdServer.builder()
        .export(NbdExport.of("disk", disk))
        .tcp("127.0.0.1", 0)
        .tls(certs.server(), verifyPeer)
        .build();
    server.start();
  }

  @AfterEach
  void stop() throws Exception {
    if (server != null) {
      server.close();
    }
    if (disk != null) {
      disk.close();
    }
  }

  int port() {
    return server.tcpAddress().getPort();
  }

  /** {@code qemu-img info} of the export through a tls-creds-x509 client object of {@code creds}. */
  Result qemuImgInfo(Path creds) {
    assumeTrue(TlsTestCertificates.onPath("qemu-img"), "qemu-img is installed");
    return QemuImg.img("info", "--output=json", "--object", tlsObject(creds), "--image-opts", imageOpts());
  }

  static String tlsObject(Path creds) {
    return "tls-creds-x509,id=tls0,endpoint=client,dir=" + creds;
  }

  String imageOpts() {
    return "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=" + port() + ",export=disk,tls-creds=tls0";
  }

  Result nbdinfo(String uri) {
    assumeTrue(TlsTestCertificates.onPath("nbdinfo"), "nbdinfo is installed");
    return QemuImg.run("nbdinfo", "--json", uri);
  }

  String nbds(Path creds) {
    return "nbds://127.0.0.1:" + port() + "/disk?tls-certificates=" + creds;
  }

  // ---- the credentials directory

  @Test
  void credentialsInQemuLayoutLoadWithAPkcs1ServerKey() throws Exception {
    assertThat(Files.readString(certs.server().resolve("server-key.pem"))).contains("BEGIN RSA PRIVATE KEY");
    TlsCredentials c = TlsCredentials.load(certs.server());
    assertThat(c.verifyPeer()).as("QEMU's verify-peer default").isTrue();
    assertThat(c.sslContext().isServer()).isTrue();
    // the PKCS#8 key of the client reads too
    assertThat(Files.readString(certs.client().resolve("client-key.pem"))).contains("BEGIN PRIVATE KEY");
    assertThat(TlsCredentials.privateKey(certs.client().resolve("client-key.pem")).getAlgorithm()).isEqualTo("RSA");
  }

  @Test
  void aMissingOrWrongFileIsNamedInTheError() throws Exception {
    for (String missing : new String[] {"ca-cert.pem", "server-cert.pem", "server-key.pem"}) {
      Path d = Files.createDirectories(dir.resolve("no-" + missing));
      for (String f : new String[] {"ca-cert.pem", "server-cert.pem", "server-key.pem"}) {
        if (!f.equals(missing)) {
          Files.copy(certs.server().resolve(f), d.resolve(f));
        }
      }
      assertThatThrownBy(() -> TlsCredentials.load(d, false))
          .isInstanceOf(TlsCredentialsException.class)
          .hasMessageContaining(d.resolve(missing).toString()).hasMessageContaining("missing");
    }
    Path wrongKey = Files.createDirectories(dir.resolve("wrong-key"));
    Files.copy(certs.server().resolve("ca-cert.pem"), wrongKey.resolve("ca-cert.pem"));
    Files.copy(certs.server().resolve("server-cert.pem"), wrongKey.resolve("server-cert.pem"));
    Files.copy(certs.client().resolve("client-key.pem"), wrongKey.resolve("server-key.pem"));
    assertThatThrownBy(() -> TlsCredentials.load(wrongKey))
        .isInstanceOf(TlsCredentialsException.class).hasMessageContaining("does not belong");
    Path garbage = Files.createDirectories(dir.resolve("garbage"));
    Files.copy(certs.server().resolve("ca-cert.pem"), garbage.resolve("ca-cert.pem"));
    Files.writeString(garbage.resolve("server-cert.pem"), "not a certificate\n");
    assertThatThrownBy(() -> TlsCredentials.load(garbage))
        .isInstanceOf(TlsCredentialsException.class).hasMessageContaining("server-cert.pem");
    assertThatThrownBy(() -> TlsCredentials.load(dir.resolve("nowhere")))
        .isInstanceOf(TlsCredentialsException.class).hasMessageContaining("nowhere");
  }

  @Test
  void pkcs1IsWrappedInPrivateKeyInfo() {
    // a long-form length: 300 bytes of key need 0x82 0x01 0x2c
    byte[] pkcs1 = new byte[300];
    byte[] p8 = TlsCredentials.rsaPkcs1ToPkcs8(pkcs1);
    assertThat(p8.length).isEqualTo(4 + 3 + 15 + 4 + 300);
    assertThat(new byte[] {p8[0], p8[1], p8[2], p8[3]}).isEqualTo(new byte[] {0x30, (byte) 0x82, 0x01, 0x42});
    assertThat(new byte[] {p8[22], p8[23], p8[24], p8[25]}).isEqualTo(new byte[] {0x04, (byte) 0x82, 0x01, 0x2c});
  }

  // ---- the handshake, on an EmbeddedChannel

  @Test
  void startTlsIsAckedInPlaintextAndOnlyThenIsTheSslHandlerPutFirst() throws Exception {
    EmbeddedChannel ch = Wire.channel(tlsSettings());
    Wire.out(ch).release(); // the greeting
    ch.writeInbound(Wire.clientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES));
    ch.writeInbound(Wire.option(NBD_OPT_STARTTLS, new byte[0]));
    ByteBuf ack = Wire.out(ch);
    OptReply r = Wire.optReply(ack);
    assertThat(r.type()).isEqualTo(NBD_REP_ACK);
    assertThat(r.option()).isEqualTo(NBD_OPT_STARTTLS);
    assertThat(ack.isReadable()).isFalse();
    assertThat(ch.pipeline().first()).isInstanceOf(SslHandler.class);
    assertThat(ch.isActive()).isTrue();
  }

  @Test
  void plaintextPipelinedAfterStartTlsClosesTheConnection() throws Exception {
    EmbeddedChannel ch = Wire.channel(tlsSettings());
    Wire.out(ch).release();
    ByteBuf both = Wire.clientFlags(NBD_FLAG_C_FIXED_NEWSTYLE);
    both.writeBytes(Wire.option(NBD_OPT_STARTTLS, new byte[0]));
    both.writeBytes(Wire.option(NBD_OPT_GO, Wire.goData("disk")));
    ch.writeInbound(both);
    ch.runPendingTasks();
    assertThat(ch.isActive()).isFalse();
    assertThat(ch.pipeline().get(SslHandler.class)).isNull();
  }

  ConnectionSettings tlsSettings() throws IOException {
    ConnectionSettings s = Wire.settings(Runnable::run, NbdExport.of("disk", new MemoryDevice(1 << 20)));
    return new ConnectionSettings(s.exports(), s.workers(), s.maxInFlight(), 0,
        TlsCredentials.load(certs.server()).sslContext());
  }

  // ---- raw clients over TCP

  /** A raw client: greeting and client flags done in the constructor, then options. */
  final class RawClient implements AutoCloseable {
    Socket s;
    DataInputStream in;
    DataOutputStream out;

    RawClient() throws IOException {
      s = new Socket("127.0.0.1", port());
      s.setSoTimeout(20_000);
      streams();
      assertThat(in.readLong()).isEqualTo(NBDMAGIC);
      assertThat(in.readLong()).isEqualTo(IHAVEOPT);
      // a server that requires TLS greets as any fixed-newstyle server (proto.md, "TLS support")
      assertThat(in.readUnsignedShort()).isEqualTo(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
      out.writeInt(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    }

    private void streams() throws IOException {
      in = new DataInputStream(s.getInputStream());
      out = new DataOutputStream(s.getOutputStream());
    }

    OptReply ask(int opt, byte[] data) throws IOException {
      send(opt, data);
      return reply();
    }

    void send(int opt, byte[] data) throws IOException {
      out.write(Wire.bytes(Wire.option(opt, data)));
      out.flush();
    }

    OptReply reply() throws IOException {
      assertThat(in.readLong()).isEqualTo(NBD_REP_MAGIC);
      int opt = in.readInt();
      int type = in.readInt();
      byte[] d = new byte[in.readInt()];
      in.readFully(d);
      return new OptReply(opt, type, d);
    }

    /** NBD_OPT_STARTTLS, then the TLS handshake over the same socket. */
    RawClient startTls(SSLContext tls) throws IOException {
      OptReply r = ask(NBD_OPT_STARTTLS, new byte[0]);
      assertThat(r.type()).isEqualTo(NBD_REP_ACK);
      SSLSocket ssl = (SSLSocket) tls.getSocketFactory().createSocket(s, "127.0.0.1", port(), true);
      ssl.startHandshake();
      s = ssl;
      streams();
      return this;
    }

    /** Whether the server has closed (EOF) rather than sent anything more. */
    boolean closedByServer() throws IOException {
      try {
        return in.read() < 0;
      } catch (IOException e) {
        return true; // a reset, or TLS's alert
      }
    }

    @Override
    public void close() throws IOException {
      s.close();
    }
  }

  /** A JDK TLS client context trusting the test CA, with the certificate and key in {@code creds} if any. */
  static SSLContext jdkClient(Path creds) throws Exception {
    return jdkClient(creds, false);
  }

  /**
   * {@code always}: the client certificate is sent even when the server asks for another CA's
   * (GnuTLS and the JDK then send none), so the server's own check of the chain is what refuses it.
   */
  static SSLContext jdkClient(Path creds, boolean always) throws Exception {
    CertificateFactory cf = CertificateFactory.getInstance("X.509");
    KeyStore trust = KeyStore.getInstance("PKCS12");
    trust.load(null, null);
    try (InputStream ca = Files.newInputStream(creds.resolve("ca-cert.pem"))) {
      trust.setCertificateEntry("ca", cf.generateCertificate(ca));
    }
    TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
    tmf.init(trust);
    KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
    KeyStore keys = KeyStore.getInstance("PKCS12");
    keys.load(null, null);
    if (Files.exists(creds.resolve("client-cert.pem"))) {
      Certificate cert;
      try (InputStream c = Files.newInputStream(creds.resolve("client-cert.pem"))) {
        cert = cf.generateCertificate(c);
      }
      keys.setKeyEntry("client", TlsCredentials.privateKey(creds.resolve("client-key.pem")), new char[0],
          new Certificate[] {cert});
    }
    kmf.init(keys, new char[0]);
    javax.net.ssl.KeyManager[] km = kmf.getKeyManagers();
    if (always) {
      X509KeyManager k = (X509KeyManager) km[0];
      km = new javax.net.ssl.KeyManager[] {new X509ExtendedKeyManager() {
        @Override
        public String[] getClientAliases(String type, Principal[] issuers) {
          return new String[] {"client"};
        }

        @Override
        public String chooseClientAlias(String[] type, Principal[] issuers, Socket socket) {
          return "client";
        }

        @Override
        public String chooseEngineClientAlias(String[] type, Principal[] issuers, javax.net.ssl.SSLEngine e) {
          return "client";
        }

        @Override
        public String[] getServerAliases(String type, Principal[] issuers) {
          return null;
        }

        @Override
        public String chooseServerAlias(String type, Principal[] issuers, Socket socket) {
          return null;
        }

        @Override
        public X509Certificate[] getCertificateChain(String alias) {
          return k.getCertificateChain(alias);
        }

        @Override
        public PrivateKey getPrivateKey(String alias) {
          return k.getPrivateKey(alias);
        }
      }};
    }
    SSLContext ctx = SSLContext.getInstance("TLS");
    ctx.init(km, tmf.getTrustManagers(), null);
    return ctx;
  }

  @Test
  void beforeStartTlsEveryOptionIsRefusedWithTlsReqdAndExportNameCloses() throws Exception {
    serve(true);
    try (RawClient c = new RawClient()) {
      for (int opt : new int[] {NBD_OPT_LIST, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_INFO, NBD_OPT_GO, 99}) {
        byte[] data = opt == NBD_OPT_GO || opt == NBD_OPT_INFO ? Wire.goData("disk") : new byte[0];
        OptReply r = c.ask(opt, data);
        assertThat(r.option()).isEqualTo(opt);
        assertThat(r.type()).as("option %d", opt).isEqualTo(NBD_REP_ERR_TLS_REQD);
        assertThat(r.text()).contains("TLS");
      }
      c.send(NBD_OPT_EXPORT_NAME, "disk".getBytes());
      assertThat(c.closedByServer()).isTrue();
    }
    try (RawClient c = new RawClient()) {
      // QEMU drops a client whose STARTTLS carries data, after telling it why
      assertThat(c.ask(NBD_OPT_STARTTLS, new byte[] {1}).type()).isEqualTo(NBD_REP_ERR_INVALID);
      assertThat(c.closedByServer()).isTrue();
    }
    try (RawClient c = new RawClient()) {
      assertThat(c.ask(NBD_OPT_ABORT, new byte[0]).type()).isEqualTo(NBD_REP_ACK);
      assertThat(c.closedByServer()).isTrue();
    }
    // the server still serves a client that does it right
    try (RawClient c = new RawClient().startTls(jdkClient(certs.client()))) {
      assertThat(c.ask(NBD_OPT_GO, Wire.goData("disk")).type()).isEqualTo(NBD_REP_INFO);
    }
  }

  @Test
  void afterStartTlsTheOptionsWorkAndASecondStartTlsIsInvalid() throws Exception {
    serve(true);
    try (RawClient c = new RawClient().startTls(jdkClient(certs.client()))) {
      OptReply again = c.ask(NBD_OPT_STARTTLS, new byte[0]);
      assertThat(again.type()).isEqualTo(NBD_REP_ERR_INVALID);
      assertThat(again.text()).contains("already");
      OptReply list = c.ask(NBD_OPT_LIST, new byte[0]);
      assertThat(list.type()).isEqualTo(NBD_REP_SERVER);
      assertThat(c.reply().type()).isEqualTo(NBD_REP_ACK);
      OptReply info;
      c.send(NBD_OPT_GO, Wire.goData("disk"));
      do {
        info = c.reply();
      } while (info.type() == NBD_REP_INFO);
      assertThat(info.type()).isEqualTo(NBD_REP_ACK);
      // a read over TLS, answered with the source's bytes
      c.out.write(Wire.bytes(Wire.request(0, NBD_CMD_READ, 42, 4096, 512, null)));
      c.out.flush();
      assertThat(c.in.readInt()).isEqualTo(NBD_SIMPLE_REPLY_MAGIC);
      assertThat(c.in.readInt()).isZero();
      assertThat(c.in.readLong()).isEqualTo(42);
      byte[] got = new byte[512];
      c.in.readFully(got);
      byte[] want = new byte[512];
      System.arraycopy(Files.readAllBytes(source), 4096, want, 0, 512);
      assertThat(got).isEqualTo(want);
    }
  }

  @Test
  void withVerifyPeerAJdkClientWithoutACertificateOrWithOneOfAnotherCaIsRefused() throws Exception {
    serve(true);
    for (SSLContext bad : new SSLContext[] {jdkClient(certs.anonymous()), jdkClient(certs.rogue(), true)}) {
      assertThatThrownBy(() -> {
        try (RawClient c = new RawClient().startTls(bad)) {
          // TLS 1.3 finishes the client's side first: the refusal shows on the first read
          c.ask(NBD_OPT_LIST, new byte[0]);
        }
      }).isInstanceOf(IOException.class);
    }
    try (RawClient c = new RawClient().startTls(jdkClient(certs.client()))) {
      assertThat(c.ask(NBD_OPT_LIST, new byte[0]).type()).isEqualTo(NBD_REP_SERVER);
    }
  }

  // ---- QEMU and libnbd

  @Test
  void qemuImgInfoAndConvertWorkOverTls() throws Exception {
    serve(true);
    assertThat(qemuImgInfo(certs.client()).assertExit(0).json().get("virtual-size").asLong()).isEqualTo(SIZE);
    Path out = dir.resolve("out.raw");
    QemuImg.img("convert", "--object", tlsObject(certs.client()), "--image-opts", imageOpts(), "-O", "raw", out)
        .assertExit(0);
    QemuImg.assertIdentical(out, "raw", source, "raw");
  }

  @Test
  void nbdinfoWorksOverTls() throws Exception {
    serve(true);
    Result r = nbdinfo(nbds(certs.client())).assertExit(0);
    assertThat(r.json().get("exports").get(0).get("export-size").asLong()).isEqualTo(SIZE);
    assertThat(r.json().get("TLS").asBoolean()).isTrue();
  }

  @Test
  void plaintextNbdinfoIsRefusedAndTheServerKeepsServing() throws Exception {
    serve(true);
    Result plain = nbdinfo("nbd://127.0.0.1:" + port() + "/disk");
    assertThat(plain.exit()).as(plain.err()).isNotZero();
    // libnbd reports NBD_REP_ERR_TLS_REQD to NBD_OPT_GO as "not supported"
    assertThat(plain.err()).contains("server replied with error");
    nbdinfo(nbds(certs.client())).assertExit(0);
  }

  @Test
  void withVerifyPeerClientsOfAnotherCaOrWithoutACertificateAreRefused() throws Exception {
    serve(true);
    // QEMU refuses the rogue pair before connecting (it checks its own certificate against its own
    // ca-cert.pem); nbdinfo connects, and GnuTLS sends no certificate of a CA the server does not
    // name, so the server sees none; the JDK client that sends it anyway is the rogue CA's case above
    assertThat(qemuImgInfo(certs.rogue()).exit()).as("a client certificate of the rogue CA").isNotZero();
    assertThat(qemuImgInfo(certs.anonymous()).exit()).as("no client certificate").isNotZero();
    assertThat(nbdinfo(nbds(certs.rogue())).exit()).isNotZero();
    qemuImgInfo(certs.client()).assertExit(0);
    nbdinfo(nbds(certs.client())).assertExit(0);
  }

  @Test
  void withoutVerifyPeerAClientWithoutACertificateGetsIn() throws Exception {
    serve(false);
    qemuImgInfo(certs.anonymous()).assertExit(0);
  }
}
