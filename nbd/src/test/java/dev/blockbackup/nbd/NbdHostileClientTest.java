package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.*;
import static org.assertj.core.api.Assertions.assertThat;

import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.blockbackup.nbd.Wire.Client;
import dev.blockbackup.nbd.Wire.OptReply;
import dev.blockbackup.nbd.Wire.Reply;
import java.io.IOException;
import java.lang.management.ManagementFactory;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.function.LongFunction;
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

  // --- bad magic, unknown flags

  @Test
  void unknownClientFlagsCloseThatConnection() throws IOException {
    // a flag from a later spec, every bit, and a client that answers the greeting with the magic
    for (int flags : new int[] {1 << 2, -1, (int) (NBDMAGIC >>> 32)}) {
      try (Client c = new Client(server.tcpAddress())) {
        c.greeting();
        c.out.writeInt(flags);
        assertThat(c.closedByServer()).as("client flags 0x%x", flags).isTrue();
      }
    }
  }

  @Test
  void badOptionMagicClosesThatConnection() throws IOException {
    try (Client c = new Client(server)) {
      c.out.writeLong(0x1234);
      c.out.writeInt(NBD_OPT_LIST);
      c.out.writeInt(0);
      assertThat(c.closedByServer()).isTrue();
    }
    // a client that skips the handshake and sends a request at once
    try (Client c = new Client(server)) {
      c.request(NBD_CMD_READ, 1, 0, 4096);
      assertThat(c.closedByServer()).isTrue();
    }
  }

  @Test
  void badRequestMagicClosesThatConnection() throws IOException {
    // garbage, an option in transmission, and the reply magic echoed back
    for (long magic : new long[] {0x12345678, IHAVEOPT >>> 32, NBD_SIMPLE_REPLY_MAGIC}) {
      try (Client c = new Client(server).go("disk")) {
        c.out.writeInt((int) magic);
        c.out.write(new byte[24]);
        assertThat(c.closedByServer()).as("magic 0x%x", magic).isTrue();
      }
    }
  }

  // --- option lengths

  @Test
  void optionLengthsOver16MiBCloseAtOnce() throws IOException {
    for (long length : new long[] {0xFFFFFFFFL, NbdDecoder.MAX_SKIPPED_OPTION + 1}) {
      try (Client c = new Client(server)) {
        c.out.writeLong(IHAVEOPT);
        c.out.writeInt(NBD_OPT_GO);
        c.out.writeInt((int) length);
        assertThat(c.closedByServer()).as("option length %d", length).isTrue();
      }
    }
  }

  @Test
  void optionsJustOver64KiBAreAnsweredTooBigAndTheHandshakeGoesOn() throws IOException {
    try (Client c = new Client(server)) {
      for (int opt : new int[] {NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST, NBD_OPT_SET_META_CONTEXT, 99}) {
        OptReply r = c.option(opt, new byte[MAX_OPTION_LENGTH + 1]).optReply();
        assertThat(r.option()).isEqualTo(opt);
        assertThat(r.type()).as("option %d", opt).isEqualTo(NBD_REP_ERR_TOO_BIG);
        assertThat(r.data().length).isLessThanOrEqualTo(NbdExport.MAX_STRING);
      }
      byte[] data = new byte[4096];
      Arrays.fill(data, (byte) 3);
      assertThat(c.go("disk").writeAndRead(1, 0, data)).isEqualTo(data);
    }
    // NBD_OPT_EXPORT_NAME has no error reply: the server can only close
    try (Client c = new Client(server)) {
      c.option(NBD_OPT_EXPORT_NAME, new byte[MAX_OPTION_LENGTH + 1]);
      assertThat(c.closedByServer()).isTrue();
    }
  }

  // --- export names of 4096 and 4097 bytes

  @Test
  void exportNamesOfTheLongestLengthAndOneByteMore() throws IOException {
    String longest = "n".repeat(NbdExport.MAX_STRING);
    serve(NbdServer.builder().export(NbdExport.of(longest, disk)));
    for (String unknown : new String[] {"u".repeat(4096), "u".repeat(4097)}) {
      try (Client c = new Client(server)) {
        for (int opt : new int[] {NBD_OPT_GO, NBD_OPT_INFO}) {
          OptReply r = c.option(opt, Wire.goData(unknown, NBD_INFO_NAME)).optReply();
          // a name within the spec's limit is just unknown; one past it is invalid (as QEMU)
          assertThat(r.type()).as("%d-byte name", unknown.length())
              .isEqualTo(unknown.length() > NbdExport.MAX_STRING ? NBD_REP_ERR_INVALID : NBD_REP_ERR_UNKNOWN);
          assertThat(r.data().length).isLessThanOrEqualTo(NbdExport.MAX_STRING);
        }
        c.go("disk"); // the handshake went on
      }
      try (Client c = new Client(server)) {
        c.option(NBD_OPT_EXPORT_NAME, unknown.getBytes(StandardCharsets.UTF_8));
        assertThat(c.closedByServer()).as("NBD_OPT_EXPORT_NAME of %d bytes", unknown.length()).isTrue();
      }
    }
    // the export with the longest name: named back whole by NBD_INFO_NAME, reachable both ways
    try (Client c = new Client(server)) {
      c.option(NBD_OPT_INFO, Wire.goData(longest, NBD_INFO_NAME));
      Set<String> names = new HashSet<>();
      for (OptReply r; (r = c.optReply()).type() != NBD_REP_ACK; ) {
        assertThat(r.type()).isEqualTo(NBD_REP_INFO);
        if (r.data()[1] == NBD_INFO_NAME) {
          names.add(new String(r.data(), 2, r.data().length - 2, StandardCharsets.UTF_8));
        }
      }
      assertThat(names).containsExactly(longest);
      c.go(longest).request(NBD_CMD_FLUSH, 1, 0, 0);
      assertThat(c.reply(1)).isZero();
    }
    try (Client c = new Client(server)) {
      c.option(NBD_OPT_EXPORT_NAME, longest.getBytes(StandardCharsets.UTF_8));
      assertThat(c.in.readLong()).isEqualTo(SIZE);
      c.in.readUnsignedShort(); // transmission flags; no zeroes follow (NBD_FLAG_C_NO_ZEROES)
      c.request(NBD_CMD_FLUSH, 2, 0, 0);
      assertThat(c.reply(2)).isZero();
    }
  }

  @Test
  void goWhoseInformationRequestsDoNotMatchItsLengthIsInvalid() throws IOException {
    byte[] name = "disk".getBytes(StandardCharsets.UTF_8);
    byte[][] malformed = {
        goWith(name, 3, 1), // three requests announced, one sent
        goWith(name, 0, 1), // none announced, one sent
        goWith(name, 0xFFFF, 0), // 65535 announced, none sent
        Arrays.copyOf(goWith(name, 1, 1), 4 + name.length + 2 + 2 + 1), // an odd byte after them
        new byte[] {(byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, 'd', 0, 0}, // name longer than the data
    };
    try (Client c = new Client(server)) {
      for (int opt : new int[] {NBD_OPT_GO, NBD_OPT_INFO}) {
        for (byte[] data : malformed) {
          assertThat(c.option(opt, data).optReply().type()).isEqualTo(NBD_REP_ERR_INVALID);
        }
      }
      c.go("disk").request(NBD_CMD_FLUSH, 1, 0, 0);
      assertThat(c.reply(1)).isZero();
    }
  }

  /** NBD_OPT_GO data: the name, a request count, and {@code sent} NBD_INFO_NAME requests. */
  private static byte[] goWith(byte[] name, int count, int sent) {
    ByteBuffer b = ByteBuffer.allocate(4 + name.length + 2 + 2 * sent);
    b.putInt(name.length).put(name).putShort((short) count);
    for (int i = 0; i < sent; i++) {
      b.putShort((short) NBD_INFO_NAME);
    }
    return b.array();
  }

  // --- requests: ranges, lengths, commands, flags

  @Test
  void requestsPastTheEndOrAtHugeOffsetsAreRefusedAndTheConnectionGoesOn() throws IOException {
    long[] offsets = {SIZE - 1, SIZE, SIZE + 1L, 1L << 62, Long.MAX_VALUE, Long.MIN_VALUE, -4096, -1};
    long[] lengths = {2, 4096, 0x7FFFFFFFL, 0x80000000L, 0xFFFFFFFFL};
    int[] commands = {NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES, NBD_CMD_BLOCK_STATUS,
        NBD_CMD_CACHE};
    try (Client c = new Client(server).goStructured("disk", true)) {
      long handle = 0;
      for (int cmd : commands) {
        for (long offset : offsets) {
          for (long length : lengths) {
            if (cmd == NBD_CMD_WRITE && length > 4096) {
              continue; // a write's payload follows its header: the huge ones have a test of their own
            }
            handle++;
            c.request(cmd, handle, offset, length);
            if (cmd == NBD_CMD_WRITE) {
              c.out.write(new byte[(int) length]);
            }
            Reply r = c.anyReply();
            assertThat(r.handle()).isEqualTo(handle);
            // writes past the end get ENOSPC (the spec's SHOULD, as QEMU), the rest EINVAL
            int expected = cmd == NBD_CMD_WRITE || cmd == NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
            assertThat(r.error()).as("command %d at %d for %d", cmd, offset, length).isEqualTo(expected);
          }
        }
      }
      // lengths near 2^32 from offset 0 are past the end of a 1 MiB export too
      for (int cmd : new int[] {NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES, NBD_CMD_BLOCK_STATUS}) {
        c.request(cmd, ++handle, 0, 0xFFFFFFFFL);
        assertThat(c.anyReply().error()).isEqualTo(cmd == NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL);
      }
      c.request(NBD_CMD_FLAG_DF, NBD_CMD_READ, ++handle, SIZE - 4096, 4096); // DF: the bytes, not a hole
      Reply r = c.anyReply();
      assertThat(r.error()).isZero();
      assertThat(r.payload()).hasSize(8 + 4096);
    }
  }

  @Test
  void writesWithHugeLengthsCloseAtOnceAndOversizedOnesAreSkipped() throws IOException {
    // 4 GiB and 2 GiB of payload announced: closed after the header, nothing waited for or buffered
    for (long length : new long[] {0xFFFFFFFFL, 0x80000000L, NbdDecoder.MAX_SKIPPED_WRITE + 1}) {
      try (Client c = new Client(server).go("disk")) {
        c.request(NBD_CMD_WRITE, 1, 0, length);
        c.out.write(new byte[4096]);
        assertThat(c.closedByServer()).as("write of %d bytes", length).isTrue();
      }
    }
    // just over the maximum block size: the payload is dropped as it comes and the write answered EINVAL
    try (Client c = new Client(server).go("disk")) {
      long length = MAX_BLOCK_SIZE + 4096L;
      c.request(NBD_CMD_WRITE, 2, 0, length);
      byte[] chunk = new byte[1 << 20];
      Arrays.fill(chunk, (byte) 9);
      for (long left = length; left > 0; left -= chunk.length) {
        c.out.write(chunk, 0, (int) Math.min(left, chunk.length));
      }
      assertThat(c.reply(2)).isEqualTo(NBD_EINVAL);
      c.request(NBD_CMD_READ, 3, 0, 4096);
      assertThat(c.reply(3)).isZero();
      assertThat(c.in.readNBytes(4096)).containsOnly(0);
    }
  }

  @Test
  void unknownCommandsAndUnknownFlagsAreEinval() throws IOException {
    try (Client c = new Client(server).go("disk")) {
      long handle = 0;
      for (int type : new int[] {8, 99, 0x7FFF, 0xFFFF}) {
        c.request(type, ++handle, 0, 0);
        assertThat(c.reply(handle)).as("command %d", type).isEqualTo(NBD_EINVAL);
      }
      // FUA is not among them: the spec makes a server accept it on every command
      int[][] flagged = {
          {NBD_CMD_READ, NBD_CMD_FLAG_DF}, // DF needs structured replies
          {NBD_CMD_READ, 0xFFFF}, {NBD_CMD_WRITE, NBD_CMD_FLAG_REQ_ONE}, {NBD_CMD_WRITE, 0xFFFF},
          {NBD_CMD_FLUSH, NBD_CMD_FLAG_NO_HOLE}, {NBD_CMD_TRIM, NBD_CMD_FLAG_FAST_ZERO}, {NBD_CMD_TRIM, 0xFFFF},
          {NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_DF}, {NBD_CMD_CACHE, NBD_CMD_FLAG_REQ_ONE}, {NBD_CMD_CACHE, 1 << 15},
          {NBD_CMD_WRITE, NBD_CMD_FLAG_PAYLOAD_LEN}, // only with extended headers
      };
      for (int[] f : flagged) {
        c.request(f[1], f[0], ++handle, 0, 1);
        if (f[0] == NBD_CMD_WRITE) {
          c.out.write(1); // its payload is read and dropped
        }
        assertThat(c.reply(handle)).as("command %d flags 0x%x", f[0], f[1]).isEqualTo(NBD_EINVAL);
      }
      assertThat(disk.bytes[0]).isZero();
    }
  }

  @Test
  void blockStatusWithoutANegotiatedContextIsEinval() throws IOException {
    try (Client simple = new Client(server).go("disk");
        Client structured = new Client(server).goStructured("disk", false)) {
      simple.request(NBD_CMD_BLOCK_STATUS, 1, 0, 4096);
      assertThat(simple.reply(1)).isEqualTo(NBD_EINVAL);
      structured.request(NBD_CMD_BLOCK_STATUS, 2, 0, 4096);
      Reply r = structured.anyReply();
      assertThat(r.type()).isEqualTo(NBD_REPLY_TYPE_ERROR);
      assertThat(r.error()).isEqualTo(NBD_EINVAL);
    }
  }

  // --- clients that send without reading

  /**
   * More than the kernel can hold between a client and a server that stops reading: its socket
   * buffers at their largest (net.ipv4.tcp_wmem and tcp_rmem maxima) and 8 MiB for what the
   * server may take in before it stops. A flood that gets this far was buffered by the server.
   */
  static long floodBudget() {
    return maxOf("/proc/sys/net/ipv4/tcp_wmem") + maxOf("/proc/sys/net/ipv4/tcp_rmem") + (8 << 20);
  }

  private static long maxOf(String sysctl) {
    try {
      String[] v = Files.readString(Path.of(sysctl)).trim().split("\\s+");
      return Long.parseLong(v[v.length - 1]);
    } catch (IOException | RuntimeException e) {
      return 64 << 20;
    }
  }

  /**
   * Sends the frames {@code frame(0), frame(1), ...} without reading anything, until the server
   * stops taking them (nothing could be sent for 2 s) or {@code budget} bytes are sent. Returns the
   * frames begun; the last may be partly sent, its rest in {@code rest}. The wait only ends the
   * flood: with a server that never stops reading it ends at the budget, which the test fails.
   */
  static long floodUntilStalled(Client c, LongFunction<ByteBuffer> frame, long budget, ByteBuffer[] rest)
      throws IOException {
    long frames = 0;
    long sent = 0;
    ByteBuffer b = frame.apply(frames++);
    c.ch.configureBlocking(false);
    try (Selector sel = Selector.open()) {
      c.ch.register(sel, SelectionKey.OP_WRITE);
      while (sent < budget) {
        int n = c.ch.write(b);
        sent += n;
        if (!b.hasRemaining()) {
          b = frame.apply(frames++);
        } else if (n == 0) {
          sel.selectedKeys().clear();
          if (sel.select(2000) == 0) {
            break;
          }
        }
      }
    }
    c.ch.configureBlocking(true); // the selector is closed: the channel is deregistered
    rest[0] = b;
    return sent < budget ? frames : -1;
  }

  @Test
  void aFloodOfWritesWhoseRepliesAreNotReadIsStoppedNotBufferedAndEveryWriteIsAnsweredOnce() throws Exception {
    serve(NbdServer.builder().workerThreads(2));
    CountDownLatch gate = new CountDownLatch(1);
    disk.writeGate = gate; // the device holds the writes: only the server's own limits stop reading
    try (Client c = new Client(server).go("disk")) {
      // every write to block k carries the byte k, so whatever order they run in, block k ends as k
      LongFunction<ByteBuffer> write = i -> {
        ByteBuffer b = ByteBuffer.allocate(28 + 4096);
        b.putInt(NBD_REQUEST_MAGIC).putShort((short) 0).putShort((short) NBD_CMD_WRITE).putLong(i)
            .putLong((i % 256) * 4096).putInt(4096);
        while (b.hasRemaining()) {
          b.put((byte) (i % 256));
        }
        return b.flip();
      };
      ByteBuffer[] rest = new ByteBuffer[1];
      long frames = floodUntilStalled(c, write, floodBudget(), rest);
      assertThat(frames).as("the server stopped reading before the budget of %d bytes", floodBudget())
          .isPositive();
      // what the server took in is bounded by its per-connection limit, not by what was sent
      assertThat(server.queuedRequests()).isLessThanOrEqualTo(32);
      assertThat(disk.gatedWrites.get()).isLessThanOrEqualTo(2);

      gate.countDown();
      disk.writeGate = null;
      // the rest of the last frame goes while its replies are read: both directions must flow
      Thread finish = new Thread(() -> {
        try {
          while (rest[0].hasRemaining()) {
            c.ch.write(rest[0]);
          }
        } catch (IOException e) {
          throw new java.io.UncheckedIOException(e);
        }
      });
      finish.start();
      Set<Long> answered = new HashSet<>();
      for (long i = 0; i < frames; i++) {
        assertThat(c.in.readInt()).isEqualTo(NBD_SIMPLE_REPLY_MAGIC);
        assertThat(c.in.readInt()).as("error").isZero();
        assertThat(answered.add(c.in.readLong())).as("each handle answered once").isTrue();
      }
      finish.join();
      assertThat(answered).hasSize((int) frames);
      for (int k = 0; k < Math.min(frames, 256); k++) {
        assertThat(disk.bytes[k * 4096]).isEqualTo((byte) k);
      }
    } finally {
      gate.countDown();
      disk.writeGate = null;
    }
  }

  @Test
  void aFloodOfReadsWhoseRepliesAreNotReadIsStoppedNotBuffered() throws Exception {
    try (Client c = new Client(server).go("disk")) {
      // 1 MiB reads, never a reply read: the replies back up, and the server must stop reading
      // requests rather than queue their replies
      LongFunction<ByteBuffer> read = i -> ByteBuffer.allocate(28).putInt(NBD_REQUEST_MAGIC).putShort((short) 0)
          .putShort((short) NBD_CMD_READ).putLong(i).putLong(0).putInt(SIZE).flip();
      long frames = floodUntilStalled(c, read, floodBudget(), new ByteBuffer[1]);
      assertThat(frames).as("the server stopped reading").isPositive();
      assertThat(server.queuedRequests()).isLessThanOrEqualTo(32);
    }
  }

  // --- many connections

  @Test
  void aThousandConnectionsAtOnceAreGreetedThenLeaveAndANewClientIsServed() throws Exception {
    // each connection costs two descriptors in this JVM (both ends); scale down under a low limit
    int n = 1000;
    if (ManagementFactory.getOperatingSystemMXBean() instanceof com.sun.management.UnixOperatingSystemMXBean os) {
      long free = os.getMaxFileDescriptorCount() - os.getOpenFileDescriptorCount() - 200;
      n = (int) Math.min(n, free / 2);
    }
    assumeTrue(n >= 100, "too few file descriptors for the many-connection test: " + n);
    serve(NbdServer.builder().maxConnections(0).workerThreads(2).eventLoopThreads(1));
    List<Client> clients = new ArrayList<>();
    try {
      for (int i = 0; i < n; i++) {
        clients.add(new Client(server.tcpAddress()));
      }
      for (int i = 0; i < n; i++) {
        Client c = clients.get(i);
        assertThat(c.greeting()).isEqualTo(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
        if (i % 10 == 0) { // some go on into transmission and read
          c.out.writeInt(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
          c.go("disk").request(NBD_CMD_READ, i, 0, 512);
          assertThat(c.reply(i)).isZero();
          c.in.skipNBytes(512);
        }
      }
      assertThat(server.connectionCount()).isEqualTo(n + 1); // and the witness
    } finally {
      for (Client c : clients) {
        c.close();
      }
    }
    long deadline = System.nanoTime() + 20_000_000_000L;
    while (server.connectionCount() > 1 && System.nanoTime() < deadline) {
      Thread.sleep(10); // waiting for the closes to be seen, not proving that something does not happen
    }
    assertThat(server.connectionCount()).as("connections left besides the witness").isEqualTo(1);
    try (Client c = new Client(server).go("disk")) {
      c.request(NBD_CMD_FLUSH, 1, 0, 0);
      assertThat(c.reply(1)).isZero();
    }
  }
}

