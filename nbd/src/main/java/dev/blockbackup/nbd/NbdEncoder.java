package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.IHAVEOPT;
import static dev.blockbackup.nbd.NbdConstants.NBDMAGIC;
import static dev.blockbackup.nbd.NbdConstants.NBD_REPLY_FLAG_DONE;
import static dev.blockbackup.nbd.NbdConstants.NBD_REPLY_TYPE_BLOCK_STATUS;
import static dev.blockbackup.nbd.NbdConstants.NBD_REPLY_TYPE_ERROR;
import static dev.blockbackup.nbd.NbdConstants.NBD_REPLY_TYPE_NONE;
import static dev.blockbackup.nbd.NbdConstants.NBD_REPLY_TYPE_OFFSET_DATA;
import static dev.blockbackup.nbd.NbdConstants.NBD_REPLY_TYPE_OFFSET_HOLE;
import static dev.blockbackup.nbd.NbdConstants.NBD_REP_MAGIC;
import static dev.blockbackup.nbd.NbdConstants.NBD_SIMPLE_REPLY_MAGIC;
import static dev.blockbackup.nbd.NbdConstants.NBD_STRUCTURED_REPLY_MAGIC;

import dev.blockbackup.nbd.NbdMessages.BlockStatusChunk;
import dev.blockbackup.nbd.NbdMessages.Chunks;
import dev.blockbackup.nbd.NbdMessages.ErrorChunk;
import dev.blockbackup.nbd.NbdMessages.ExportNameReply;
import dev.blockbackup.nbd.NbdMessages.Greeting;
import dev.blockbackup.nbd.NbdMessages.HoleChunk;
import dev.blockbackup.nbd.NbdMessages.NoneChunk;
import dev.blockbackup.nbd.NbdMessages.OptionReply;
import dev.blockbackup.nbd.NbdMessages.ReadChunk;
import dev.blockbackup.nbd.NbdMessages.SimpleReply;
import io.netty.buffer.ByteBuf;
import io.netty.channel.ChannelHandler.Sharable;
import io.netty.channel.ChannelHandlerContext;
import io.netty.handler.codec.MessageToMessageEncoder;
import java.nio.ByteBuffer;
import java.nio.CharBuffer;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.List;

/**
 * Writes the server's messages in wire format. A reply with data goes out as its header and the
 * data buffer itself (no copy), both added in one write so no other reply can come between them.
 */
@Sharable
final class NbdEncoder extends MessageToMessageEncoder<Object> {

  static final NbdEncoder INSTANCE = new NbdEncoder();

  /** The longest error message sent in an NBD_REPLY_TYPE_ERROR chunk (the spec's 4096-byte string limit). */
  private static final int MAX_MESSAGE = 4096;

  @Override
  public boolean acceptOutboundMessage(Object msg) {
    return msg instanceof Greeting || msg instanceof ExportNameReply || msg instanceof OptionReply
        || msg instanceof SimpleReply || msg instanceof ReadChunk || msg instanceof NoneChunk
        || msg instanceof ErrorChunk || msg instanceof BlockStatusChunk || msg instanceof HoleChunk
        || msg instanceof Chunks;
  }

  @Override
  protected void encode(ChannelHandlerContext ctx, Object msg, List<Object> out) {
    if (msg instanceof Chunks c) {
      for (Object part : c.parts) {
        encode(ctx, part, out); // the parts' buffers are retained into out; Chunks releases its own
      }
    } else if (msg instanceof SimpleReply r) {
      ByteBuf h = ctx.alloc().buffer(16);
      h.writeInt(NBD_SIMPLE_REPLY_MAGIC).writeInt(r.error).writeLong(r.handle);
      out.add(h);
      if (r.content().isReadable()) {
        out.add(r.content().retain());
      }
    } else if (msg instanceof ReadChunk r) {
      ByteBuf h = ctx.alloc().buffer(28);
      structuredHeader(h, r.handle, NBD_REPLY_TYPE_OFFSET_DATA, 8 + r.content().readableBytes(), r.done);
      h.writeLong(r.offset);
      out.add(h);
      out.add(r.content().retain());
    } else if (msg instanceof HoleChunk r) {
      ByteBuf h = ctx.alloc().buffer(32);
      structuredHeader(h, r.handle(), NBD_REPLY_TYPE_OFFSET_HOLE, 12, r.done());
      h.writeLong(r.offset()).writeInt((int) r.length());
      out.add(h);
    } else if (msg instanceof BlockStatusChunk r) {
      int n = r.lengths().length;
      ByteBuf h = ctx.alloc().buffer(24 + 8 * n);
      structuredHeader(h, r.handle(), NBD_REPLY_TYPE_BLOCK_STATUS, 4 + 8 * n, r.done());
      h.writeInt(r.contextId());
      for (int i = 0; i < n; i++) {
        h.writeInt((int) r.lengths()[i]).writeInt(r.flags()[i]);
      }
      out.add(h);
    } else if (msg instanceof ErrorChunk r) {
      byte[] m = utf8Prefix(r.message(), MAX_MESSAGE);
      ByteBuf h = ctx.alloc().buffer(26 + m.length);
      structuredHeader(h, r.handle(), NBD_REPLY_TYPE_ERROR, 6 + m.length, true);
      h.writeInt(r.error()).writeShort(m.length).writeBytes(m);
      out.add(h);
    } else if (msg instanceof NoneChunk r) {
      ByteBuf h = ctx.alloc().buffer(20);
      structuredHeader(h, r.handle(), NBD_REPLY_TYPE_NONE, 0, true);
      out.add(h);
    } else if (msg instanceof OptionReply r) {
      ByteBuf h = ctx.alloc().buffer(20 + r.data().length);
      h.writeLong(NBD_REP_MAGIC).writeInt(r.option()).writeInt(r.type()).writeInt(r.data().length).writeBytes(r.data());
      out.add(h);
    } else if (msg instanceof Greeting g) {
      ByteBuf h = ctx.alloc().buffer(18);
      h.writeLong(NBDMAGIC).writeLong(IHAVEOPT).writeShort(g.handshakeFlags());
      out.add(h);
    } else if (msg instanceof ExportNameReply r) {
      ByteBuf h = ctx.alloc().buffer(134);
      h.writeLong(r.size()).writeShort(r.transmissionFlags());
      if (!r.noZeroes()) {
        h.writeZero(124);
      }
      out.add(h);
    }
  }

  private static void structuredHeader(ByteBuf h, long handle, int type, int length, boolean done) {
    h.writeInt(NBD_STRUCTURED_REPLY_MAGIC).writeShort(done ? NBD_REPLY_FLAG_DONE : 0).writeShort(type).writeLong(handle)
        .writeInt(length);
  }

  /** {@code s} in UTF-8, cut at a character boundary to at most {@code max} bytes. */
  static byte[] utf8Prefix(String s, int max) {
    ByteBuffer out = ByteBuffer.allocate(max);
    // the encoder stops before a character that does not fit whole, so the prefix stays valid UTF-8
    StandardCharsets.UTF_8.newEncoder()
        .onMalformedInput(CodingErrorAction.REPLACE)
        .onUnmappableCharacter(CodingErrorAction.REPLACE)
        .encode(CharBuffer.wrap(s == null ? "" : s), out, true);
    return Arrays.copyOf(out.array(), out.position());
  }
}
