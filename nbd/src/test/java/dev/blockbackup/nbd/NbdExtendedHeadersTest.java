package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.*;
import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.RawImage;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * NBD_OPT_EXTENDED_HEADERS over a real socket, spoken byte by byte: 32-byte requests with 64-bit
 * lengths, 32-byte reply headers that echo the offset, every reply structured, block status in
 * NBD_REPLY_TYPE_BLOCK_STATUS_EXT with 64-bit extents, on an export larger than 4 GiB so that
 * lengths past 32 bits really go over the wire.
 */
class NbdExtendedHeadersTest {

  static final long SIZE = 6L << 30;
  static final long GIB = 1L << 30;

  @TempDir Path dir;
  RawImage disk;
  NbdServer server;

  @BeforeEach
  void start() throws Exception {
    disk = RawImage.create(dir.resolve("big.raw"), SIZE);
    server = NbdServer.builder().export(NbdExport.of("big", disk).withAllocationDepth(true)).tcp("127.0.0.1", 0).build();
    server.start();
  }

  @AfterEach
  void stop() throws Exception {
    server.close();
    disk.close();
  }

  /** One reply chunk with an extended header. */
  record Chunk(int flags, int type, long handle, long offset, byte[] payload) {
    DataInputStream data() {
      return new DataInputStream(new java.io.ByteArrayInputStream(payload));
    }
  }

  /** A raw client (the shared one) that speaks extended headers once they are negotiated. */
  static final class Client implements AutoCloseable {
    final Wire.Client c;

    Client(NbdServer server) throws IOException {
      c = new Wire.Client(server);
    }

    /** Sends an option and returns the types of its replies up to the final one. */
    List<Integer> option(int opt, byte[] data) throws IOException {
      c.option(opt, data);
      List<Integer> types = new ArrayList<>();
      while (true) {
        Wire.OptReply r = c.optReply();
        assertThat(r.option()).isEqualTo(opt);
        types.add(r.type());
        if (r.type() != NBD_REP_INFO && r.type() != NBD_REP_META_CONTEXT && r.type() != NBD_REP_SERVER) {
          return types;
        }
      }
    }

    /** An extended request: 32 bytes, the length in 64 bits, then the payload if any. */
    void request(int flags, int type, long handle, long offset, long length, byte[] payload) throws IOException {
      DataOutputStream out = c.out;
      out.writeInt(NBD_EXTENDED_REQUEST_MAGIC);
      out.writeShort(flags);
      out.writeShort(type);
      out.writeLong(handle);
      out.writeLong(offset);
      out.writeLong(length);
      if (payload != null) {
        out.write(payload);
      }
      out.flush();
    }

    Chunk chunk() throws IOException {
      DataInputStream in = c.in;
      assertThat(in.readInt()).as("extended reply magic").isEqualTo(NBD_EXTENDED_REPLY_MAGIC);
      int flags = in.readUnsignedShort();
      int type = in.readUnsignedShort();
      long handle = in.readLong();
      long offset = in.readLong();
      long length = in.readLong();
      assertThat(length).isBetween(0L, (long) MAX_BLOCK_SIZE + 8);
      byte[] p = new byte[(int) length];
      in.readFully(p);
      return new Chunk(flags, type, handle, offset, p);
    }

    /** Every chunk of one reply, the last with NBD_REPLY_FLAG_DONE. */
    List<Chunk> reply() throws IOException {
      List<Chunk> all = new ArrayList<>();
      Chunk ch;
      do {
        ch = chunk();
        all.add(ch);
      } while ((ch.flags() & NBD_REPLY_FLAG_DONE) == 0);
      return all;
    }

    @Override
    public void close() throws IOException {
      c.close();
    }
  }

  private Client extended(String... contexts) throws IOException {
    Client c = new Client(server);
    assertThat(c.option(NBD_OPT_EXTENDED_HEADERS, new byte[0])).containsExactly(NBD_REP_ACK);
    if (contexts.length > 0) {
      assertThat(c.option(NBD_OPT_SET_META_CONTEXT, Wire.metaData("big", contexts)))
          .hasSize(contexts.length + 1).endsWith(NBD_REP_ACK);
    }
    assertThat(c.option(NBD_OPT_GO, Wire.goData("big")).get(0)).isEqualTo(NBD_REP_INFO);
    return c;
  }

  @Test
  void extendedHeadersImplyStructuredRepliesAndAreRefusedTwice() throws IOException {
    try (Client c = new Client(server)) {
      assertThat(c.option(NBD_OPT_EXTENDED_HEADERS, new byte[0])).containsExactly(NBD_REP_ACK);
      assertThat(c.option(NBD_OPT_EXTENDED_HEADERS, new byte[0])).containsExactly(NBD_REP_ERR_INVALID);
      assertThat(c.option(NBD_OPT_STRUCTURED_REPLY, new byte[0])).containsExactly(NBD_REP_ERR_EXT_HEADER_REQD);
      assertThat(c.option(NBD_OPT_EXTENDED_HEADERS, new byte[1])).containsExactly(NBD_REP_ERR_INVALID);
      // the old way into transmission has no place after extended headers: closed, as QEMU does
      c.c.option(NBD_OPT_EXPORT_NAME, "big".getBytes(java.nio.charset.StandardCharsets.UTF_8));
      assertThat(c.c.closedByServer()).isTrue();
    }
  }

  @Test
  void blockStatusPayloadsAreAdvertisedOnceContextsAreChosen() throws IOException {
    try (Client c = new Client(server)) {
      c.option(NBD_OPT_EXTENDED_HEADERS, new byte[0]);
      assertThat(transmissionFlags(c) & NBD_FLAG_BLOCK_STAT_PAYLOAD).as("no context chosen").isZero();
      c.option(NBD_OPT_SET_META_CONTEXT, Wire.metaData("big", BASE_ALLOCATION));
      assertThat(transmissionFlags(c) & NBD_FLAG_BLOCK_STAT_PAYLOAD).isNotZero();
    }
  }

  /** The transmission flags NBD_OPT_INFO reports for "big". */
  private static int transmissionFlags(Client c) throws IOException {
    c.c.option(NBD_OPT_INFO, Wire.goData("big"));
    int flags = -1;
    for (Wire.OptReply r; (r = c.c.optReply()).type() != NBD_REP_ACK; ) {
      java.nio.ByteBuffer b = java.nio.ByteBuffer.wrap(r.data());
      if (b.getShort() == NBD_INFO_EXPORT) {
        b.getLong();
        flags = Short.toUnsignedInt(b.getShort());
      }
    }
    return flags;
  }

  @Test
  void writesReadsAndZeroesTakeSixtyFourBitOffsetsAndLengths() throws IOException {
    try (Client c = extended()) {
      byte[] data = new byte[65536];
      Arrays.fill(data, (byte) 0x6b);
      long at = 5 * GIB + 12345;
      c.request(NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_WRITE, 1, at, data.length, data);
      List<Chunk> w = c.reply();
      assertThat(w).extracting(Chunk::type, Chunk::handle, Chunk::offset)
          .containsExactly(org.assertj.core.groups.Tuple.tuple(NBD_REPLY_TYPE_NONE, 1L, at));

      c.request(0, NBD_CMD_READ, 2, at - 4096, 4096 + data.length, null);
      List<Chunk> r = c.reply();
      assertThat(r).extracting(Chunk::type).containsExactly(NBD_REPLY_TYPE_OFFSET_HOLE, NBD_REPLY_TYPE_OFFSET_DATA);
      assertThat(r).extracting(Chunk::offset).containsOnly(at - 4096); // the request's offset, in every chunk
      DataInputStream d = r.get(1).data();
      assertThat(d.readLong()).as("the data starts at the file system block holding the write")
          .isEqualTo(5 * GIB + 12288);
      byte[] back = d.readAllBytes();
      assertThat(Arrays.copyOfRange(back, back.length - data.length, back.length)).isEqualTo(data);

      // write zeroes over 4 GiB in one request: a length no compact header can carry
      long big = 4 * GIB + 65536;
      c.request(0, NBD_CMD_WRITE_ZEROES, 3, GIB, big, null);
      assertThat(c.reply()).extracting(Chunk::type).containsExactly(NBD_REPLY_TYPE_NONE);
      c.request(0, NBD_CMD_TRIM, 4, 0, SIZE, null);
      assertThat(c.reply()).extracting(Chunk::type).containsExactly(NBD_REPLY_TYPE_NONE);
      c.request(0, NBD_CMD_READ, 5, at, 4096, null);
      assertThat(c.reply()).extracting(Chunk::type).containsExactly(NBD_REPLY_TYPE_OFFSET_HOLE);

      // errors are chunks too; a length past 2^63 is past the end, not a negative number
      c.request(0, NBD_CMD_TRIM, 6, 0, -1L, null);
      Chunk e = c.reply().get(0);
      assertThat(e.type()).isEqualTo(NBD_REPLY_TYPE_ERROR);
      assertThat(e.data().readInt()).isEqualTo(NBD_EINVAL);
      c.request(0, NBD_CMD_READ, 7, 0, MAX_BLOCK_SIZE + 1L, null);
      assertThat(c.reply().get(0).data().readInt()).isEqualTo(NBD_EINVAL);
      c.request(0, NBD_CMD_FLUSH, 8, 0, 0, null);
      assertThat(c.reply()).extracting(Chunk::type).containsExactly(NBD_REPLY_TYPE_NONE);
    }
  }

  @Test
  void blockStatusHasSixtyFourBitExtentsAndAPayloadMayPickContexts() throws IOException {
    byte[] data = new byte[65536];
    Arrays.fill(data, (byte) 1);
    disk.write(5 * GIB, java.nio.ByteBuffer.wrap(data));
    try (Client c = extended(BASE_ALLOCATION, MetaContexts.ALLOCATION_DEPTH)) {
      c.request(0, NBD_CMD_BLOCK_STATUS, 1, 0, SIZE, null);
      List<Chunk> r = c.reply();
      assertThat(r).extracting(Chunk::type).containsOnly(NBD_REPLY_TYPE_BLOCK_STATUS_EXT);
      assertThat(r).hasSize(2);
      DataInputStream d = r.get(0).data();
      assertThat(d.readInt()).isEqualTo(BASE_ALLOCATION_ID);
      int n = d.readInt();
      assertThat(n).isEqualTo(3);
      // one hole of 5 GiB: an extent no 32-bit length holds
      assertThat(new long[] {d.readLong(), d.readLong()}).containsExactly(5 * GIB, NBD_STATE_HOLE | NBD_STATE_ZERO);
      assertThat(new long[] {d.readLong(), d.readLong()}).containsExactly(65536, 0);
      assertThat(new long[] {d.readLong(), d.readLong()})
          .containsExactly(SIZE - 5 * GIB - 65536, NBD_STATE_HOLE | NBD_STATE_ZERO);

      // a payload asks for allocation depth alone over the first 5 GiB
      java.nio.ByteBuffer p = java.nio.ByteBuffer.allocate(12).putLong(5 * GIB).putInt(MetaContexts.ALLOCATION_DEPTH_ID);
      c.request(NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, 2, 0, 12, p.array());
      List<Chunk> only = c.reply();
      assertThat(only).hasSize(1);
      DataInputStream o = only.get(0).data();
      assertThat(o.readInt()).isEqualTo(MetaContexts.ALLOCATION_DEPTH_ID);
      assertThat(o.readInt()).isEqualTo(1);
      assertThat(new long[] {o.readLong(), o.readLong()}).containsExactly(5 * GIB, 1);

      // an id not chosen: EINVAL, and the connection goes on
      java.nio.ByteBuffer bad = java.nio.ByteBuffer.allocate(12).putLong(4096).putInt(99);
      c.request(NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, 3, 0, 12, bad.array());
      assertThat(c.reply().get(0).data().readInt()).isEqualTo(NBD_EINVAL);
      c.request(0, NBD_CMD_FLUSH, 4, 0, 0, null);
      assertThat(c.reply()).extracting(Chunk::type).containsExactly(NBD_REPLY_TYPE_NONE);
    }
  }
}
