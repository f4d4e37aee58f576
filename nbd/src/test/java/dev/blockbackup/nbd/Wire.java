package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.*;

import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.embedded.EmbeddedChannel;
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
    return new EmbeddedChannel(new NbdDecoder(), NbdEncoder.INSTANCE, new HandshakeHandler(settings));
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
}
