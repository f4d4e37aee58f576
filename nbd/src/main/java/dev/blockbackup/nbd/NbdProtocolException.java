package dev.blockbackup.nbd;

import io.netty.channel.ChannelHandlerContext;
import io.netty.handler.codec.DecoderException;

/**
 * The peer broke the protocol in a way that leaves no safe way to go on (a bad magic, a flag it
 * must not set): the connection is closed, and only that connection.
 */
final class NbdProtocolException extends DecoderException {

  NbdProtocolException(String message) {
    super(message);
  }

  /**
   * How the handshake and the transmission handlers end a connection on an exception: it is
   * closed either way; a broken protocol or connection is the client's and only logged at debug
   * level, anything else is a bug of ours and goes on to the pipeline's tail, which reports it.
   */
  static void closeOn(ChannelHandlerContext ctx, Throwable thrown, System.Logger log, String phase) {
    ctx.close();
    // a decoder's I/O failure, e.g. SslHandler's on a TLS record it cannot read, is the peer's too
    Throwable cause = thrown instanceof DecoderException && !(thrown instanceof NbdProtocolException)
        && thrown.getCause() instanceof java.io.IOException io ? io : thrown;
    if (cause instanceof NbdProtocolException || cause instanceof java.io.IOException) {
      log.log(System.Logger.Level.DEBUG, () -> ctx.channel() + ": closing" + phase + ": " + cause);
    } else {
      ctx.fireExceptionCaught(cause);
    }
  }
}
