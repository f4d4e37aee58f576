package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.*;
import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.nbd.Wire.Client;
import java.io.IOException;
import java.net.SocketTimeoutException;
import java.util.Arrays;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Hostile clients over real sockets. Each case checks that the server answers as the NBD spec
 * says or closes that one connection, and that a well-behaved connection opened before the case
 * (the witness) still writes and reads correctly after it.
 */
@Timeout(60)
class NbdHostileClientTest {

  static final int SIZE = 1 << 20;

  MemoryDevice disk = new MemoryDevice(SIZE);
  NbdServer server;
  /** In transmission before each case; checked after it. */
  Client witness;

  @BeforeEach
  void start() throws IOException {
    serve(NbdServer.builder());
  }

  /** (Re)starts the server from {@code b} with the test's export and a new witness. */
  void serve(NbdServer.Builder b) throws IOException {
    stop();
    server = b.export(NbdExport.of("disk", disk)).tcp("127.0.0.1", 0).build();
    server.start();
    witness = new Client(server).go("disk");
  }

  @AfterEach
  void witnessStillWorks() throws IOException {
    byte[] data = new byte[4096];
    Arrays.fill(data, (byte) 0x5a);
    assertThat(witness.writeAndRead(1_000_000, SIZE - 4096, data)).as("the witness connection").isEqualTo(data);
    stop();
  }

  void stop() throws IOException {
    if (witness != null) {
      witness.close();
      witness = null;
    }
    if (server != null) {
      server.close();
      server = null;
    }
  }

  // --- handshake-max-seconds

  @Test
  void clientsThatDoNotFinishTheHandshakeInTimeAreDisconnected() throws IOException {
    serve(NbdServer.builder().handshakeMaxSeconds(1));
    try (Client silent = new Client(server.tcpAddress());
        Client halfOption = new Client(server);
        Client chatty = new Client(server)) {
      silent.greeting(); // and never a byte back
      halfOption.out.writeLong(IHAVEOPT);
      halfOption.out.writeInt(NBD_OPT_GO);
      halfOption.out.writeInt(100);
      halfOption.out.write(new byte[50]);
      halfOption.out.flush();
      assertThat(silent.closedByServer()).as("a client that sends nothing").isTrue();
      assertThat(halfOption.closedByServer()).as("a client that sends half an option").isTrue();
      // options answered all along do not extend the limit: it counts from connect
      boolean closed = false;
      while (!closed) {
        try {
          chatty.option(NBD_OPT_LIST, new byte[0]);
          while (chatty.optReply().type() != NBD_REP_ACK) {
            // the export's NBD_REP_SERVER
          }
        } catch (SocketTimeoutException e) {
          throw new AssertionError("the server neither answered nor closed", e);
        } catch (IOException e) {
          closed = true; // end of stream, or a reset of the option being sent
        }
      }
    }
    // the witness entered transmission before the limit passed and is not cut (checked after the test);
    // a new client that finishes in time is served
    try (Client c = new Client(server).go("disk")) {
      c.request(NBD_CMD_FLUSH, 1, 0, 0);
      assertThat(c.reply(1)).isZero();
    }
  }
}
