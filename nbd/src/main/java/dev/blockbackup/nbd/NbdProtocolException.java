package dev.blockbackup.nbd;

import io.netty.handler.codec.DecoderException;

/**
 * The peer broke the protocol in a way that leaves no safe way to go on (a bad magic, a flag it
 * must not set): the connection is closed, and only that connection.
 */
final class NbdProtocolException extends DecoderException {

  NbdProtocolException(String message) {
    super(message);
  }
}
