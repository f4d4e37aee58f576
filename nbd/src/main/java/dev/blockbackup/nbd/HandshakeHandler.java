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
import io.netty.handler.ssl.SslHandler;
import io.netty.handler.ssl.SslHandshakeCompletionEvent;
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
  /** NBD_OPT_EXTENDED_HEADERS was negotiated: 64-bit requests and reply headers (and structured replies). */
  private boolean extendedHeaders;
  /** What the last NBD_OPT_SET_META_CONTEXT chose, or null if it chose nothing. */
  private MetaContexts contexts;
  /** NBD_OPT_STARTTLS was answered and the SslHandler is (or is about to be) in the pipeline. */
  private boolean tlsStarted;
  /** Between the STARTTLS ACK and the SslHandler's insertion: no option may arrive then. */
  private boolean tlsPending;
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
    if (tlsPending) {
      close(ctx, "plaintext sent before the TLS handshake it asked for");
      return;
    }
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
    if (settings.tls() != null && !tlsStarted) {
      beforeTls(ctx, o);
      return;
    }
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
      case NBD_OPT_STARTTLS -> {
        if (settings.tls() == null) {
          error(ctx, opt, NBD_REP_ERR_UNSUP, "TLS is not supported by this server");
        } else {
          // as QEMU's nbd_negotiate_options once TLS is up: the client may go on over TLS
          error(ctx, opt, NBD_REP_ERR_INVALID, "TLS already enabled");
        }
      }
      case NBD_OPT_INFO, NBD_OPT_GO -> infoOrGo(ctx, opt, data);
      case NBD_OPT_STRUCTURED_REPLY -> {
        if (data.length != 0) {
          error(ctx, opt, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
        } else if (extendedHeaders) {
          error(ctx, opt, NBD_REP_ERR_EXT_HEADER_REQD, "extended headers already negotiated");
        } else if (structuredReplies) {
          // as QEMU: a second request is a client bug, and saying so beats a silent second ACK
          error(ctx, opt, NBD_REP_ERR_INVALID, "structured reply already negotiated");
        } else {
          structuredReplies = true;
          ctx.writeAndFlush(new OptionReply(opt, NBD_REP_ACK));
        }
      }
      case NBD_OPT_EXTENDED_HEADERS -> {
        if (data.length != 0) {
          error(ctx, opt, NBD_REP_ERR_INVALID, "NBD_OPT_EXTENDED_HEADERS takes no data");
        } else if (extendedHeaders) {
          error(ctx, opt, NBD_REP_ERR_INVALID, "extended headers already negotiated");
        } else {
          // extended headers imply structured replies; contexts chosen before stay chosen (as QEMU)
          extendedHeaders = true;
          structuredReplies = true;
          ctx.writeAndFlush(new OptionReply(opt, NBD_REP_ACK));
        }
      }
      case NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT -> metaContext(ctx, opt, data);
      default -> error(ctx, opt, NBD_REP_ERR_UNSUP, optionName(opt) + " is not supported");
    }
  }

  /**
   * The options of a server that requires TLS before NBD_OPT_STARTTLS, as QEMU's
   * nbd_negotiate_options answers them with tls-creds: only STARTTLS and ABORT do anything.
   */
  private void beforeTls(ChannelHandlerContext ctx, OptionRequest o) {
    int opt = o.option();
    switch (opt) {
      case NBD_OPT_STARTTLS -> {
        if (o.length() != 0) {
          // QEMU drops such a client too: one that cannot even start TLS right gets no second try
          error(ctx, opt, NBD_REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data");
          close(ctx, "NBD_OPT_STARTTLS with " + o.length() + " bytes of data");
        } else {
          startTls(ctx);
        }
      }
      // no error reply exists for it, so the connection is closed, as QEMU does
      case NBD_OPT_EXPORT_NAME -> close(ctx, "NBD_OPT_EXPORT_NAME before TLS");
      // proto.md's FORCEDTLS exempts ABORT from TLS_REQD (QEMU answers TLS_REQD, then closes alike)
      case NBD_OPT_ABORT -> {
        ctx.pipeline().get(NbdDecoder.class).stop();
        ctx.writeAndFlush(new OptionReply(opt, NBD_REP_ACK)).addListener(ChannelFutureListener.CLOSE);
      }
      default -> error(ctx, opt, NBD_REP_ERR_TLS_REQD,
          optionName(opt) + " not permitted before TLS: this server requires NBD_OPT_STARTTLS");
    }
  }

  /**
   * Answers NBD_OPT_STARTTLS and puts the TLS layer under everything else. The ACK goes out in
   * plaintext, so the SslHandler is added only once it has been written; the client sends its
   * ClientHello only after reading it. Anything the client sent after STARTTLS and before the
   * handshake is plaintext it had no right to send, and is never read as if it came over TLS.
   * proto.md forbids keeping per-export state from before STARTTLS; there is none, as every
   * option before it was refused.
   */
  private void startTls(ChannelHandlerContext ctx) {
    if (ctx.pipeline().get(NbdDecoder.class).buffered() > 0) {
      close(ctx, "plaintext sent after NBD_OPT_STARTTLS, before the TLS handshake");
      return;
    }
    tlsStarted = true;
    tlsPending = true;
    ctx.writeAndFlush(new OptionReply(NBD_OPT_STARTTLS, NBD_REP_ACK)).addListener(f -> {
      if (!f.isSuccess()) {
        ctx.close();
        return;
      }
      SslHandler ssl = settings.tls().newHandler(ctx.alloc());
      ctx.pipeline().addFirst("tls", ssl);
      tlsPending = false;
    });
  }

  @Override
  public void userEventTriggered(ChannelHandlerContext ctx, Object evt) {
    if (evt instanceof SslHandshakeCompletionEvent e && !e.isSuccess()) {
      // a client's failure (no certificate, one of another CA, no common protocol): one line, no trace
      LOG.log(System.Logger.Level.INFO, () -> ctx.channel() + ": TLS handshake failed, closing: " + e.cause());
      ctx.close();
      return;
    }
    ctx.fireUserEventTriggered(evt);
  }

  private void exportName(ChannelHandlerContext ctx, byte[] data) {
    if (extendedHeaders) {
      // the spec: a client that negotiated extended headers uses NBD_OPT_GO; as QEMU, one that
      // does not gets the connection closed (the old option has no way to say so)
      close(ctx, "NBD_OPT_EXPORT_NAME after NBD_OPT_EXTENDED_HEADERS");
      return;
    }
    String name = utf8(data, 0, data.length);
    NbdExport export = name == null ? null : settings.find(name);
    if (export == null) {
      // the spec: no error reply exists for NBD_OPT_EXPORT_NAME; the server MUST close
      close(ctx, "unknown export '" + shown(name) + "' asked by NBD_OPT_EXPORT_NAME");
      return;
    }
    ctx.write(new ExportNameReply(export.device().size(), transmissionFlags(export), noZeroes));
    enterTransmission(ctx, export, null);
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
    if (nameLength > NbdExport.MAX_STRING) {
      // no export has such a name, and the spec caps strings there (QEMU: "Invalid name length")
      error(ctx, opt, NBD_REP_ERR_INVALID, optionName(opt) + " name length " + nameLength + " is over "
          + NbdExport.MAX_STRING);
      return;
    }
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
    enterTransmission(ctx, export, contexts != null && contexts.export() == export ? contexts : null);
  }

  private void metaContext(ChannelHandlerContext ctx, int opt, byte[] data) {
    boolean list = opt == NBD_OPT_LIST_META_CONTEXT;
    if (!list && !structuredReplies) {
      // listing is harmless without structured replies (QEMU allows it); selecting is not
      error(ctx, opt, NBD_REP_ERR_INVALID, optionName(opt) + " needs NBD_OPT_STRUCTURED_REPLY first");
      return;
    }
    if (!list) {
      contexts = null; // a SET replaces the earlier choice, even when it fails
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
      if (in.readableBytes() >= 4 && in.getUnsignedInt(in.readerIndex()) > NbdExport.MAX_STRING
          && in.getUnsignedInt(in.readerIndex()) <= in.readableBytes() - 4) {
        in.skipBytes(4 + (int) in.readUnsignedInt()); // over the spec's limit: names nothing we have (QEMU skips it too)
        continue;
      }
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
    NbdExport export = settings.find(name);
    if (export == null) {
      error(ctx, opt, NBD_REP_ERR_UNKNOWN, "export '" + shown(name) + "' not present");
      return;
    }
    MetaContexts matched = MetaContexts.match(export, queries, list);
    for (MetaContexts.Context c : matched.chosen()) {
      byte[] n = c.name().getBytes(StandardCharsets.UTF_8);
      ByteBuf b = Unpooled.buffer(4 + n.length);
      b.writeInt(list ? 0 : c.id()).writeBytes(n); // LIST's ids mean nothing: the spec says send 0
      ctx.write(new OptionReply(opt, NBD_REP_META_CONTEXT, b.array()));
    }
    if (!list) {
      contexts = matched.count() > 0 ? matched : null;
    }
    ctx.writeAndFlush(new OptionReply(opt, NBD_REP_ACK));
  }

  private void enterTransmission(ChannelHandlerContext ctx, NbdExport export, MetaContexts chosen) {
    cancelHandshakeTimer();
    ctx.flush();
    ctx.pipeline().get(NbdDecoder.class).enterTransmission(extendedHeaders);
    ctx.pipeline().replace(this, "transmission",
        new TransmissionHandler(export, structuredReplies, extendedHeaders, chosen, settings));
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
      f |= NBD_FLAG_SEND_DF; // a DF read is answered in one chunk
    }
    if (extendedHeaders && contexts != null && contexts.export() == export) {
      // block status may name its contexts in a payload (MetaContexts.filtered), as QEMU offers it
      f |= NBD_FLAG_BLOCK_STAT_PAYLOAD;
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
