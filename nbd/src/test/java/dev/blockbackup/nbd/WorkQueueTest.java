package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.*;
import static dev.blockbackup.nbd.Wire.clientFlags;
import static dev.blockbackup.nbd.Wire.goData;
import static dev.blockbackup.nbd.Wire.option;
import static dev.blockbackup.nbd.Wire.out;
import static dev.blockbackup.nbd.Wire.reply;
import static dev.blockbackup.nbd.Wire.request;
import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.nbd.Wire.Reply;
import io.netty.buffer.ByteBuf;
import io.netty.channel.embedded.EmbeddedChannel;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * The server's bounded work queue through EmbeddedChannels: connections that share it stop
 * reading while it is full and read again once it drains; no request is refused or lost for it.
 */
class WorkQueueTest {

  static final int SIZE = 1 << 20;

  final MemoryDevice disk = new MemoryDevice(SIZE);
  /** The worker pool, run by hand: the test decides when each request's block I/O happens. */
  final Deque<Runnable> pool = new ArrayDeque<>();
  final WorkQueue queue = new WorkQueue(pool::add, 2);
  final ConnectionSettings settings = Wire.settings(queue, NbdExport.of("disk", disk));

  EmbeddedChannel connect() {
    EmbeddedChannel ch = Wire.channel(settings);
    ch.writeInbound(clientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES));
    ch.writeInbound(option(NBD_OPT_GO, goData("disk")));
    out(ch).release();
    assertThat(ch.pipeline().get(TransmissionHandler.class)).isNotNull();
    return ch;
  }

  /** The handles of the simple read replies of {@code length} bytes written so far, in order. */
  static List<Long> readReplies(EmbeddedChannel ch, int length) {
    ByteBuf b = out(ch);
    List<Long> handles = new ArrayList<>();
    while (b.isReadable()) {
      Reply r = reply(b);
      assertThat(r.error()).as("reply to %d", r.handle()).isZero();
      b.skipBytes(length);
      handles.add(r.handle());
    }
    b.release();
    return handles;
  }

  @Test
  void aFullQueueStopsEveryConnectionsReadsUntilItDrainsAndAnswersEverything() {
    EmbeddedChannel a = connect();
    EmbeddedChannel b = connect();
    disk.bytes[7] = 7;

    a.writeInbound(request(0, NBD_CMD_READ, 1, 0, 512, null));
    assertThat(a.config().isAutoRead()).as("one request: room left").isTrue();
    a.writeInbound(request(0, NBD_CMD_READ, 2, 512, 512, null));
    assertThat(queue.isFull()).isTrue();
    assertThat(a.config().isAutoRead()).as("a filled the queue").isFalse();

    // b read before it could know: its request is queued all the same, then b stops reading too
    b.writeInbound(request(0, NBD_CMD_READ, 3, 0, 512, null));
    assertThat(queue.queued()).isEqualTo(3);
    assertThat(pool).as("every request handed to the workers").hasSize(3);
    assertThat(b.config().isAutoRead()).isFalse();
    assertThat(readReplies(a, 512)).as("no refusal for a full queue").isEmpty();
    assertThat(readReplies(b, 512)).isEmpty();

    pool.poll().run(); // request 1 is done: 2 left, still full
    assertThat(readReplies(a, 512)).containsExactly(1L);
    assertThat(a.config().isAutoRead()).isFalse();
    assertThat(b.config().isAutoRead()).isFalse();

    pool.poll().run(); // request 2 is done: room, both connections read again
    assertThat(readReplies(a, 512)).containsExactly(2L);
    b.runPendingTasks();
    assertThat(a.config().isAutoRead()).isTrue();
    assertThat(b.config().isAutoRead()).isTrue();

    pool.poll().run();
    assertThat(readReplies(b, 512)).containsExactly(3L);
    assertThat(queue.queued()).isZero();
    a.finishAndReleaseAll();
    b.finishAndReleaseAll();
  }

  @Test
  void aConnectionStopsReadingWhenOthersFillTheQueueAndResumesWithoutARequestOfItsOwn() {
    EmbeddedChannel a = connect();
    EmbeddedChannel b = connect();
    b.writeInbound(request(0, NBD_CMD_READ, 10, 0, 512, null));
    a.writeInbound(request(0, NBD_CMD_READ, 1, 0, 512, null));
    assertThat(a.config().isAutoRead()).isFalse();
    assertThat(b.config().isAutoRead()).isTrue(); // b learns at its next event: here, its reply

    pool.poll().run(); // b's request: queue has room again, and b's reply reopens nothing it closed
    assertThat(readReplies(b, 512)).containsExactly(10L);
    a.runPendingTasks();
    assertThat(a.config().isAutoRead()).as("a, with nothing of its own done, reads again").isTrue();
    pool.poll().run();
    assertThat(readReplies(a, 512)).containsExactly(1L);
    a.finishAndReleaseAll();
    b.finishAndReleaseAll();
  }
}
