package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.IHAVEOPT;
import static dev.blockbackup.nbd.NbdConstants.MAX_BLOCK_SIZE;
import static dev.blockbackup.nbd.NbdConstants.MAX_OPTION_LENGTH;
import static dev.blockbackup.nbd.NbdConstants.NBD_CMD_FLAG_PAYLOAD_LEN;
import static dev.blockbackup.nbd.NbdConstants.NBD_CMD_WRITE;
import static dev.blockbackup.nbd.NbdConstants.NBD_EXTENDED_REQUEST_MAGIC;
import static dev.blockbackup.nbd.NbdConstants.NBD_REQUEST_MAGIC;

import dev.blockbackup.nbd.NbdMessages.ClientFlags;
import dev.blockbackup.nbd.NbdMessages.OptionRequest;
import dev.blockbackup.nbd.NbdMessages.Request;
import io.netty.buffer.ByteBuf;
import io.netty.channel.ChannelHandlerContext;
import io.netty.handler.codec.ByteToMessageDecoder;
import java.util.List;

/**
 * Frames the client's bytes into {@link ClientFlags}, {@link OptionRequest}s and, once the
 * handshake handler has {@link #enterTransmission() switched} it, {@link Request}s. It never holds
 * more than one frame: an option payload over {@link NbdConstants#MAX_OPTION_LENGTH} and a write
 * payload over {@link NbdConstants#MAX_BLOCK_SIZE} are skipped as they arrive, not buffered, so a
 * hostile length costs time, never memory. A bad magic throws {@link NbdProtocolException}.
 */
final class NbdDecoder extends ByteToMessageDecoder {

  /**
   * An option payload longer than this is not even skipped: the connection is closed (the spec
   * allows either), so a client cannot keep a connection busy discarding 4 GiB.
   */
  static final long MAX_SKIPPED_OPTION = 16 << 20;

  private enum State { CLIENT_FLAGS, OPTION_HEADER, OPTION_DATA, REQUEST_HEADER, WRITE_DATA, SKIP, DEAD }

  private State state = State.CLIENT_FLAGS;
  /** The frame being read, while its payload is awaited or skipped. */
  private int option;
  private long length;
  private int flags;
  private int type;
  private long handle;
  private long offset;
  /** Bytes still to skip, and the state to go to after them. */
  private long toSkip;
  private Object afterSkip;
  private State skipThen;

  /** Requests are 32 bytes with a 64-bit length (NBD_OPT_EXTENDED_HEADERS), not 28 with 32 bits. */
  private boolean extended;

  /**
   * A payload longer than this (of an extended request) is not skipped but ends the connection:
   * 64-bit lengths would let a client keep a connection busy discarding forever.
   */
  static final long MAX_SKIPPED_PAYLOAD = 0xffffffffL;

  /** Called by the handshake handler on a successful NBD_OPT_GO or NBD_OPT_EXPORT_NAME. */
  void enterTransmission(boolean extendedHeaders) {
    extended = extendedHeaders;
    state = State.REQUEST_HEADER;
  }

  /** After NBD_CMD_DISC or NBD_OPT_ABORT: anything more the client sends is dropped. */
  void stop() {
    state = State.DEAD;
  }

  /**
   * Bytes received and not yet framed. After NBD_OPT_STARTTLS this must be 0: anything already
   * here was sent in plaintext and must not be read as if it came over TLS.
   */
  int buffered() {
    return actualReadableBytes();
  }

  @Override
  protected void decode(ChannelHandlerContext ctx, ByteBuf in, List<Object> out) {
    switch (state) {
      case CLIENT_FLAGS -> {
        if (in.readableBytes() >= 4) {
          state = State.OPTION_HEADER;
          out.add(new ClientFlags(in.readInt()));
        }
      }
      case OPTION_HEADER -> {
        if (in.readableBytes() >= 16) {
          long magic = in.readLong();
          if (magic != IHAVEOPT) {
            state = State.DEAD;
            throw new NbdProtocolException("bad option magic 0x" + Long.toHexString(magic));
          }
          option = in.readInt();
          length = in.readUnsignedInt();
          if (length > MAX_SKIPPED_OPTION) {
            state = State.DEAD;
            throw new NbdProtocolException("option payload of " + length + " bytes");
          }
          if (length > MAX_OPTION_LENGTH) {
            skip(length, new OptionRequest(option, length, null), State.OPTION_HEADER);
          } else {
            state = State.OPTION_DATA;
            optionData(in, out); // at once: a payload of 0 bytes waits for no more input
          }
        }
      }
      case OPTION_DATA -> optionData(in, out);
      case REQUEST_HEADER -> {
        if (in.readableBytes() >= (extended ? 32 : 28)) {
          int magic = in.readInt();
          if (magic != (extended ? NBD_EXTENDED_REQUEST_MAGIC : NBD_REQUEST_MAGIC)) {
            state = State.DEAD;
            throw new NbdProtocolException("bad request magic 0x" + Integer.toHexString(magic));
          }
          flags = in.readUnsignedShort();
          type = in.readUnsignedShort();
          handle = in.readLong();
          offset = in.readLong();
          length = extended ? in.readLong() : in.readUnsignedInt();
          // a write's length is its payload's; other commands carry one only with PAYLOAD_LEN
          boolean payload = type == NBD_CMD_WRITE || (extended && (flags & NBD_CMD_FLAG_PAYLOAD_LEN) != 0);
          if (payload && (length < 0 || length > MAX_SKIPPED_PAYLOAD)) {
            state = State.DEAD;
            throw new NbdProtocolException("request payload of " + Long.toUnsignedString(length) + " bytes");
          }
          if (!payload) {
            out.add(new Request(flags, type, handle, offset, length, null));
          } else if (length > (type == NBD_CMD_WRITE ? MAX_BLOCK_SIZE : MAX_OPTION_LENGTH)) {
            // too long to buffer: drop the payload as it comes, then let the handler answer EINVAL
            skip(length, new Request(flags, type, handle, offset, length, null), State.REQUEST_HEADER);
          } else {
            state = State.WRITE_DATA;
            writeData(in, out);
          }
        }
      }
      case WRITE_DATA -> writeData(in, out);
      case SKIP -> {
        int n = (int) Math.min(toSkip, in.readableBytes());
        in.skipBytes(n);
        toSkip -= n;
        if (toSkip == 0) {
          state = skipThen;
          out.add(afterSkip);
          afterSkip = null;
        }
      }
      case DEAD -> in.skipBytes(in.readableBytes());
    }
  }

  private void optionData(ByteBuf in, List<Object> out) {
    if (in.readableBytes() >= length) {
      byte[] data = new byte[(int) length];
      in.readBytes(data);
      state = State.OPTION_HEADER;
      out.add(new OptionRequest(option, length, data));
    }
  }

  private void writeData(ByteBuf in, List<Object> out) {
    if (in.readableBytes() >= length) {
      state = State.REQUEST_HEADER;
      out.add(new Request(flags, type, handle, offset, length, in.readRetainedSlice((int) length)));
    }
  }

  private void skip(long bytes, Object then, State next) {
    toSkip = bytes;
    afterSkip = then;
    skipThen = next;
    state = State.SKIP;
  }

  @Override
  protected void decodeLast(ChannelHandlerContext ctx, ByteBuf in, List<Object> out) {
    // a frame cut short by the client's close is dropped with the connection
    in.skipBytes(in.readableBytes());
  }
}
