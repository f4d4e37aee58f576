package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.*;

import com.code_intelligence.jazzer.api.FuzzedDataProvider;
import com.code_intelligence.jazzer.junit.FuzzTest;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.embedded.EmbeddedChannel;

/**
 * Hostile bytes from a coverage-guided fuzzer into the server's pipeline, in the handshake or
 * (after a valid NBD_OPT_GO with structured replies and base:allocation) as requests, cut into
 * arbitrary reads. Whatever comes, the server answers or closes that connection: no exception may
 * reach the pipeline's tail (EmbeddedChannel.checkException rethrows it), and nothing is buffered
 * beyond one frame (a write's payload is at most 32 MiB; longer ones are skipped as they come).
 *
 * <p>The default build replays the inputs under {@code NbdFuzzTestInputs/} (regression mode);
 * {@code JAZZER_FUZZ=1 ./mvnw -pl nbd -am test -Dtest=NbdFuzzTest -Dsurefire.failIfNoSpecifiedTests=false}
 * fuzzes.
 */
class NbdFuzzTest {

  @FuzzTest(maxDuration = "60s")
  void hostileBytesAreAnsweredOrCloseTheConnection(FuzzedDataProvider in) {
    MemoryDevice disk = new MemoryDevice(64 << 10);
    EmbeddedChannel ch = Wire.channel(Wire.settings(Runnable::run,
        NbdExport.of("disk", disk), NbdExport.of("ro", disk).withReadOnly(true)));
    try {
      if (in.consumeBoolean()) {
        ch.writeInbound(Wire.clientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES));
        ch.writeInbound(Wire.option(NBD_OPT_STRUCTURED_REPLY, new byte[0]));
        ch.writeInbound(Wire.option(NBD_OPT_SET_META_CONTEXT, Wire.metaData("disk", BASE_ALLOCATION)));
        ch.writeInbound(Wire.option(NBD_OPT_GO, Wire.goData(in.consumeBoolean() ? "disk" : "ro")));
      }
      while (in.remainingBytes() > 0 && ch.isOpen()) {
        byte[] chunk = in.consumeBytes(in.consumeInt(1, 512));
        ch.writeInbound(Unpooled.wrappedBuffer(chunk));
        ch.runPendingTasks();
        ch.checkException();
        drain(ch);
      }
      ch.runPendingTasks();
      ch.checkException();
    } finally {
      drain(ch);
      ch.finishAndReleaseAll();
    }
  }

  private static void drain(EmbeddedChannel ch) {
    for (Object o; (o = ch.readOutbound()) != null; ) {
      ((ByteBuf) o).release();
    }
    for (Object o; (o = ch.readInbound()) != null; ) {
      io.netty.util.ReferenceCountUtil.release(o);
    }
  }
}
