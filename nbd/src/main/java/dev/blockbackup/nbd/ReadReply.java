package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.NBD_CMD_FLAG_DF;
import static dev.blockbackup.nbd.NbdConstants.NBD_CMD_FLAG_FUA;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.nbd.NbdMessages.Chunks;
import dev.blockbackup.nbd.NbdMessages.HoleChunk;
import dev.blockbackup.nbd.NbdMessages.NoneChunk;
import dev.blockbackup.nbd.NbdMessages.ReadChunk;
import dev.blockbackup.nbd.NbdMessages.Request;
import dev.blockbackup.nbd.NbdMessages.SimpleReply;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.ByteBufAllocator;
import io.netty.util.ReferenceCountUtil;
import java.util.ArrayList;
import java.util.List;

/**
 * The reply to an NBD_CMD_READ: a simple reply with the bytes, or once structured replies are
 * negotiated the bytes in NBD_REPLY_TYPE_OFFSET_DATA chunks and the ranges that read as zero as
 * NBD_REPLY_TYPE_OFFSET_HOLE chunks, as QEMU's server sends them unless the client set
 * NBD_CMD_FLAG_DF. A sparse image then costs the wire nothing where it has holes.
 *
 * <p>{@link #tryNow} is the same read on a thread that must not block: it answers only when the
 * device has the bytes at hand ({@link BlockDevice#readNoWait}), so a read from the page cache is
 * answered on the event loop that decoded it, without the two thread hand-offs of a worker.
 */
final class ReadReply {

  /** Reads above this size go to a worker even when cached: copying them would hold the event loop. */
  static final int MAX_NOW = 1 << 20;

  private final BlockDevice device;
  private final ByteBufAllocator alloc;
  private final boolean structured;

  ReadReply(BlockDevice device, ByteBufAllocator alloc, boolean structured) {
    this.device = device;
    this.alloc = alloc;
    this.structured = structured;
  }

  /** The reply, reading as long as it takes (on a worker). */
  Object read(Request r) throws BlockIOException {
    if (r.hasFlag(NBD_CMD_FLAG_FUA)) {
      device.flush(); // what QEMU makes of FUA on a read: the data read is the data stored
    }
    int n = (int) r.length();
    if (n == 0) {
      return structured ? new NoneChunk(r.handle()) : new SimpleReply(r.handle(), 0);
    }
    ByteBuf data = alloc.directBuffer(n, n);
    try {
      if (structured && !r.hasFlag(NBD_CMD_FLAG_DF)) {
        return sparse(r, data, false);
      }
      device.read(r.offset(), data.nioBuffer(0, n));
      return whole(r, data.retain());
    } finally {
      data.release();
    }
  }

  /**
   * The reply if the device can give every byte without waiting, else null (the caller hands the
   * request to a worker). Nothing is left allocated when it answers null.
   */
  Object tryNow(Request r) {
    int n = (int) r.length();
    if (n == 0 || n > MAX_NOW || r.hasFlag(NBD_CMD_FLAG_FUA)) {
      return null;
    }
    ByteBuf data = alloc.directBuffer(n, n);
    try {
      if (!device.readNoWait(r.offset(), data.nioBuffer(0, n))) {
        return null;
      }
      return structured && !r.hasFlag(NBD_CMD_FLAG_DF) ? sparse(r, data, true) : whole(r, data.retain());
    } catch (BlockIOException | RuntimeException e) {
      return null; // the worker reads again and reports the error as it reports every other
    } finally {
      data.release();
    }
  }

  private Object whole(Request r, ByteBuf data) {
    data.writerIndex(data.capacity());
    return structured ? new ReadChunk(r.handle(), r.offset(), data, true) : new SimpleReply(r.handle(), 0, data);
  }

  /**
   * The chunks of a structured read: runs of data and of zeros by the device's block status. The
   * data chunks are slices of {@code data} (the request's buffer, released by the caller), read
   * now unless {@code filled} says the whole range was read already.
   */
  private Object sparse(Request r, ByteBuf data, boolean filled) throws BlockIOException {
    long end = r.offset() + r.length();
    // runs of data and of zeros, neighbours of one kind joined: {from, to, zero ? 1 : 0}
    List<long[]> runs = new ArrayList<>();
    long stop = ExtentWalk.walk(device, r.offset(), end, (from, to, e) -> {
      addRun(runs, from, to, e.zero());
      return true;
    });
    if (stop < end) {
      addRun(runs, stop, end, false); // where the device was not certain: read it as data
    }
    if (runs.size() == 1 && runs.get(0)[2] == 0) {
      // all data, the common case: one chunk, no list
      if (!filled) {
        device.read(r.offset(), data.nioBuffer(0, (int) r.length()));
      }
      return whole(r, data.retain());
    }
    List<Object> chunks = new ArrayList<>(runs.size());
    try {
      for (int i = 0; i < runs.size(); i++) {
        long[] run = runs.get(i);
        chunks.add(run(r, data, run[0], run[1], run[2] == 1, filled, i == runs.size() - 1));
      }
      return new Chunks(chunks);
    } catch (BlockIOException | RuntimeException e) {
      chunks.forEach(ReferenceCountUtil::release);
      throw e;
    }
  }

  private static void addRun(List<long[]> runs, long from, long to, boolean zero) {
    long[] last = runs.isEmpty() ? null : runs.get(runs.size() - 1);
    if (last != null && last[1] == from && (last[2] == 1) == zero) {
      last[1] = to;
    } else {
      runs.add(new long[] {from, to, zero ? 1 : 0});
    }
  }


  /** One chunk of a sparse read: a hole, or the bytes of [from, to) in their slice of {@code data}. */
  private Object run(Request r, ByteBuf data, long from, long to, boolean zero, boolean filled, boolean done)
      throws BlockIOException {
    if (zero) {
      return new HoleChunk(r.handle(), from, to - from, done);
    }
    int rel = (int) (from - r.offset());
    int len = (int) (to - from);
    if (!filled) {
      device.read(from, data.nioBuffer(rel, len));
    }
    return new ReadChunk(r.handle(), from, data.retainedSlice(rel, len), done);
  }
}
