package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.*;

import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.embedded.EmbeddedChannel;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executor;

/** A client's side of the wire for tests: builds what a client sends and reads what the server answers. */
final class Wire {

  private Wire() {}

  static ByteBuf clientFlags(int flags) {
    return Unpooled.buffer(4).writeInt(flags);
  }

  static ByteBuf option(int opt, byte[] data) {
    return Unpooled.buffer(16 + data.length).writeLong(IHAVEOPT).writeInt(opt).writeInt(data.length).writeBytes(data);
  }

  /** The data of NBD_OPT_GO / NBD_OPT_INFO: name and information requests. */
  static byte[] goData(String name, int... infos) {
    byte[] n = name.getBytes(StandardCharsets.UTF_8);
    ByteBuf b = Unpooled.buffer().writeInt(n.length).writeBytes(n).writeShort(infos.length);
    for (int i : infos) {
      b.writeShort(i);
    }
    return bytes(b);
  }

  /** The data of NBD_OPT_LIST/SET_META_CONTEXT: export name and queries. */
  static byte[] metaData(String name, String... queries) {
    byte[] n = name.getBytes(StandardCharsets.UTF_8);
    ByteBuf b = Unpooled.buffer().writeInt(n.length).writeBytes(n).writeInt(queries.length);
    for (String q : queries) {
      byte[] qb = q.getBytes(StandardCharsets.UTF_8);
      b.writeInt(qb.length).writeBytes(qb);
    }
    return bytes(b);
  }

  static ByteBuf request(int flags, int type, long handle, long offset, long length, byte[] payload) {
    ByteBuf b = Unpooled.buffer(28 + (payload == null ? 0 : payload.length));
    b.writeInt(NBD_REQUEST_MAGIC).writeShort(flags).writeShort(type).writeLong(handle).writeLong(offset)
        .writeInt((int) length);
    if (payload != null) {
      b.writeBytes(payload);
    }
    return b;
  }

  static byte[] bytes(ByteBuf b) {
    byte[] out = new byte[b.readableBytes()];
    b.readBytes(out);
    b.release();
    return out;
  }

  /** An EmbeddedChannel with the server's pipeline; block I/O runs on {@code workers}. */
  static EmbeddedChannel channel(ConnectionSettings settings) {
    NbdDecoder decoder = new NbdDecoder();
    return new EmbeddedChannel(decoder, decoder.resumer(), NbdEncoder.INSTANCE, new HandshakeHandler(settings));
  }

  static ConnectionSettings settings(Executor workers, NbdExport... exports) {
    return settings(new WorkQueue(workers, 1024), exports);
  }

  /** Settings whose block I/O goes through {@code queue}, which connections sharing it fill together. */
  static ConnectionSettings settings(WorkQueue queue, NbdExport... exports) {
    java.util.Map<String, NbdExport> m = new java.util.LinkedHashMap<>();
    for (NbdExport e : exports) {
      m.put(e.name(), e);
    }
    return new ConnectionSettings(m, queue, 32);
  }

  /** Everything the server has written so far, as one buffer (runs pending event-loop tasks first). */
  static ByteBuf out(EmbeddedChannel ch) {
    ch.runPendingTasks();
    ByteBuf all = Unpooled.buffer();
    for (Object o; (o = ch.readOutbound()) != null; ) {
      ByteBuf b = (ByteBuf) o;
      all.writeBytes(b);
      b.release();
    }
    return all;
  }

  /** One option reply read from {@code b}. */
  record OptReply(int option, int type, byte[] data) {
    String text() {
      return new String(data, StandardCharsets.UTF_8);
    }
  }

  static OptReply optReply(ByteBuf b) {
    long magic = b.readLong();
    if (magic != NBD_REP_MAGIC) {
      throw new AssertionError("bad option reply magic 0x" + Long.toHexString(magic));
    }
    int opt = b.readInt();
    int type = b.readInt();
    byte[] data = new byte[b.readInt()];
    b.readBytes(data);
    return new OptReply(opt, type, data);
  }

  /** A simple or structured reply header and payload. */
  record Reply(boolean structured, long handle, int error, int flags, int type, byte[] payload) {}

  static Reply reply(ByteBuf b) {
    int magic = b.readInt();
    if (magic == NBD_SIMPLE_REPLY_MAGIC) {
      int error = b.readInt();
      return new Reply(false, b.readLong(), error, 0, 0, new byte[0]);
    }
    if (magic != NBD_STRUCTURED_REPLY_MAGIC) {
      throw new AssertionError("bad reply magic 0x" + Integer.toHexString(magic));
    }
    int flags = b.readUnsignedShort();
    int type = b.readUnsignedShort();
    long handle = b.readLong();
    byte[] payload = new byte[b.readInt()];
    b.readBytes(payload);
    int error = 0;
    if ((type & (1 << 15)) != 0) {
      error = Unpooled.wrappedBuffer(payload).readInt();
    }
    return new Reply(true, handle, error, flags, type, payload);
  }

  /**
   * A client over a real TCP socket, driven by hand: it reads the greeting and sends the client
   * flags, then the test sends options and requests as it likes, well-formed or not. Reads time
   * out after 20 s, so a server that neither answers nor closes fails the test instead of hanging it.
   */
  static final class Client implements AutoCloseable {
    /** Blocking while {@link #in} and {@link #out} are used; a test may switch it to non-blocking for a flood. */
    final SocketChannel ch;
    final Socket s;
    final DataInputStream in;
    final DataOutputStream out;

    /** Connected, greeted, client flags sent (fixed newstyle, no zeroes). */
    Client(NbdServer server) throws IOException {
      this(server.tcpAddress());
      greeting();
      out.writeInt(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    }

    /** Connected only: nothing read, nothing sent. */
    Client(InetSocketAddress address) throws IOException {
      ch = SocketChannel.open(address);
      s = ch.socket();
      s.setSoTimeout(20_000);
      s.setTcpNoDelay(true);
      in = new DataInputStream(s.getInputStream());
      // buffered: a request goes out in one segment when flushed, not field by field behind Nagle
      out = new DataOutputStream(new java.io.BufferedOutputStream(s.getOutputStream(), 1 << 16));
    }

    /** Reads the server's greeting; returns its handshake flags. */
    int greeting() throws IOException {
      if (in.readLong() != NBDMAGIC || in.readLong() != IHAVEOPT) {
        throw new AssertionError("not an NBD fixed-newstyle greeting");
      }
      return in.readUnsignedShort();
    }

    /** Sends an option with {@code data} (flushed). */
    Client option(int opt, byte[] data) throws IOException {
      out.writeLong(IHAVEOPT);
      out.writeInt(opt);
      out.writeInt(data.length);
      out.write(data);
      out.flush();
      return this;
    }

    /** Reads one option reply. */
    OptReply optReply() throws IOException {
      long magic = in.readLong();
      if (magic != NBD_REP_MAGIC) {
        throw new AssertionError("bad option reply magic 0x" + Long.toHexString(magic));
      }
      int opt = in.readInt();
      int type = in.readInt();
      byte[] data = new byte[in.readInt()];
      in.readFully(data);
      return new OptReply(opt, type, data);
    }

    /** NBD_OPT_GO to {@code export} (simple replies), reading the replies up to the ACK. */
    Client go(String export) throws IOException {
      option(NBD_OPT_GO, goData(export));
      while (true) {
        OptReply r = optReply();
        if (r.type() == NBD_REP_ACK) {
          return this;
        }
        if (r.type() != NBD_REP_INFO) {
          throw new AssertionError("NBD_OPT_GO answered " + r.type() + ": " + r.text());
        }
      }
    }

    /**
     * NBD_OPT_STRUCTURED_REPLY, then, if {@code baseAllocation}, NBD_OPT_SET_META_CONTEXT of
     * base:allocation, then NBD_OPT_GO.
     */
    Client goStructured(String export, boolean baseAllocation) throws IOException {
      option(NBD_OPT_STRUCTURED_REPLY, new byte[0]);
      expect(optReply(), NBD_REP_ACK);
      if (baseAllocation) {
        option(NBD_OPT_SET_META_CONTEXT, metaData(export, BASE_ALLOCATION));
        expect(optReply(), NBD_REP_META_CONTEXT);
        expect(optReply(), NBD_REP_ACK);
      }
      return go(export);
    }

    private static void expect(OptReply r, int type) {
      if (r.type() != type) {
        throw new AssertionError("option " + r.option() + " answered " + r.type() + ", expected " + type);
      }
    }

    /** Reads one simple reply header (no payload) or structured reply chunk (with its payload). */
    Reply anyReply() throws IOException {
      out.flush();
      int magic = in.readInt();
      ByteBuf b = Unpooled.buffer().writeInt(magic);
      if (magic == NBD_SIMPLE_REPLY_MAGIC) {
        b.writeBytes(in.readNBytes(12));
      } else {
        byte[] head = in.readNBytes(16);
        b.writeBytes(head).writeBytes(in.readNBytes(Unpooled.wrappedBuffer(head).getInt(12)));
      }
      return Wire.reply(b);
    }

    void request(int type, long handle, long offset, long length) throws IOException {
      request(0, type, handle, offset, length);
    }

    /** Sends a request header (buffered; {@link #reply} and {@link #closedByServer} flush). */
    void request(int flags, int type, long handle, long offset, long length) throws IOException {
      out.writeInt(NBD_REQUEST_MAGIC);
      out.writeShort(flags);
      out.writeShort(type);
      out.writeLong(handle);
      out.writeLong(offset);
      out.writeInt((int) length);
    }

    /** Reads a simple reply's header; returns its error. */
    int reply(long handle) throws IOException {
      out.flush();
      int magic = in.readInt();
      if (magic != NBD_SIMPLE_REPLY_MAGIC) {
        throw new AssertionError("bad simple reply magic 0x" + Integer.toHexString(magic));
      }
      int error = in.readInt();
      long h = in.readLong();
      if (h != handle) {
        throw new AssertionError("reply to handle " + h + ", expected " + handle);
      }
      return error;
    }

    /** Writes {@code data} at {@code offset}, reads it back, and returns what was read. */
    byte[] writeAndRead(long handle, long offset, byte[] data) throws IOException {
      request(NBD_CMD_WRITE, handle, offset, data.length);
      out.write(data);
      if (reply(handle) != 0) {
        throw new AssertionError("write failed");
      }
      request(NBD_CMD_READ, handle + 1, offset, data.length);
      if (reply(handle + 1) != 0) {
        throw new AssertionError("read failed");
      }
      return in.readNBytes(data.length);
    }

    /**
     * Whether the server closes this connection: reads (and drops) whatever it still sends until
     * end of stream or a reset; false if it sends nothing and keeps the connection for 20 s.
     */
    boolean closedByServer() {
      try {
        out.flush();
        byte[] b = new byte[8192];
        while (in.read(b) >= 0) {
          // replies sent before the close
        }
        return true;
      } catch (SocketTimeoutException e) {
        return false;
      } catch (IOException e) {
        return true;
      }
    }

    @Override
    public void close() throws IOException {
      s.close();
    }
  }
}
