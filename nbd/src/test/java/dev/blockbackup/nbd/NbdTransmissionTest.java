package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.*;
import static dev.blockbackup.nbd.Wire.clientFlags;
import static dev.blockbackup.nbd.Wire.goData;
import static dev.blockbackup.nbd.Wire.metaData;
import static dev.blockbackup.nbd.Wire.option;
import static dev.blockbackup.nbd.Wire.out;
import static dev.blockbackup.nbd.Wire.reply;
import static dev.blockbackup.nbd.Wire.request;
import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.engine.BlockNode;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.nbd.Wire.Reply;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.embedded.EmbeddedChannel;
import java.util.ArrayDeque;
import java.util.Arrays;
import java.util.concurrent.Executor;
import org.junit.jupiter.api.Test;

/** Requests and replies of the transmission phase through an EmbeddedChannel. */
class NbdTransmissionTest {

  static final int SIZE = 1 << 20;

  MemoryDevice disk = new MemoryDevice(SIZE);
  /** The disk as a node with bitmap "b", exported as "node" with both qemu: contexts. */
  BlockNode node = BlockNode.of("n", disk);
  EmbeddedChannel ch;

  /**
   * Connects to {@code export}, with structured replies and the metadata contexts {@code queries}
   * (base:allocation if none) if {@code structured}.
   */
  void connect(String export, boolean structured, Executor workers, String... queries) {
    if (node.findBitmap("b").isEmpty()) {
      node.addBitmap("b");
    }
    ch = Wire.channel(Wire.settings(workers, NbdExport.of("disk", disk), NbdExport.of("ro", disk).withReadOnly(true),
        NbdExport.of("node", node).withBitmap(node, "b").withAllocationDepth(true)));
    ch.writeInbound(clientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES));
    if (structured) {
      ch.writeInbound(option(NBD_OPT_STRUCTURED_REPLY, new byte[0]));
      ch.writeInbound(option(NBD_OPT_SET_META_CONTEXT,
          metaData(export, queries.length == 0 ? new String[] {BASE_ALLOCATION} : queries)));
    }
    ch.writeInbound(option(NBD_OPT_GO, goData(export)));
    out(ch).release();
    assertThat(ch.pipeline().get(TransmissionHandler.class)).isNotNull();
  }

  void connect(String export, boolean structured, String... queries) {
    connect(export, structured, Runnable::run, queries);
  }

  Reply send(int flags, int type, long handle, long offset, long length, byte[] payload) {
    ch.writeInbound(request(flags, type, handle, offset, length, payload));
    ByteBuf b = out(ch);
    Reply r = reply(b);
    assertThat(b.isReadable()).as("one reply").isFalse();
    return r;
  }

  /** A simple read's reply: header then exactly {@code length} bytes. */
  byte[] simpleRead(long handle, long offset, int length) {
    ch.writeInbound(request(0, NBD_CMD_READ, handle, offset, length, null));
    ByteBuf b = out(ch);
    Reply r = reply(b);
    assertThat(r.error()).isZero();
    assertThat(r.handle()).isEqualTo(handle);
    byte[] data = new byte[length];
    b.readBytes(data);
    assertThat(b.isReadable()).isFalse();
    return data;
  }

  @Test
  void writeThenReadRoundTripsWithSimpleReplies() {
    connect("disk", false);
    byte[] data = new byte[5000];
    Arrays.fill(data, (byte) 7);
    Reply w = send(NBD_CMD_FLAG_FUA, NBD_CMD_WRITE, 42, 1000, data.length, data);
    assertThat(w.structured()).isFalse();
    assertThat(w.handle()).isEqualTo(42);
    assertThat(w.error()).isZero();
    assertThat(simpleRead(43, 1000, 5000)).isEqualTo(data);
    assertThat(send(0, NBD_CMD_FLUSH, 44, 0, 0, null).error()).isZero();
    assertThat(disk.flushes).isEqualTo(1);
  }

  @Test
  void structuredReadIsOneOffsetDataChunkMarkedDone() {
    connect("disk", true);
    disk.bytes[100] = 9;
    Reply r = send(NBD_CMD_FLAG_DF, NBD_CMD_READ, 5, 96, 8, null);
    assertThat(r.structured()).isTrue();
    assertThat(r.type()).isEqualTo(NBD_REPLY_TYPE_OFFSET_DATA);
    assertThat(r.flags()).isEqualTo(NBD_REPLY_FLAG_DONE);
    ByteBuf p = Unpooled.wrappedBuffer(r.payload());
    assertThat(p.readLong()).isEqualTo(96);
    assertThat(Wire.bytes(p)).containsExactly(0, 0, 0, 0, 9, 0, 0, 0);
  }

  @Test
  void readPastTheEndIsEinvalWritesEnospcAndTheConnectionStaysUsable() {
    connect("disk", false);
    assertThat(send(0, NBD_CMD_READ, 1, SIZE - 10, 11, null).error()).isEqualTo(NBD_EINVAL);
    assertThat(send(0, NBD_CMD_READ, 2, -4096, 4096, null).error()).isEqualTo(NBD_EINVAL);
    // the spec: a write past the end SHOULD fail with ENOSPC, as QEMU's server answers
    assertThat(send(0, NBD_CMD_WRITE_ZEROES, 3, SIZE, 1, null).error()).isEqualTo(NBD_ENOSPC);
    assertThat(send(0, NBD_CMD_WRITE, 5, SIZE - 1, 2, new byte[2]).error()).isEqualTo(NBD_ENOSPC);
    assertThat(send(0, NBD_CMD_TRIM, 6, SIZE, 1, null).error()).isEqualTo(NBD_EINVAL);
    assertThat(simpleRead(4, SIZE - 10, 10)).hasSize(10);
  }

  @Test
  void structuredErrorsAreErrorChunksWithAMessage() {
    connect("disk", true);
    Reply r = send(0, NBD_CMD_READ, 1, SIZE, 1, null);
    assertThat(r.type()).isEqualTo(NBD_REPLY_TYPE_ERROR);
    assertThat(r.flags()).isEqualTo(NBD_REPLY_FLAG_DONE);
    assertThat(r.error()).isEqualTo(NBD_EINVAL);
  }

  @Test
  void readOverTheMaximumBlockSizeIsEinval() {
    connect("disk", false);
    assertThat(send(0, NBD_CMD_READ, 1, 0, MAX_BLOCK_SIZE + 1L, null).error()).isEqualTo(NBD_EINVAL);
  }

  @Test
  void writeOverTheMaximumIsConsumedAnsweredEinvalAndTheNextRequestWorks() {
    connect("disk", false);
    ByteBuf big = request(0, NBD_CMD_WRITE, 1, 0, MAX_BLOCK_SIZE + 1L, null);
    ch.writeInbound(big);
    for (int left = MAX_BLOCK_SIZE + 1; left > 0; left -= 1 << 20) {
      ch.writeInbound(Unpooled.wrappedBuffer(new byte[Math.min(left, 1 << 20)]));
    }
    ch.writeInbound(request(0, NBD_CMD_FLUSH, 2, 0, 0, null));
    ByteBuf b = out(ch);
    Reply first = reply(b);
    assertThat(first.handle()).isEqualTo(1);
    assertThat(first.error()).isEqualTo(NBD_EINVAL);
    assertThat(reply(b).error()).isZero();
  }

  @Test
  void writesToAReadOnlyExportAreEperm() {
    connect("ro", false);
    assertThat(send(0, NBD_CMD_WRITE, 1, 0, 4, new byte[4]).error()).isEqualTo(NBD_EPERM);
    assertThat(send(0, NBD_CMD_TRIM, 2, 0, 4096, null).error()).isEqualTo(NBD_EPERM);
    assertThat(send(0, NBD_CMD_WRITE_ZEROES, 3, 0, 4096, null).error()).isEqualTo(NBD_EPERM);
    assertThat(simpleRead(4, 0, 4)).hasSize(4);
  }

  @Test
  void unknownCommandsAndFlagsAreEinval() {
    connect("disk", false);
    assertThat(send(0, 99, 1, 0, 0, null).error()).isEqualTo(NBD_EINVAL);
    assertThat(send(NBD_CMD_FLAG_REQ_ONE, NBD_CMD_WRITE, 2, 0, 1, new byte[1]).error()).isEqualTo(NBD_EINVAL);
    // DF needs structured replies
    assertThat(send(NBD_CMD_FLAG_DF, NBD_CMD_READ, 3, 0, 1, null).error()).isEqualTo(NBD_EINVAL);
    assertThat(send(0, NBD_CMD_CACHE, 4, 0, 4096, null).error()).isZero();
  }

  @Test
  void writeZeroesAndTrimZeroTheRange() {
    connect("disk", false);
    Arrays.fill(disk.bytes, (byte) 1);
    assertThat(send(NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FUA, NBD_CMD_WRITE_ZEROES, 1, 4096, 8192, null).error())
        .isZero();
    assertThat(send(NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_WRITE_ZEROES, 2, 0, 100, null).error()).isZero();
    assertThat(send(NBD_CMD_FLAG_FUA, NBD_CMD_TRIM, 3, 65536, 4096, null).error()).isZero();
    assertThat(disk.bytes[4096]).isZero();
    assertThat(disk.bytes[12287]).isZero();
    assertThat(disk.bytes[12288]).isEqualTo((byte) 1);
    assertThat(disk.bytes[99]).isZero();
    assertThat(disk.bytes[65536]).isZero();
    assertThat(disk.flushes).isEqualTo(1);
  }

  @Test
  void blockStatusReportsDataAndHolesForBaseAllocation() {
    connect("disk", true);
    Arrays.fill(disk.bytes, 8192, 16384, (byte) 3);
    Reply r = send(0, NBD_CMD_BLOCK_STATUS, 7, 0, SIZE, null);
    assertThat(r.type()).isEqualTo(NBD_REPLY_TYPE_BLOCK_STATUS);
    assertThat(r.flags()).isEqualTo(NBD_REPLY_FLAG_DONE);
    ByteBuf p = Unpooled.wrappedBuffer(r.payload());
    assertThat(p.readInt()).isEqualTo(BASE_ALLOCATION_ID);
    assertThat(new long[] {p.readUnsignedInt(), p.readInt(), p.readUnsignedInt(), p.readInt(), p.readUnsignedInt(),
        p.readInt()}).containsExactly(8192, NBD_STATE_HOLE | NBD_STATE_ZERO, 8192, 0, SIZE - 16384,
        NBD_STATE_HOLE | NBD_STATE_ZERO);
    assertThat(p.isReadable()).isFalse();

    Reply one = send(NBD_CMD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS, 8, 100, SIZE - 100, null);
    ByteBuf q = Unpooled.wrappedBuffer(one.payload());
    q.skipBytes(4);
    assertThat(q.readUnsignedInt()).isEqualTo(8092);
    assertThat(q.readInt()).isEqualTo(NBD_STATE_HOLE | NBD_STATE_ZERO);
    assertThat(q.isReadable()).isFalse();
    assertThat(send(0, NBD_CMD_BLOCK_STATUS, 9, 0, 0, null).error()).isEqualTo(NBD_EINVAL);
  }

  /** Every reply {@code b} holds, in order. */
  static java.util.List<Reply> replies(ByteBuf b) {
    java.util.List<Reply> all = new java.util.ArrayList<>();
    while (b.isReadable()) {
      all.add(reply(b));
    }
    return all;
  }

  @Test
  void structuredReadSendsZeroRangesAsHolesUnlessDontFragment() {
    connect("disk", true);
    Arrays.fill(disk.bytes, 8192, 12288, (byte) 5);
    ch.writeInbound(request(0, NBD_CMD_READ, 1, 4096, 12288, null));
    java.util.List<Reply> chunks = replies(out(ch));
    assertThat(chunks).extracting(Reply::type).containsExactly(NBD_REPLY_TYPE_OFFSET_HOLE,
        NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_TYPE_OFFSET_HOLE);
    assertThat(chunks).extracting(Reply::flags).containsExactly(0, 0, NBD_REPLY_FLAG_DONE);
    assertThat(chunks).extracting(Reply::handle).containsOnly(1L);
    ByteBuf hole = Unpooled.wrappedBuffer(chunks.get(0).payload());
    assertThat(new long[] {hole.readLong(), hole.readUnsignedInt()}).containsExactly(4096, 4096);
    ByteBuf data = Unpooled.wrappedBuffer(chunks.get(1).payload());
    assertThat(data.readLong()).isEqualTo(8192);
    byte[] fives = new byte[4096];
    Arrays.fill(fives, (byte) 5);
    assertThat(Wire.bytes(data)).isEqualTo(fives);
    ByteBuf tail = Unpooled.wrappedBuffer(chunks.get(2).payload());
    assertThat(new long[] {tail.readLong(), tail.readUnsignedInt()}).containsExactly(12288, 4096);

    // all zeros: one hole; DF: one data chunk with the zeros in it
    ch.writeInbound(request(0, NBD_CMD_READ, 2, 65536, 4096, null));
    assertThat(replies(out(ch))).extracting(Reply::type, Reply::flags)
        .containsExactly(org.assertj.core.groups.Tuple.tuple(NBD_REPLY_TYPE_OFFSET_HOLE, NBD_REPLY_FLAG_DONE));
    Reply df = send(NBD_CMD_FLAG_DF, NBD_CMD_READ, 3, 4096, 12288, null);
    assertThat(df.type()).isEqualTo(NBD_REPLY_TYPE_OFFSET_DATA);
    assertThat(df.payload()).hasSize(8 + 12288);
  }

  @Test
  void onceStructuredEveryErrorIsAnErrorChunkWithAMessage() {
    connect("disk", true);
    disk.failWith = BlockError.ENOSPC;
    Reply w = send(0, NBD_CMD_WRITE, 1, 0, 1, new byte[1]);
    assertThat(w.type()).isEqualTo(NBD_REPLY_TYPE_ERROR);
    assertThat(w.flags()).isEqualTo(NBD_REPLY_FLAG_DONE);
    assertThat(w.error()).isEqualTo(NBD_ENOSPC);
    ByteBuf p = Unpooled.wrappedBuffer(w.payload());
    p.skipBytes(4);
    assertThat(p.readUnsignedShort()).isEqualTo(p.readableBytes()).isPositive();
    disk.failWith = null;
    Reply bad = send(0, 99, 2, 0, 0, null);
    assertThat(bad.type()).isEqualTo(NBD_REPLY_TYPE_ERROR);
    assertThat(bad.error()).isEqualTo(NBD_EINVAL);
    // success of a command without data stays a simple reply, as QEMU sends it without extended headers
    assertThat(send(0, NBD_CMD_FLUSH, 3, 0, 0, null).structured()).isFalse();
  }

  @Test
  void fuaIsAcceptedOnEveryCommandAndFlushesBeforeARead() {
    connect("disk", true);
    assertThat(send(NBD_CMD_FLAG_FUA, NBD_CMD_READ, 1, 0, 512, null).error()).isZero();
    assertThat(disk.flushes).isEqualTo(1);
    assertThat(send(NBD_CMD_FLAG_FUA, NBD_CMD_FLUSH, 2, 0, 0, null).error()).isZero();
    assertThat(send(NBD_CMD_FLAG_FUA, NBD_CMD_CACHE, 3, 0, 512, null).error()).isZero();
    assertThat(send(NBD_CMD_FLAG_FUA, NBD_CMD_BLOCK_STATUS, 4, 0, 512, null).error()).isZero();
  }

  @Test
  void blockStatusAnswersEveryChosenContextInOneReplyWithDoneOnTheLast() {
    connect("node", true, BASE_ALLOCATION, MetaContexts.ALLOCATION_DEPTH, "qemu:dirty-bitmap:b");
    byte[] data = new byte[65536];
    Arrays.fill(data, (byte) 1);
    assertThat(send(0, NBD_CMD_WRITE, 1, 131072, data.length, data).error()).isZero();
    ch.writeInbound(request(0, NBD_CMD_BLOCK_STATUS, 2, 0, SIZE, null));
    java.util.List<Reply> chunks = replies(out(ch));
    assertThat(chunks).extracting(Reply::type).containsOnly(NBD_REPLY_TYPE_BLOCK_STATUS);
    assertThat(chunks).extracting(Reply::flags).containsExactly(0, 0, NBD_REPLY_FLAG_DONE);
    assertThat(chunks).extracting(c -> Unpooled.wrappedBuffer(c.payload()).readInt())
        .containsExactly(BASE_ALLOCATION_ID, MetaContexts.ALLOCATION_DEPTH_ID, MetaContexts.FIRST_BITMAP_ID);
    // no backing chain: depth 1 where the device allocates (the data it holds), 0 elsewhere
    assertThat(extents(chunks.get(1))).containsExactly(131072, 0, 65536, 1, SIZE - 196608, 0);
    // the bitmap's granularity is 64 KiB: the write dirtied exactly one granule
    assertThat(extents(chunks.get(2))).containsExactly(131072, 0, 65536, NBD_STATE_DIRTY, SIZE - 196608, 0);

    Reply one = replies(sendRaw(NBD_CMD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS, 3, 131072 + 4096, 4096)).get(2);
    assertThat(extents(one)).containsExactly(4096, NBD_STATE_DIRTY);
  }

  private ByteBuf sendRaw(int flags, int type, long handle, long offset, long length) {
    ch.writeInbound(request(flags, type, handle, offset, length, null));
    return out(ch);
  }

  /** The (length, flags) pairs of a block status chunk. */
  private static long[] extents(Reply r) {
    ByteBuf p = Unpooled.wrappedBuffer(r.payload());
    p.skipBytes(4);
    long[] out = new long[p.readableBytes() / 4];
    for (int i = 0; i < out.length; i++) {
      out[i] = p.readUnsignedInt();
    }
    return out;
  }

  @Test
  void blockStatusWithoutAMetaContextIsEinval() {
    connect("disk", false);
    assertThat(send(0, NBD_CMD_BLOCK_STATUS, 1, 0, 4096, null).error()).isEqualTo(NBD_EINVAL);
  }

  @Test
  void deviceErrorsBecomeTheirNbdErrors() {
    connect("disk", false);
    disk.failWith = BlockError.ENOSPC;
    assertThat(send(0, NBD_CMD_WRITE, 1, 0, 1, new byte[1]).error()).isEqualTo(NBD_ENOSPC);
    disk.failWith = BlockError.ETIMEDOUT;
    assertThat(send(0, NBD_CMD_FLUSH, 2, 0, 0, null).error()).isEqualTo(NBD_EIO);
  }

  @Test
  void everyBlockErrorMapsToAnNbdError() {
    assertThat(TransmissionHandler.errno(BlockError.EPERM)).isEqualTo(NBD_EPERM);
    assertThat(TransmissionHandler.errno(BlockError.EACCES)).isEqualTo(NBD_EPERM);
    assertThat(TransmissionHandler.errno(BlockError.EIO)).isEqualTo(NBD_EIO);
    assertThat(TransmissionHandler.errno(BlockError.ENOMEM)).isEqualTo(NBD_ENOMEM);
    assertThat(TransmissionHandler.errno(BlockError.EINVAL)).isEqualTo(NBD_EINVAL);
    assertThat(TransmissionHandler.errno(BlockError.ENOSPC)).isEqualTo(NBD_ENOSPC);
    assertThat(TransmissionHandler.errno(BlockError.EOVERFLOW)).isEqualTo(NBD_EOVERFLOW);
    assertThat(TransmissionHandler.errno(BlockError.ENOTSUP)).isEqualTo(NBD_ENOTSUP);
    assertThat(TransmissionHandler.errno(BlockError.ESHUTDOWN)).isEqualTo(NBD_ESHUTDOWN);
    assertThat(TransmissionHandler.errno(BlockError.ETIMEDOUT)).isEqualTo(NBD_EIO);
    assertThat(TransmissionHandler.errno(BlockError.ECANCELED)).isEqualTo(NBD_EIO);
  }

  @Test
  void badRequestMagicClosesTheConnection() {
    connect("disk", false);
    ByteBuf bad = request(0, NBD_CMD_READ, 1, 0, 1, null);
    bad.setInt(0, 0xdeadbeef);
    ch.writeInbound(bad);
    ch.runPendingTasks();
    assertThat(ch.isActive()).isFalse();
  }

  @Test
  void repliesMayGoOutOfOrderAndReadingStopsAtTheInFlightLimit() {
    ArrayDeque<Runnable> queued = new ArrayDeque<>();
    connect("disk", false, queued::add);
    for (int i = 0; i < 32; i++) {
      ch.writeInbound(request(0, NBD_CMD_FLUSH, i, 0, 0, null));
    }
    assertThat(ch.config().isAutoRead()).isFalse();
    queued.pollLast().run(); // the last request finishes first
    Reply r = reply(out(ch));
    assertThat(r.handle()).isEqualTo(31);
    assertThat(ch.config().isAutoRead()).isTrue();
    while (!queued.isEmpty()) {
      queued.poll().run();
    }
    ByteBuf rest = out(ch);
    assertThat(rest.readableBytes()).isEqualTo(31 * 16);
  }

  @Test
  void requestsReadTogetherPastTheInFlightLimitWaitUndecodedUntilThereIsRoom() {
    ArrayDeque<Runnable> queued = new ArrayDeque<>();
    connect("disk", false, queued::add);
    // 40 requests in one read: the 8 past the limit must not reach the workers
    ByteBuf all = Unpooled.buffer();
    for (int i = 0; i < 40; i++) {
      all.writeBytes(Wire.bytes(request(0, NBD_CMD_FLUSH, i, 0, 0, null)));
    }
    ch.writeInbound(all);
    assertThat(queued).hasSize(32);
    queued.poll().run();
    ch.runPendingTasks(); // one answered: reading resumes and exactly one held request is decoded
    assertThat(queued).hasSize(32);
    while (!queued.isEmpty()) {
      queued.poll().run();
      ch.runPendingTasks();
    }
    assertThat(out(ch).readableBytes()).isEqualTo(40 * 16);
  }

  @Test
  void disconnectAnswersWhatIsInFlightThenCloses() {
    ArrayDeque<Runnable> queued = new ArrayDeque<>();
    connect("disk", false, queued::add);
    ch.writeInbound(request(0, NBD_CMD_FLUSH, 1, 0, 0, null));
    ch.writeInbound(request(0, NBD_CMD_DISC, 2, 0, 0, null));
    ch.writeInbound(request(0, NBD_CMD_FLUSH, 3, 0, 0, null)); // after DISC: ignored
    ch.runPendingTasks();
    assertThat(ch.isActive()).isTrue();
    queued.poll().run();
    Reply r = reply(out(ch));
    assertThat(r.handle()).isEqualTo(1);
    assertThat(queued).isEmpty();
    assertThat(ch.isActive()).isFalse();
  }
}
