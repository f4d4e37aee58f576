package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.*;
import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.nbd.Wire.Client;

import java.io.IOException;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The server over real sockets: read-only exports, connection limits, close, Unix sockets, the
 * shared work queue. Hostile clients are {@link NbdHostileClientTest}'s.
 */
@Timeout(30)
class NbdServerSocketTest {

  static final int SIZE = 1 << 20;

  MemoryDevice disk = new MemoryDevice(SIZE);
  NbdServer server;

  @BeforeEach
  void start() throws IOException {
    server = NbdServer.builder()
        .export(NbdExport.of("disk", disk))
        .export(NbdExport.of("ro", disk).withReadOnly(true))
        .tcp("127.0.0.1", 0)
        .build();
    server.start();
  }

  @AfterEach
  void stop() {
    server.close();
  }

  @Test
  void writesToAReadOnlyExportGetEperm() throws IOException {
    try (Client c = new Client(server).go("ro")) {
      c.request(NBD_CMD_WRITE, 1, 0, 3);
      c.out.write(new byte[] {1, 2, 3});
      assertThat(c.reply(1)).isEqualTo(NBD_EPERM);
      assertThat(disk.bytes[0]).isZero();
    }
  }

  @Test
  void connectionsBeyondMaxConnectionsAreClosedAtAcceptAndTheOthersKeepWorking() throws Exception {
    server.close();
    server = NbdServer.builder().export(NbdExport.of("disk", disk)).tcp("127.0.0.1", 0).maxConnections(2).build();
    server.start();
    try (Client a = new Client(server).go("disk"); Client b = new Client(server)) {
      try (Socket third = new Socket("127.0.0.1", server.tcpAddress().getPort())) {
        third.setSoTimeout(20_000);
        int first;
        try {
          first = third.getInputStream().read();
        } catch (IOException reset) {
          first = -1;
        }
        assertThat(first).as("the third connection gets no greeting").isEqualTo(-1);
      }
      a.request(NBD_CMD_FLUSH, 1, 0, 0);
      assertThat(a.reply(1)).isZero();
      b.go("disk").request(NBD_CMD_FLUSH, 2, 0, 0);
      assertThat(b.reply(2)).isZero();
    }
    // once the two have left, a new client is served again
    long deadline = System.nanoTime() + 20_000_000_000L;
    while (server.connectionCount() > 0 && System.nanoTime() < deadline) {
      Thread.sleep(5);
    }
    try (Client c = new Client(server).go("disk")) {
      c.request(NBD_CMD_FLUSH, 3, 0, 0);
      assertThat(c.reply(3)).isZero();
    }
  }

  @Test
  void closeAnswersInFlightRequestsAndLeavesTheDeviceOpen() throws Exception {
    Client c = new Client(server).go("disk");
    c.request(NBD_CMD_FLUSH, 1, 0, 0);
    assertThat(c.reply(1)).isZero();
    Client handshaking = new Client(server);
    server.close();
    assertThat(c.closedByServer()).isTrue();
    assertThat(handshaking.closedByServer()).isTrue();
    assertThat(disk.closed).isFalse();
    assertThatThrownBy(() -> new Client(server)).isInstanceOf(IOException.class);
    c.close();
    handshaking.close();
  }

  @Test
  void unixSocketIsServedAndRemovedOnClose() throws Exception {
    Path dir = Files.createTempDirectory(Path.of("/tmp"), "bbnbd");
    Path sock = dir.resolve("s");
    Files.createFile(sock.resolveSibling("f"));
    try (NbdServer s = NbdServer.builder().export(NbdExport.of("", disk)).unixSocket(sock).build()) {
      s.start();
      assertThat(Files.exists(sock)).isTrue();
      try (java.nio.channels.SocketChannel ch = java.nio.channels.SocketChannel.open(
          java.net.UnixDomainSocketAddress.of(sock))) {
        java.nio.ByteBuffer b = java.nio.ByteBuffer.allocate(18);
        while (b.hasRemaining()) {
          ch.read(b);
        }
        assertThat(b.getLong(0)).isEqualTo(NBDMAGIC);
      }
    }
    assertThat(Files.exists(sock)).isFalse();
    // a regular file where the socket should go is refused, not deleted
    NbdServer s = NbdServer.builder().export(NbdExport.of("", disk)).unixSocket(sock.resolveSibling("f")).build();
    assertThatThrownBy(s::start).isInstanceOf(IOException.class).hasMessageContaining("not a socket");
    assertThat(Files.exists(sock.resolveSibling("f"))).isTrue();
    Files.delete(sock.resolveSibling("f"));
    Files.delete(dir);
  }

  @Test
  void builderRefusesWhatCannotWork() {
    assertThatThrownBy(() -> NbdServer.builder().tcp("127.0.0.1", 0).build())
        .hasMessageContaining("at least one export");
    assertThatThrownBy(() -> NbdServer.builder().export(NbdExport.of("a", disk)).build())
        .hasMessageContaining("Unix socket or a TCP address");
    assertThatThrownBy(() -> NbdServer.builder().export(NbdExport.of("a", disk)).export(NbdExport.of("a", disk)))
        .hasMessageContaining("given twice");
    assertThatThrownBy(() -> NbdExport.of("x".repeat(4097), disk)).hasMessageContaining("4096");
    assertThatThrownBy(() -> NbdServer.builder().handshakeMaxSeconds(-1)).hasMessageContaining("must not be negative");
    assertThat("x".getBytes(StandardCharsets.UTF_8)).hasSize(1);
  }

  @Test
  void clientsThatOverfillTheWorkQueueAreSlowedNotRefused() throws Exception {
    server.close();
    // one worker and room for one request: three clients that each pipeline 64 reads keep the
    // queue full, so every connection keeps stopping and resuming its reads
    server = NbdServer.builder().export(NbdExport.of("disk", disk)).tcp("127.0.0.1", 0)
        .workerThreads(1).maxQueued(1).build();
    server.start();
    for (int i = 0; i < SIZE; i++) {
      disk.bytes[i] = (byte) (i / 4096);
    }
    List<Client> clients = new ArrayList<>();
    try {
      for (int c = 0; c < 3; c++) {
        clients.add(new Client(server).go("disk"));
      }
      for (Client c : clients) {
        for (int i = 0; i < 64; i++) {
          c.request(NBD_CMD_READ, i, i * 4096L, 4096);
        }
        c.out.flush();
      }
      for (Client c : clients) {
        Set<Long> answered = new HashSet<>();
        for (int i = 0; i < 64; i++) {
          assertThat(c.in.readInt()).isEqualTo(NBD_SIMPLE_REPLY_MAGIC);
          assertThat(c.in.readInt()).as("error").isZero();
          long handle = c.in.readLong();
          byte[] data = c.in.readNBytes(4096);
          assertThat(data).containsOnly((byte) handle);
          answered.add(handle);
        }
        assertThat(answered).hasSize(64);
      }
    } finally {
      for (Client c : clients) {
        c.close();
      }
    }
  }
}
