package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.*;

import dev.blockbackup.nbd.NbdMessages.ClientFlags;
import dev.blockbackup.nbd.NbdMessages.ExportNameReply;
import dev.blockbackup.nbd.NbdMessages.Greeting;
import dev.blockbackup.nbd.NbdMessages.OptionReply;
import dev.blockbackup.nbd.NbdMessages.OptionRequest;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.ChannelFutureListener;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.SimpleChannelInboundHandler;
import io.netty.util.concurrent.ScheduledFuture;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * The fixed-newstyle handshake of one connection, as a state machine over the decoded client
 * flags and options. It greets, answers each option, and on a successful NBD_OPT_GO or
 * NBD_OPT_EXPORT_NAME hands the connection to a {@link TransmissionHandler}. Options are cheap
 * (no block I/O but size), so they are answered on the event loop.
 */
final class HandshakeHandler extends SimpleChannelInboundHandler<Object> {

  private static final System.Logger LOG = System.getLogger(HandshakeHandler.class.getName());
  private static final int KNOWN_CLIENT_FLAGS = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

  /** The bytes of a client's name quoted in an error message; the rest is left out. */
  static final int MAX_SHOWN_NAME = 256;

  private final ConnectionSettings settings;
  private boolean noZeroes;
  private boolean structuredReplies;
  /** The export the last NBD_OPT_SET_META_CONTEXT was for, or null if it selected nothing. */
  private String metaContextExport;
  /** Closes the connection when the handshake outlasts handshake-max-seconds; null without a limit. */
  private ScheduledFuture<?> handshakeTimer;

  HandshakeHandler(ConnectionSettings settings) {
    this.settings = settings;
  }

  @Override
  public void channelActive(ChannelHandlerContext ctx) {
    int limit = settings.handshakeMaxSeconds();
    if (limit > 0) {
      // counted from connect, whatever the client sends meanwhile: a slow trickle of options must not keep it alive
      handshakeTimer = ctx.executor().schedule(
          () -> close(ctx, "the handshake took over " + limit + " s (handshake-max-seconds)"), limit, TimeUnit.SECONDS);
    }
    ctx.writeAndFlush(new Greeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
    ctx.fireChannelActive();
  }

  @Override
  public void channelInactive(ChannelHandlerContext ctx) throws Exception {
    cancelHandshakeTimer();
    super.channelInactive(ctx);
  }

  private void cancelHandshakeTimer() {
    if (handshakeTimer != null) {
      handshakeTimer.cancel(false);
      handshakeTimer = null;
    }
  }

  @Override
  protected void channelRead0(ChannelHandlerContext ctx, Object msg) {
    if (msg instanceof ClientFlags f) {
      if ((f.flags() & ~KNOWN_CLIENT_FLAGS) != 0) {
        // the spec: the server MUST drop the connection on an unknown client flag
        close(ctx, "unknown client flags 0x" + Integer.toHexString(f.flags()));
        return;
      }
      noZeroes = (f.flags() & NBD_FLAG_C_NO_ZEROES) != 0;
    } else if (msg instanceof OptionRequest o) {
      option(ctx, o);
    }
  }

  private void option(ChannelHandlerContext ctx, OptionRequest o) {
    int opt = o.option();
    if (o.tooBig()) {
      if (opt == NBD_OPT_EXPORT_NAME) {
        close(ctx, "NBD_OPT_EXPORT_NAME of " + o.length() + " bytes");
      } else {
        error(ctx, opt, NBD_REP_ERR_TOO_BIG,
            optionName(opt) + " payload of " + o.length() + " bytes exceeds the limit of " + MAX_OPTION_LENGTH);
      }
      return;
    }
    byte[] data = o.data();
    switch (opt) {
      case NBD_OPT_EXPORT_NAME -> exportName(ctx, data);
      case NBD_OPT_ABORT -> {
        ctx.pipeline().get(NbdDecoder.class).stop();
        ctx.writeAndFlush(new OptionReply(opt, NBD_REP_ACK)).addListener(ChannelFutureListener.CLOSE);
      }
      case NBD_OPT_LIST -> list(ctx, data);
      case NBD_OPT_STARTTLS -> error(ctx, opt, NBD_REP_ERR_UNSUP, "TLS is not supported by this server");
      case NBD_OPT_INFO, NBD_OPT_GO -> infoOrGo(ctx, opt, data);
      case NBD_OPT_STRUCTURED_REPLY -> {
        if (data.length != 0) {
          error(ctx, opt, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
        } else {
          structuredReplies = true;
          ctx.writeAndFlush(new OptionReply(opt, NBD_REP_ACK));
        }
      }
      case NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT -> metaContext(ctx, opt, data);
      default -> error(ctx, opt, NBD_REP_ERR_UNSUP, optionName(opt) + " is not supported");
    }
  }

  private void exportName(ChannelHandlerContext ctx, byte[] data) {
    String name = utf8(data, 0, data.length);
    NbdExport export = name == null ? null : settings.find(name);
    if (export == null) {
      // the spec: no error reply exists for NBD_OPT_EXPORT_NAME; the server MUST close
      close(ctx, "unknown export '" + shown(name) + "' asked by NBD_OPT_EXPORT_NAME");
      return;
    }
    ctx.write(new ExportNameReply(export.device().size(), transmissionFlags(export), noZeroes));
    enterTransmission(ctx, export, false);
  }

  private void list(ChannelHandlerContext ctx, byte[] data) {
    if (data.length != 0) {
      error(ctx, NBD_OPT_LIST, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
      return;
    }
    for (NbdExport e : settings.exports().values()) {
      byte[] name = e.name().getBytes(StandardCharsets.UTF_8);
      byte[] desc = e.description() == null ? new byte[0] : e.description().getBytes(StandardCharsets.UTF_8);
      ByteBuf b = Unpooled.buffer(4 + name.length + desc.length);
      b.writeInt(name.length).writeBytes(name).writeBytes(desc);
      ctx.write(new OptionReply(NBD_OPT_LIST, NBD_REP_SERVER, b.array()));
    }
    ctx.writeAndFlush(new OptionReply(NBD_OPT_LIST, NBD_REP_ACK));
  }

  private void infoOrGo(ChannelHandlerContext ctx, int opt, byte[] data) {
    ByteBuf in = Unpooled.wrappedBuffer(data);
    if (in.readableBytes() < 4) {
      error(ctx, opt, NBD_REP_ERR_INVALID, optionName(opt) + " too short for the name length");
      return;
    }
    long nameLength = in.readUnsignedInt();
    if (nameLength > in.readableBytes() - 2) {
      error(ctx, opt, NBD_REP_ERR_INVALID, optionName(opt) + " name length " + nameLength + " exceeds the data");
      return;
    }
    String name = utf8(data, in.readerIndex(), (int) nameLength);
    in.skipBytes((int) nameLength);
    int requests = in.readUnsignedShort();
    if (in.readableBytes() != 2 * requests) {
      error(ctx, opt, NBD_REP_ERR_INVALID, optionName(opt) + " has " + in.readableBytes()
          + " bytes for " + requests + " information requests");
      return;
    }
    if (name == null) {
      error(ctx, opt, NBD_REP_ERR_INVALID, "export name is not valid UTF-8");
      return;
    }
    List<Integer> wanted = new ArrayList<>();
    for (int i = 0; i < requests; i++) {
      wanted.add(in.readUnsignedShort());
    }
    NbdExport export = settings.find(name);
    if (export == null) {
      error(ctx, opt, NBD_REP_ERR_UNKNOWN, "export '" + shown(name) + "' not present");
      return;
    }
    ByteBuf info = Unpooled.buffer(12);
    info.writeShort(NBD_INFO_EXPORT).writeLong(export.device().size()).writeShort(transmissionFlags(export));
    ctx.write(new OptionReply(opt, NBD_REP_INFO, info.array()));
    if (wanted.contains(NBD_INFO_NAME)) {
      ctx.write(new OptionReply(opt, NBD_REP_INFO, withType(NBD_INFO_NAME, export.name())));
    }
    if (wanted.contains(NBD_INFO_DESCRIPTION) && export.description() != null) {
      ctx.write(new OptionReply(opt, NBD_REP_INFO, withType(NBD_INFO_DESCRIPTION, export.description())));
    }
    // sent whether asked or not, as qemu-nbd does: min 1 puts no alignment duty on the client
    ByteBuf bs = Unpooled.buffer(14);
    bs.writeShort(NBD_INFO_BLOCK_SIZE).writeInt(MIN_BLOCK_SIZE).writeInt(PREFERRED_BLOCK_SIZE).writeInt(MAX_BLOCK_SIZE);
    ctx.write(new OptionReply(opt, NBD_REP_INFO, bs.array()));
    if (opt == NBD_OPT_INFO) {
      ctx.writeAndFlush(new OptionReply(opt, NBD_REP_ACK));
      return;
    }
    ctx.write(new OptionReply(opt, NBD_REP_ACK));
    // contexts chosen for another export do not carry over (the spec ties them to the export name)
    boolean baseAllocation = metaContextExport != null && metaContextExport.equals(name);
    enterTransmission(ctx, export, baseAllocation);
  }

  private void metaContext(ChannelHandlerContext ctx, int opt, byte[] data) {
    if (!structuredReplies) {
      error(ctx, opt, NBD_REP_ERR_INVALID, optionName(opt) + " needs NBD_OPT_STRUCTURED_REPLY first");
      return;
    }
    ByteBuf in = Unpooled.wrappedBuffer(data);
    String name = string(in);
    if (name == null || in.readableBytes() < 4) {
      error(ctx, opt, NBD_REP_ERR_INVALID, optionName(opt) + " has a malformed export name");
      return;
    }
    long count = in.readUnsignedInt();
    List<String> queries = new ArrayList<>();
    for (long i = 0; i < count; i++) {
      String q = string(in);
      if (q == null) {
        error(ctx, opt, NBD_REP_ERR_INVALID, optionName(opt) + " has a malformed query");
        return;
      }
      queries.add(q);
    }
    if (in.isReadable()) {
      error(ctx, opt, NBD_REP_ERR_INVALID, optionName(opt) + " has " + in.readableBytes() + " bytes after its queries");
      return;
    }
    if (settings.find(name) == null) {
      error(ctx, opt, NBD_REP_ERR_UNKNOWN, "export '" + shown(name) + "' not present");
      return;
    }
    boolean list = opt == NBD_OPT_LIST_META_CONTEXT;
    boolean match = list && queries.isEmpty();
    for (String q : queries) {
      // "base:" alone lists every context of the namespace; selecting needs the full name
      match |= q.equals(BASE_ALLOCATION) || (list && q.equals("base:"));
    }
    if (!list) {
      metaContextExport = match ? name : null;
    }
    if (match) {
      byte[] n = BASE_ALLOCATION.getBytes(StandardCharsets.US_ASCII);
      ByteBuf b = Unpooled.buffer(4 + n.length);
      b.writeInt(list ? 0 : BASE_ALLOCATION_ID).writeBytes(n);
      ctx.write(new OptionReply(opt, NBD_REP_META_CONTEXT, b.array()));
    }
    ctx.writeAndFlush(new OptionReply(opt, NBD_REP_ACK));
  }

  private void enterTransmission(ChannelHandlerContext ctx, NbdExport export, boolean baseAllocation) {
    cancelHandshakeTimer();
    ctx.flush();
    ctx.pipeline().get(NbdDecoder.class).enterTransmission();
    ctx.pipeline().replace(this, "transmission",
        new TransmissionHandler(export, structuredReplies, baseAllocation, settings));
  }

  /** The transmission flags of {@code export} for this connection. */
  int transmissionFlags(NbdExport export) {
    int f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE
        // flush goes to the one device every connection shares, so it covers them all
        | NBD_FLAG_CAN_MULTI_CONN;
    if (export.isReadOnly()) {
      f |= NBD_FLAG_READ_ONLY;
    } else {
      // BlockDevice.writeZeroes honours NO_FALLBACK (ENOTSUP rather than writing zeros)
      f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    }
    if (structuredReplies) {
      f |= NBD_FLAG_SEND_DF; // every read is answered in one chunk, so "don't fragment" always holds
    }
    return f;
  }

  private static byte[] withType(int type, String s) {
    byte[] b = s.getBytes(StandardCharsets.UTF_8);
    ByteBuf buf = Unpooled.buffer(2 + b.length);
    buf.writeShort(type).writeBytes(b);
    return buf.array();
  }

  /** A 32-bit length and that many bytes of UTF-8, or null if malformed or over the spec's limit. */
  private static String string(ByteBuf in) {
    if (in.readableBytes() < 4) {
      return null;
    }
    long n = in.readUnsignedInt();
    if (n > in.readableBytes() || n > NbdExport.MAX_STRING) {
      return null;
    }
    String s = utf8(in.array(), in.arrayOffset() + in.readerIndex(), (int) n);
    in.skipBytes((int) n);
    return s;
  }

  /** Strict UTF-8, or null if the bytes are not valid UTF-8. */
  private static String utf8(byte[] b, int off, int len) {
    try {
      return StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
          .onUnmappableCharacter(CodingErrorAction.REPORT).decode(java.nio.ByteBuffer.wrap(b, off, len)).toString();
    } catch (CharacterCodingException e) {
      return null;
    }
  }

  /**
   * An error reply. The spec caps every string at 4096 bytes and a client may drop a connection
   * that sends more, so the message is cut there (at a character boundary) whatever it embeds.
   */
  private static void error(ChannelHandlerContext ctx, int opt, int type, String message) {
    ctx.writeAndFlush(new OptionReply(opt, type, NbdEncoder.utf8Prefix(message, NbdExport.MAX_STRING)));
  }

  /** A client's name as quoted in a message: whole if short, else its start and an ellipsis. */
  static String shown(String name) {
    byte[] b = NbdEncoder.utf8Prefix(name, MAX_SHOWN_NAME);
    String head = new String(b, StandardCharsets.UTF_8);
    return head.length() == name.length() ? name : head + "...";
  }

  private static void close(ChannelHandlerContext ctx, String why) {
    LOG.log(System.Logger.Level.DEBUG, () -> ctx.channel() + ": closing during the handshake: " + why);
    ctx.pipeline().get(NbdDecoder.class).stop();
    ctx.writeAndFlush(Unpooled.EMPTY_BUFFER).addListener(ChannelFutureListener.CLOSE);
  }

  @Override
  public void exceptionCaught(ChannelHandlerContext ctx, Throwable cause) {
    NbdProtocolException.closeOn(ctx, cause, LOG, " during the handshake");
  }
}
