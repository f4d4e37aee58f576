package dev.blockbackup.nbd;

import io.netty.buffer.ByteBuf;
import io.netty.buffer.DefaultByteBufHolder;
import io.netty.buffer.Unpooled;
import io.netty.util.AbstractReferenceCounted;
import io.netty.util.ReferenceCountUtil;
import io.netty.util.ReferenceCounted;
import java.util.List;

/** The records the decoder makes of the client's bytes and the replies the encoder writes. */
final class NbdMessages {

  private NbdMessages() {}

  // ---------------------------------------------------------------- from the client

  /** The 32 bits of client flags that open the handshake. */
  record ClientFlags(int flags) {}

  /**
   * One option request. {@code data} holds the payload unless it was longer than {@link
   * NbdConstants#MAX_OPTION_LENGTH}: then it was read and dropped, {@code data} is null and {@code
   * length} says how long it was.
   */
  record OptionRequest(int option, long length, byte[] data) {
    boolean tooBig() {
      return data == null;
    }
  }

  /**
   * One transmission request (NBD_CMD_*). {@code length} is the unsigned 32-bit length. A write's
   * payload is in {@code payload} (the receiver releases it), or null when it was longer than
   * {@link NbdConstants#MAX_BLOCK_SIZE} and was read and dropped.
   */
  record Request(int flags, int type, long handle, long offset, long length, ByteBuf payload) {
    boolean hasFlag(int flag) {
      return (flags & flag) != 0;
    }
  }

  // ---------------------------------------------------------------- to the client

  /** The server's greeting: NBDMAGIC, IHAVEOPT and the handshake flags. */
  record Greeting(int handshakeFlags) {}

  /** The answer to NBD_OPT_EXPORT_NAME: size, transmission flags and, unless NO_ZEROES, 124 zeros. */
  record ExportNameReply(long size, int transmissionFlags, boolean noZeroes) {}

  /** One option reply (NBD_REP_*): its data is already in wire format. */
  record OptionReply(int option, int type, byte[] data) {
    OptionReply(int option, int type) {
      this(option, type, new byte[0]);
    }
  }

  /** A simple reply: error (0 for none) and, for a successful read, the data. */
  static final class SimpleReply extends DefaultByteBufHolder {
    final long handle;
    final int error;

    SimpleReply(long handle, int error, ByteBuf data) {
      super(data);
      this.handle = handle;
      this.error = error;
    }

    SimpleReply(long handle, int error) {
      this(handle, error, Unpooled.EMPTY_BUFFER);
    }
  }

  /** A structured NBD_REPLY_TYPE_OFFSET_DATA chunk: the last of its reply if {@code done}. */
  static final class ReadChunk extends DefaultByteBufHolder {
    final long handle;
    final long offset;
    final boolean done;

    ReadChunk(long handle, long offset, ByteBuf data, boolean done) {
      super(data);
      this.handle = handle;
      this.offset = offset;
      this.done = done;
    }
  }

  /** A structured NBD_REPLY_TYPE_OFFSET_HOLE chunk: {@code length} bytes that read as zeros. */
  record HoleChunk(long handle, long offset, long length, boolean done) {}

  /** A structured reply of one chunk with NBD_REPLY_FLAG_DONE and no payload: NBD_REPLY_TYPE_NONE. */
  record NoneChunk(long handle) {}

  /** A structured error chunk with NBD_REPLY_FLAG_DONE: NBD_REPLY_TYPE_ERROR. */
  record ErrorChunk(long handle, int error, String message) {}

  /**
   * A structured NBD_REPLY_TYPE_BLOCK_STATUS chunk: the context id, then (length, flags) pairs;
   * the last of its reply if {@code done}.
   */
  record BlockStatusChunk(long handle, int contextId, long[] lengths, int[] flags, boolean done) {}

  /**
   * The chunks of one structured reply, written as one message so no other reply can come between
   * them; it owns the buffers of its chunks.
   */
  static final class Chunks extends AbstractReferenceCounted {
    final List<Object> parts;

    Chunks(List<Object> parts) {
      this.parts = List.copyOf(parts);
    }

    @Override
    protected void deallocate() {
      for (Object p : parts) {
        ReferenceCountUtil.release(p);
      }
    }

    @Override
    public ReferenceCounted touch(Object hint) {
      return this;
    }
  }
}
