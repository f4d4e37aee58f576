package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.*;

import dev.blockbackup.engine.BlockDirtyBitmap;
import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.WriteFlag;
import dev.blockbackup.nbd.NbdExport.ExportedBitmap;
import dev.blockbackup.nbd.NbdMessages.Chunks;
import dev.blockbackup.nbd.NbdMessages.ErrorChunk;
import dev.blockbackup.nbd.NbdMessages.NoneChunk;
import dev.blockbackup.nbd.NbdMessages.Request;
import dev.blockbackup.nbd.NbdMessages.SimpleReply;
import io.netty.channel.ChannelFutureListener;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInboundHandlerAdapter;
import io.netty.util.ReferenceCountUtil;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.RejectedExecutionException;

/**
 * The transmission phase of one connection: checks each request, runs the block I/O on the
 * worker pool (it blocks), and writes the reply back on the event loop, in one write each. Requests
 * of one connection run concurrently and their replies go out in completion order; the handle
 * tells the client which is which. Over {@code maxInFlight} requests in flight the connection
 * stops reading (autoRead off), so a client that never reads its replies cannot pile up work; it
 * also stops while the server's {@link WorkQueue} is full, and reads again once that has room.
 */
final class TransmissionHandler extends ChannelInboundHandlerAdapter {

  private static final System.Logger LOG = System.getLogger(TransmissionHandler.class.getName());
  /** The write flags of NBD_CMD_WRITE, made once: a write is the hottest request. */
  private static final WriteFlag[] NO_FLAGS = {};
  private static final WriteFlag[] FUA = {WriteFlag.FUA};

  private final NbdExport export;
  private final BlockDevice device;
  private final boolean structured;
  /** NBD_OPT_EXTENDED_HEADERS was negotiated: 64-bit lengths, every reply structured. */
  private final boolean extended;
  /** The metadata contexts chosen for this export, or null: then block status is refused. */
  private final MetaContexts contexts;
  /** The exported bitmaps, by the export's index (found once: they are busy, so they stay). */
  private final BlockDirtyBitmap[] bitmaps;
  private final ConnectionSettings settings;
  /** Makes the replies to reads (set once the handler is in its pipeline, which has the allocator). */
  private ReadReply reads;
  /** Requests handed to the workers and not yet answered; touched on the event loop only. */
  private int inFlight;
  /** Their payload and reply bytes (reads and writes), bounded by {@link #MAX_IN_FLIGHT_BYTES}. */
  private long inFlightBytes;
  /** Stop reading above this many bytes of requests in flight: 2 maximum-size requests. */
  static final long MAX_IN_FLIGHT_BYTES = 2L * MAX_BLOCK_SIZE;
  /** A flush is queued on the event loop behind the replies written so far. */
  private boolean flushScheduled;
  /** NBD_CMD_DISC came: answer what is in flight, then close. */
  private boolean disconnecting;
  /** This connection asked the full work queue to say when it has room; on the event loop only. */
  private boolean waitingForRoom;

  TransmissionHandler(NbdExport export, boolean structured, boolean extended, MetaContexts contexts,
      ConnectionSettings settings) {
    this.export = export;
    this.device = export.device();
    this.structured = structured || extended;
    this.extended = extended;
    this.contexts = contexts;
    List<ExportedBitmap> offered = export.bitmaps();
    this.bitmaps = new BlockDirtyBitmap[offered.size()];
    for (int i = 0; i < bitmaps.length; i++) {
      ExportedBitmap b = offered.get(i);
      bitmaps[i] = b.node().findBitmap(b.name()).orElse(null);
    }
    this.settings = settings;
  }

  @Override
  public void handlerAdded(ChannelHandlerContext ctx) {
    reads = new ReadReply(device, ctx.alloc(), structured);
  }

  @Override
  public void channelRead(ChannelHandlerContext ctx, Object msg) {
    if (!(msg instanceof Request r)) {
      ReferenceCountUtil.release(msg);
      return;
    }
    if (disconnecting) {
      release(r);
      return;
    }
    if (r.type() == NBD_CMD_DISC) {
      disconnect(ctx);
      return;
    }
    MetaContexts chosen = contexts;
    if (extended && r.type() == NBD_CMD_BLOCK_STATUS && r.hasFlag(NBD_CMD_FLAG_PAYLOAD_LEN)) {
      // the payload names the effect length and the contexts wanted this time, a subset of those chosen
      MetaContexts.Filtered f = MetaContexts.filtered(contexts, r.payload());
      release(r);
      if (f == null) {
        write(ctx, wrap(r, errorReply(r, NBD_EINVAL, "NBD_CMD_BLOCK_STATUS payload not valid")));
        updateAutoRead(ctx);
        return;
      }
      r = new Request(r.flags() & ~NBD_CMD_FLAG_PAYLOAD_LEN, r.type(), r.handle(), r.offset(), f.length(), null);
      chosen = f.contexts();
    }
    Request req = r;
    MetaContexts wanted = chosen;
    int error = check(r);
    if (error != 0) {
      release(r);
      write(ctx, wrap(r, errorReply(r, error, "invalid " + commandName(r.type()) + " request")));
      updateAutoRead(ctx);
      return;
    }
    if (r.type() == NBD_CMD_READ) {
      Object now = reads.tryNow(r);
      if (now != null) {
        write(ctx, wrap(r, now)); // from the page cache: no worker, no hop back
        updateAutoRead(ctx);
        return;
      }
    }
    long bytes = r.type() == NBD_CMD_READ || r.type() == NBD_CMD_WRITE ? r.length() : 0;
    inFlight++;
    inFlightBytes += bytes;
    try {
      settings.workers().execute(() -> {
        Object reply = wrap(req, perform(req, wanted));
        try {
          ctx.executor().execute(() -> replied(ctx, reply, bytes));
        } catch (RejectedExecutionException e) {
          ReferenceCountUtil.release(reply); // the event loop is gone: so is the connection
        }
      });
      updateAutoRead(ctx); // after the hand-over, which may have filled the work queue
    } catch (RejectedExecutionException e) {
      release(r);
      replied(ctx, wrap(r, errorReply(r, NBD_ESHUTDOWN, "the server is shutting down")), bytes);
    }
  }

  /**
   * The reply as this connection's headers carry it: with extended headers every reply is
   * structured, so a simple success becomes NBD_REPLY_TYPE_NONE, and each is marked for the
   * 32-byte header that echoes the request's offset.
   */
  private Object wrap(Request r, Object reply) {
    if (!extended) {
      return reply;
    }
    if (reply instanceof SimpleReply s) {
      s.release();
      reply = new NoneChunk(r.handle());
    }
    return new NbdMessages.Extended(r.offset(), reply);
  }

  /** On the event loop: sends one reply and reopens reading if the connection is under its limits again. */
  private void replied(ChannelHandlerContext ctx, Object reply, long bytes) {
    inFlight--;
    inFlightBytes -= bytes;
    if (disconnecting && inFlight == 0) {
      ctx.writeAndFlush(reply).addListener(ChannelFutureListener.CLOSE);
      return;
    }
    write(ctx, reply);
    updateAutoRead(ctx);
  }

  /**
   * Queues a reply and flushes once for all the replies that complete in the same turn of the
   * event loop: at queue depth 16 several finish together, and one writev beats one per reply.
   */
  private void write(ChannelHandlerContext ctx, Object reply) {
    ctx.write(reply, ctx.voidPromise());
    if (!flushScheduled) {
      flushScheduled = true;
      ctx.executor().execute(() -> {
        flushScheduled = false;
        ctx.flush();
      });
    }
  }

  /**
   * Reads only while the connection is under its limits: requests and bytes in flight, replies
   * the client has not taken yet (channel writability), so a client that sends without reading
   * its replies is stopped rather than buffered for, and room in the server's work queue.
   */
  private void updateAutoRead(ChannelHandlerContext ctx) {
    boolean queueFull = settings.workers().isFull();
    boolean read = !disconnecting && inFlight < settings.maxInFlight() && inFlightBytes < MAX_IN_FLIGHT_BYTES
        && ctx.channel().isWritable() && !queueFull;
    if (ctx.channel().config().isAutoRead() != read) {
      ctx.channel().config().setAutoRead(read);
    }
    if (queueFull && !disconnecting && !waitingForRoom) {
      // Nothing of this connection may be in flight to reopen reading when the queue drains, so
      // the queue itself calls back; the call comes on a worker and hops to the event loop.
      waitingForRoom = true;
      settings.workers().whenRoom(() -> {
        try {
          ctx.executor().execute(() -> {
            waitingForRoom = false;
            updateAutoRead(ctx);
          });
        } catch (RejectedExecutionException e) {
          // the event loop is gone, and the connection with it
        }
      });
    }
  }

  @Override
  public void channelWritabilityChanged(ChannelHandlerContext ctx) {
    updateAutoRead(ctx);
    ctx.fireChannelWritabilityChanged();
  }

  private void disconnect(ChannelHandlerContext ctx) {
    disconnecting = true;
    ctx.pipeline().get(NbdDecoder.class).stop();
    ctx.channel().config().setAutoRead(false);
    if (inFlight == 0) {
      ctx.close();
    }
  }

  /** Begins a graceful close as NBD_CMD_DISC does (the server is closing). */
  void shutdown(ChannelHandlerContext ctx) {
    if (!disconnecting) {
      disconnect(ctx);
    }
  }

  /**
   * The NBD error for a request that must not reach the device, or 0 if it may. NBD_CMD_FLAG_FUA
   * is accepted on every command, as the spec requires once NBD_FLAG_SEND_FUA is advertised.
   */
  int check(Request r) {
    int allowed = NBD_CMD_FLAG_FUA;
    boolean writes = false;
    boolean ranged = true;
    boolean buffered = false;
    switch (r.type()) {
      case NBD_CMD_READ -> {
        allowed |= structured ? NBD_CMD_FLAG_DF : 0;
        buffered = true;
      }
      case NBD_CMD_WRITE -> {
        allowed |= extended ? NBD_CMD_FLAG_PAYLOAD_LEN : 0; // a write's length is its payload's anyway
        writes = true;
        buffered = true;
      }
      case NBD_CMD_FLUSH -> ranged = false;
      case NBD_CMD_TRIM -> writes = true;
      case NBD_CMD_WRITE_ZEROES -> {
        allowed |= NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
        writes = true;
      }
      case NBD_CMD_CACHE -> buffered = true;
      case NBD_CMD_BLOCK_STATUS -> {
        if (contexts == null) {
          return NBD_EINVAL; // no metadata context was selected (the spec: SHOULD be EINVAL)
        }
        allowed |= NBD_CMD_FLAG_REQ_ONE;
      }
      default -> {
        return NBD_EINVAL;
      }
    }
    if ((r.flags() & ~allowed) != 0) {
      return NBD_EINVAL;
    }
    if (writes && export.isReadOnly()) {
      return NBD_EPERM;
    }
    if (buffered && r.length() > MAX_BLOCK_SIZE) {
      return NBD_EINVAL; // longer than the maximum block size we advertise
    }
    if (r.type() == NBD_CMD_WRITE && r.payload() == null) {
      return NBD_EINVAL;
    }
    if (r.type() == NBD_CMD_BLOCK_STATUS && r.length() == 0) {
      return NBD_EINVAL;
    }
    if (ranged) {
      long size = device.size();
      // offset and (extended) length are unsigned on the wire: a negative long is past any end
      if (r.offset() < 0 || r.length() < 0 || r.offset() > size || r.length() > size - r.offset()) {
        // the spec: a write past the end SHOULD fail with ENOSPC (as QEMU's does), the rest EINVAL
        return r.type() == NBD_CMD_WRITE || r.type() == NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
      }
    }
    return 0;
  }

  /** On a worker: does the request and makes its reply. */
  private Object perform(Request r, MetaContexts wanted) {
    try {
      switch (r.type()) {
        case NBD_CMD_READ -> {
          return reads.read(r);
        }
        case NBD_CMD_WRITE -> {
          if (r.length() > 0) {
            device.write(r.offset(), r.payload().nioBuffer(), r.hasFlag(NBD_CMD_FLAG_FUA) ? FUA : NO_FLAGS);
          }
        }
        case NBD_CMD_FLUSH -> device.flush();
        case NBD_CMD_TRIM -> {
          if (r.length() > 0) {
            device.discard(r.offset(), r.length());
            if (r.hasFlag(NBD_CMD_FLAG_FUA)) {
              device.flush();
            }
          }
        }
        case NBD_CMD_WRITE_ZEROES -> {
          if (r.length() > 0) {
            device.writeZeroes(r.offset(), r.length(), zeroFlags(r));
          }
        }
        case NBD_CMD_CACHE -> { } // the data is in the host's page cache already, or will be
        case NBD_CMD_BLOCK_STATUS -> {
          return blockStatus(r, wanted);
        }
        default -> throw new IllegalStateException("unchecked command " + r.type());
      }
      return new SimpleReply(r.handle(), 0);
    } catch (BlockIOException e) {
      return errorReply(r, errno(e.error()), e.getMessage());
    } catch (RuntimeException e) {
      LOG.log(System.Logger.Level.WARNING, commandName(r.type()) + " on export '" + export.name() + "' failed", e);
      return errorReply(r, NBD_EIO, String.valueOf(e));
    } finally {
      release(r);
    }
  }

  private static WriteFlag[] zeroFlags(Request r) {
    WriteFlag[] f = new WriteFlag[3];
    int n = 0;
    if (r.hasFlag(NBD_CMD_FLAG_FUA)) {
      f[n++] = WriteFlag.FUA;
    }
    if (!r.hasFlag(NBD_CMD_FLAG_NO_HOLE)) {
      f[n++] = WriteFlag.MAY_UNMAP;
    }
    if (r.hasFlag(NBD_CMD_FLAG_FAST_ZERO)) {
      f[n++] = WriteFlag.NO_FALLBACK;
    }
    return java.util.Arrays.copyOf(f, n);
  }

  /** One chunk per chosen context, in id order; the last says NBD_REPLY_FLAG_DONE. */
  private Object blockStatus(Request r, MetaContexts contexts) throws BlockIOException {
    int max = r.hasFlag(NBD_CMD_FLAG_REQ_ONE) ? 1 : BlockStatusReply.MAX_EXTENTS;
    int left = contexts.count();
    List<Object> chunks = new ArrayList<>(left);
    if (contexts.baseAllocation()) {
      chunks.add(BlockStatusReply.baseAllocation(device, r.handle(), r.offset(), r.length(), max, --left == 0));
    }
    if (contexts.allocationDepth()) {
      chunks.add(BlockStatusReply.allocationDepth(device, r.handle(), r.offset(), r.length(), max, --left == 0));
    }
    for (int i = 0; i < bitmaps.length; i++) {
      if (contexts.bitmap(i)) {
        if (bitmaps[i] == null) {
          throw new BlockIOException(BlockError.EIO, "bitmap '" + export.bitmaps().get(i).name() + "' is gone");
        }
        chunks.add(BlockStatusReply.dirtyBitmap(bitmaps[i], MetaContexts.FIRST_BITMAP_ID + i, r.handle(),
            r.offset(), r.length(), max, --left == 0));
      }
    }
    return chunks.size() == 1 ? chunks.get(0) : new Chunks(chunks);
  }

  /**
   * The error reply to {@code r}: once structured replies are negotiated an error chunk for every
   * command, which carries a message, as QEMU's server sends; a simple reply otherwise.
   */
  private Object errorReply(Request r, int error, String message) {
    return structured ? new ErrorChunk(r.handle(), error, message) : new SimpleReply(r.handle(), error);
  }

  /**
   * The NBD error for a device's BlockError: the spec's values where it has them (they are
   * Linux's errnos, as BlockError's are). EACCES has no NBD value; it becomes EPERM, the one NBD
   * error that says "not allowed" (QEMU would send its default, EINVAL, which reads as a client
   * bug). Anything else becomes EIO.
   */
  static int errno(BlockError e) {
    return switch (e) {
      case EPERM, EACCES -> NBD_EPERM;
      case EIO -> NBD_EIO;
      case ENOMEM -> NBD_ENOMEM;
      case EINVAL -> NBD_EINVAL;
      case ENOSPC -> NBD_ENOSPC;
      case EOVERFLOW -> NBD_EOVERFLOW;
      case ENOTSUP -> NBD_ENOTSUP;
      case ESHUTDOWN -> NBD_ESHUTDOWN;
      default -> NBD_EIO;
    };
  }

  private static void release(Request r) {
    if (r.payload() != null && r.payload().refCnt() > 0) {
      r.payload().release();
    }
  }

  @Override
  public void exceptionCaught(ChannelHandlerContext ctx, Throwable cause) {
    NbdProtocolException.closeOn(ctx, cause, LOG, "");
  }
}
