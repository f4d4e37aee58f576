package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.*;
import static dev.blockbackup.nbd.Wire.clientFlags;
import static dev.blockbackup.nbd.Wire.goData;
import static dev.blockbackup.nbd.Wire.metaData;
import static dev.blockbackup.nbd.Wire.option;
import static dev.blockbackup.nbd.Wire.optReply;
import static dev.blockbackup.nbd.Wire.out;
import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.nbd.Wire.OptReply;
import dev.blockbackup.engine.BlockNode;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.embedded.EmbeddedChannel;
import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** The handshake state machine through an EmbeddedChannel: greeting, options, their errors. */
class NbdHandshakeTest {

  MemoryDevice disk = new MemoryDevice(1 << 20);
  EmbeddedChannel ch;

  @BeforeEach
  void connect() {
    BlockNode node = BlockNode.of("n", disk);
    node.addBitmap("b1");
    node.addBitmap("b2");
    ch = Wire.channel(Wire.settings(Runnable::run,
        NbdExport.of("disk", disk).withDescription("the disk"), NbdExport.of("ro", disk).withReadOnly(true),
        NbdExport.of("node", node).withBitmap(node, "b1").withBitmap(node, "b2").withAllocationDepth(true)));
  }

  /** Reads the greeting and sends the client flags. */
  ByteBuf greeted(int clientFlags) {
    ByteBuf g = out(ch);
    assertThat(g.readLong()).isEqualTo(NBDMAGIC);
    assertThat(g.readLong()).isEqualTo(IHAVEOPT);
    assertThat(g.readUnsignedShort()).isEqualTo(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    ch.writeInbound(clientFlags(clientFlags));
    return g;
  }

  OptReply ask(int opt, byte[] data) {
    ch.writeInbound(option(opt, data));
    return optReply(out(ch));
  }

  @Test
  void greetingOffersFixedNewstyleAndNoZeroes() {
    assertThat(greeted(NBD_FLAG_C_FIXED_NEWSTYLE).isReadable()).isFalse();
    assertThat(ch.isActive()).isTrue();
  }

  @Test
  void unknownClientFlagClosesTheConnection() {
    greeted(1 << 5);
    ch.runPendingTasks();
    assertThat(ch.isActive()).isFalse();
  }

  @Test
  void badOptionMagicClosesTheConnection() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    ch.writeInbound(Unpooled.buffer().writeLong(0x1234).writeInt(NBD_OPT_LIST).writeInt(0));
    ch.runPendingTasks();
    assertThat(ch.isActive()).isFalse();
  }

  @Test
  void unknownOptionIsAnsweredUnsupAndTheHandshakeGoesOn() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    OptReply r = ask(99, new byte[3]);
    assertThat(r.option()).isEqualTo(99);
    assertThat(r.type()).isEqualTo(NBD_REP_ERR_UNSUP);
    assertThat(ask(NBD_OPT_STRUCTURED_REPLY, new byte[0]).type()).isEqualTo(NBD_REP_ACK);
  }

  @Test
  void starttlsIsRefusedAsUnsupported() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    assertThat(ask(NBD_OPT_STARTTLS, new byte[0]).type()).isEqualTo(NBD_REP_ERR_UNSUP);
  }

  @Test
  void optionOver64KiBIsSkippedAndAnsweredTooBig() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    OptReply r = ask(NBD_OPT_GO, new byte[MAX_OPTION_LENGTH + 1]);
    assertThat(r.type()).isEqualTo(NBD_REP_ERR_TOO_BIG);
    assertThat(ask(NBD_OPT_LIST, new byte[0]).type()).isEqualTo(NBD_REP_SERVER);
  }

  @Test
  void optionLengthOver16MiBClosesAtOnce() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    ch.writeInbound(Unpooled.buffer().writeLong(IHAVEOPT).writeInt(NBD_OPT_GO).writeInt(-1));
    ch.runPendingTasks();
    assertThat(ch.isActive()).isFalse();
  }

  @Test
  void listNamesEveryExportWithItsDescription() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    ch.writeInbound(option(NBD_OPT_LIST, new byte[0]));
    ByteBuf b = out(ch);
    OptReply first = optReply(b);
    OptReply second = optReply(b);
    assertThat(optReply(b).text()).endsWith("node");
    assertThat(optReply(b).type()).isEqualTo(NBD_REP_ACK);
    assertThat(first.type()).isEqualTo(NBD_REP_SERVER);
    ByteBuf d = Unpooled.wrappedBuffer(first.data());
    byte[] name = new byte[d.readInt()];
    d.readBytes(name);
    assertThat(new String(name, StandardCharsets.UTF_8)).isEqualTo("disk");
    assertThat(d.toString(StandardCharsets.UTF_8)).isEqualTo("the disk");
    assertThat(second.text()).endsWith("ro");
  }

  @Test
  void listWithDataIsInvalid() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    assertThat(ask(NBD_OPT_LIST, new byte[1]).type()).isEqualTo(NBD_REP_ERR_INVALID);
  }

  @Test
  void infoSendsSizeFlagsNameDescriptionAndBlockSizes() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    ch.writeInbound(option(NBD_OPT_INFO, goData("disk", NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE)));
    ByteBuf b = out(ch);
    ByteBuf export = Unpooled.wrappedBuffer(optReply(b).data());
    assertThat(export.readUnsignedShort()).isEqualTo(NBD_INFO_EXPORT);
    assertThat(export.readLong()).isEqualTo(1 << 20);
    int flags = export.readUnsignedShort();
    assertThat(flags).isEqualTo(NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE
        | NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO);
    assertThat(optReply(b).data()).isEqualTo(concat(new byte[] {0, NBD_INFO_NAME}, "disk"));
    assertThat(optReply(b).data()).isEqualTo(concat(new byte[] {0, NBD_INFO_DESCRIPTION}, "the disk"));
    ByteBuf bs = Unpooled.wrappedBuffer(optReply(b).data());
    assertThat(bs.readUnsignedShort()).isEqualTo(NBD_INFO_BLOCK_SIZE);
    assertThat(new int[] {bs.readInt(), bs.readInt(), bs.readInt()}).containsExactly(1, 4096, 32 << 20);
    assertThat(optReply(b).type()).isEqualTo(NBD_REP_ACK);
    // INFO leaves the handshake going
    assertThat(ask(NBD_OPT_GO, goData("nope")).type()).isEqualTo(NBD_REP_ERR_UNKNOWN);
  }

  @Test
  void readOnlyExportAdvertisesReadOnlyAndNoTrimOrZero() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    ask(NBD_OPT_STRUCTURED_REPLY, new byte[0]);
    ch.writeInbound(option(NBD_OPT_INFO, goData("ro")));
    ByteBuf export = Unpooled.wrappedBuffer(optReply(out(ch)).data());
    export.skipBytes(10);
    assertThat(export.readUnsignedShort()).isEqualTo(NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH
        | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE | NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_DF);
  }

  @Test
  void goToAnUnknownExportIsAnsweredUnknownAndTheHandshakeGoesOn() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    OptReply r = ask(NBD_OPT_GO, goData("nope"));
    assertThat(r.type()).isEqualTo(NBD_REP_ERR_UNKNOWN);
    assertThat(r.text()).contains("nope");
    assertThat(ch.isActive()).isTrue();
  }

  @Test
  void unknownExportOfTheLongestNameGetsAnErrorWithinTheStringLimit() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    OptReply r = ask(NBD_OPT_GO, goData("a".repeat(4096)));
    assertThat(r.type()).isEqualTo(NBD_REP_ERR_UNKNOWN);
    assertThat(r.data().length).isLessThanOrEqualTo(4096);
    assertThat(r.text()).startsWith("export 'aaaa").contains("...");
    assertThat(ask(NBD_OPT_INFO, goData("disk")).type()).isEqualTo(NBD_REP_INFO); // the handshake goes on
  }

  @Test
  void aQuotedMultiByteNameIsCutAtACharacterBoundary() throws Exception {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    ask(NBD_OPT_STRUCTURED_REPLY, new byte[0]);
    // 3-byte characters: 256 bytes of the name end inside one
    OptReply r = ask(NBD_OPT_SET_META_CONTEXT, Wire.metaData("\u20ac".repeat(1365), BASE_ALLOCATION));
    assertThat(r.type()).isEqualTo(NBD_REP_ERR_UNKNOWN);
    assertThat(r.data().length).isLessThanOrEqualTo(4096);
    java.nio.charset.StandardCharsets.UTF_8.newDecoder().decode(java.nio.ByteBuffer.wrap(r.data()));
    assertThat(r.text()).contains("\u20ac".repeat(85) + "...");
  }

  @Test
  void malformedGoIsInvalid() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    assertThat(ask(NBD_OPT_GO, new byte[] {0, 0, 0, 9, 'x'}).type()).isEqualTo(NBD_REP_ERR_INVALID);
    byte[] extra = goData("disk", NBD_INFO_NAME);
    assertThat(ask(NBD_OPT_GO, java.util.Arrays.copyOf(extra, extra.length + 1)).type())
        .isEqualTo(NBD_REP_ERR_INVALID);
    assertThat(ask(NBD_OPT_GO, new byte[] {0, 0, 0, 1, (byte) 0xff, 0, 0}).type()).isEqualTo(NBD_REP_ERR_INVALID);
  }

  @Test
  void emptyNameIsTheDefaultExportWhenThereIsOnlyOne() {
    ch = Wire.channel(Wire.settings(Runnable::run, NbdExport.of("only", disk)));
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    ch.writeInbound(option(NBD_OPT_GO, goData("")));
    ByteBuf b = out(ch);
    assertThat(optReply(b).type()).isEqualTo(NBD_REP_INFO);
    assertThat(ch.pipeline().get(TransmissionHandler.class)).isNotNull();
  }

  @Test
  void emptyNameIsUnknownAmongSeveralExports() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    assertThat(ask(NBD_OPT_GO, goData("")).type()).isEqualTo(NBD_REP_ERR_UNKNOWN);
  }

  @Test
  void exportNameAnswersSizeFlagsAnd124ZerosUnlessNoZeroes() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    ch.writeInbound(option(NBD_OPT_EXPORT_NAME, "disk".getBytes(StandardCharsets.UTF_8)));
    ByteBuf b = out(ch);
    assertThat(b.readableBytes()).isEqualTo(8 + 2 + 124);
    assertThat(b.readLong()).isEqualTo(1 << 20);
    assertThat(ch.pipeline().get(TransmissionHandler.class)).isNotNull();

    connect();
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    ch.writeInbound(option(NBD_OPT_EXPORT_NAME, "ro".getBytes(StandardCharsets.UTF_8)));
    b = out(ch);
    assertThat(b.readableBytes()).isEqualTo(10);
    b.skipBytes(8);
    assertThat(b.readUnsignedShort() & NBD_FLAG_READ_ONLY).isNotZero();
  }

  @Test
  void exportNameOfAnUnknownExportCloses() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    ch.writeInbound(option(NBD_OPT_EXPORT_NAME, "nope".getBytes(StandardCharsets.UTF_8)));
    ch.runPendingTasks();
    assertThat(ch.isActive()).isFalse();
  }

  @Test
  void abortIsAckedThenCloses() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    OptReply r = ask(NBD_OPT_ABORT, new byte[0]);
    assertThat(r.type()).isEqualTo(NBD_REP_ACK);
    assertThat(ch.isActive()).isFalse();
  }

  @Test
  void settingMetaContextsNeedsStructuredRepliesFirstListingDoesNot() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    assertThat(ask(NBD_OPT_SET_META_CONTEXT, metaData("disk", BASE_ALLOCATION)).type())
        .isEqualTo(NBD_REP_ERR_INVALID);
    assertThat(ask(NBD_OPT_LIST_META_CONTEXT, metaData("disk", BASE_ALLOCATION)).type())
        .isEqualTo(NBD_REP_META_CONTEXT);
  }

  @Test
  void structuredRepliesTwiceIsRefusedAsQemuDoes() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    assertThat(ask(NBD_OPT_STRUCTURED_REPLY, new byte[0]).type()).isEqualTo(NBD_REP_ACK);
    OptReply again = ask(NBD_OPT_STRUCTURED_REPLY, new byte[0]);
    assertThat(again.type()).isEqualTo(NBD_REP_ERR_INVALID);
    assertThat(again.text()).contains("already negotiated");
  }

  /** The context names and ids one LIST or SET option answers with, as "id name". */
  private java.util.List<String> contexts(int opt, String export, String... queries) {
    ch.writeInbound(option(opt, metaData(export, queries)));
    ByteBuf b = out(ch);
    java.util.List<String> found = new java.util.ArrayList<>();
    for (OptReply r; (r = optReply(b)).type() == NBD_REP_META_CONTEXT; ) {
      found.add(Unpooled.wrappedBuffer(r.data()).readInt() + " "
          + new String(r.data(), 4, r.data().length - 4, StandardCharsets.UTF_8));
    }
    assertThat(b.isReadable()).isFalse();
    return found;
  }

  @Test
  void qemuContextsAreListedByNamespaceAndSelectedByFullName() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    ask(NBD_OPT_STRUCTURED_REPLY, new byte[0]);
    int list = NBD_OPT_LIST_META_CONTEXT;
    assertThat(contexts(list, "node")).containsExactly("0 base:allocation", "0 qemu:allocation-depth",
        "0 qemu:dirty-bitmap:b1", "0 qemu:dirty-bitmap:b2");
    assertThat(contexts(list, "node", "qemu:")).containsExactly("0 qemu:allocation-depth",
        "0 qemu:dirty-bitmap:b1", "0 qemu:dirty-bitmap:b2");
    assertThat(contexts(list, "node", "qemu:dirty-bitmap:")).containsExactly("0 qemu:dirty-bitmap:b1",
        "0 qemu:dirty-bitmap:b2");
    assertThat(contexts(list, "disk", "qemu:")).isEmpty(); // an export offers only what it was given
    int set = NBD_OPT_SET_META_CONTEXT;
    assertThat(contexts(set, "node", "qemu:", "qemu:dirty-bitmap:", "qemu:dirty-bitmap:nope")).isEmpty();
    assertThat(contexts(set, "node", "qemu:dirty-bitmap:b2", BASE_ALLOCATION, "qemu:allocation-depth"))
        .containsExactly(BASE_ALLOCATION_ID + " base:allocation",
            MetaContexts.ALLOCATION_DEPTH_ID + " qemu:allocation-depth",
            (MetaContexts.FIRST_BITMAP_ID + 1) + " qemu:dirty-bitmap:b2");
  }

  @Test
  void listMetaContextFindsBaseAllocationByNameByNamespaceAndByDefault() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    ask(NBD_OPT_STRUCTURED_REPLY, new byte[0]);
    for (String[] q : new String[][] {{}, {"base:"}, {BASE_ALLOCATION}, {"qemu:dirty-bitmap:x", BASE_ALLOCATION}}) {
      ch.writeInbound(option(NBD_OPT_LIST_META_CONTEXT, metaData("disk", q)));
      ByteBuf b = out(ch);
      OptReply r = optReply(b);
      assertThat(r.type()).isEqualTo(NBD_REP_META_CONTEXT);
      assertThat(new String(r.data(), 4, r.data().length - 4, StandardCharsets.UTF_8)).isEqualTo(BASE_ALLOCATION);
      assertThat(optReply(b).type()).isEqualTo(NBD_REP_ACK);
    }
    assertThat(ask(NBD_OPT_LIST_META_CONTEXT, metaData("disk", "qemu:allocation-depth")).type())
        .isEqualTo(NBD_REP_ACK);
    assertThat(ask(NBD_OPT_LIST_META_CONTEXT, metaData("nope")).type()).isEqualTo(NBD_REP_ERR_UNKNOWN);
    assertThat(ask(NBD_OPT_LIST_META_CONTEXT, new byte[] {0, 0, 0, 4, 'd'}).type()).isEqualTo(NBD_REP_ERR_INVALID);
  }

  @Test
  void setMetaContextSelectsBaseAllocationWithAnId() {
    greeted(NBD_FLAG_C_FIXED_NEWSTYLE);
    ask(NBD_OPT_STRUCTURED_REPLY, new byte[0]);
    ch.writeInbound(option(NBD_OPT_SET_META_CONTEXT, metaData("disk", BASE_ALLOCATION)));
    ByteBuf b = out(ch);
    OptReply r = optReply(b);
    assertThat(r.type()).isEqualTo(NBD_REP_META_CONTEXT);
    assertThat(Unpooled.wrappedBuffer(r.data()).readInt()).isEqualTo(BASE_ALLOCATION_ID);
    assertThat(optReply(b).type()).isEqualTo(NBD_REP_ACK);
    // "base:" alone selects nothing
    assertThat(ask(NBD_OPT_SET_META_CONTEXT, metaData("disk", "base:")).type()).isEqualTo(NBD_REP_ACK);
  }

  private static byte[] concat(byte[] a, String s) {
    byte[] b = s.getBytes(StandardCharsets.UTF_8);
    byte[] out = java.util.Arrays.copyOf(a, a.length + b.length);
    System.arraycopy(b, 0, out, a.length, b.length);
    return out;
  }
}
