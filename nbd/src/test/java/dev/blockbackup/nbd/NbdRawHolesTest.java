package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.*;
import static dev.blockbackup.nbd.Wire.clientFlags;
import static dev.blockbackup.nbd.Wire.goData;
import static dev.blockbackup.nbd.Wire.option;
import static dev.blockbackup.nbd.Wire.out;
import static dev.blockbackup.nbd.Wire.reply;
import static dev.blockbackup.nbd.Wire.request;
import static org.assertj.core.api.Assertions.assertThat;

import com.fasterxml.jackson.databind.JsonNode;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.testkit.QemuImg;
import io.netty.buffer.ByteBuf;
import io.netty.channel.embedded.EmbeddedChannel;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A sparse raw file exported by our server: nbdinfo (libnbd) sees the holes qemu-img sees in the
 * file itself, and NBD_CMD_WRITE_ZEROES with NBD_CMD_FLAG_FAST_ZERO succeeds by punching a hole.
 */
class NbdRawHolesTest {

  static final long SIZE = 24L << 20;

  @TempDir Path dir;
  Path sock;
  Path image;
  RawImage disk;
  NbdServer server;

  @BeforeEach
  void serve() throws Exception {
    sock = Files.createTempDirectory(Path.of("/tmp"), "bbnbd").resolve("s");
    image = dir.resolve("disk.raw");
    disk = RawImage.create(image, SIZE, CacheMode.UNSAFE);
    // regions of 64 KiB to 2 MiB: random data, never written, or written and punched again
    SplittableRandom r = new SplittableRandom(17);
    long pos = 0;
    while (pos < SIZE) {
      int len = (int) Math.min(SIZE - pos, 65536L * r.nextInt(1, 33));
      byte[] b = new byte[len];
      int kind = r.nextInt(3);
      if (kind != 1) {
        r.nextBytes(b);
        disk.write(pos, ByteBuffer.wrap(b));
      }
      if (kind == 2) {
        disk.discard(pos, len);
      }
      pos += len;
    }
    disk.flush();
    server = NbdServer.builder().export(NbdExport.of("disk", disk)).unixSocket(sock).build();
    server.start();
  }

  @AfterEach
  void stop() throws Exception {
    server.close();
    disk.close();
    Files.deleteIfExists(sock);
    Files.deleteIfExists(sock.getParent());
  }

  /** A run of the disk: where it starts, how long it is, and whether it is a hole. */
  record Run(long start, long length, boolean hole) {}

  @Test
  @Tag("interop")
  void nbdinfoMapOfTheExportListsTheHolesQemuImgMapListsInTheFile() {
    List<Run> qemu = new ArrayList<>();
    for (JsonNode e : QemuImg.img("map", "--output=json", "-f", "raw", image).assertExit(0).json()) {
      add(qemu, new Run(e.get("start").asLong(), e.get("length").asLong(), !e.get("data").asBoolean()));
    }
    String out = QemuImg.run("nbdinfo", "--map", "nbd+unix:///disk?socket=" + sock).assertExit(0).out();
    List<Run> nbd = new ArrayList<>();
    for (String line : out.lines().toList()) {
      String[] f = line.trim().split("\\s+");
      // "offset length type description": type bit 0 is NBD_STATE_HOLE
      add(nbd, new Run(Long.parseLong(f[0]), Long.parseLong(f[1]), (Integer.parseInt(f[2]) & NBD_STATE_HOLE) != 0));
    }
    assertThat(nbd).containsExactlyElementsOf(qemu);
    assertThat(nbd).filteredOn(Run::hole).hasSizeGreaterThan(3);
  }

  @Test
  void fastZeroThroughNbdPunchesAHole() throws Exception {
    long at = firstDataExtent();
    EmbeddedChannel ch = Wire.channel(Wire.settings(Runnable::run, NbdExport.of("disk", disk)));
    ch.writeInbound(clientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES));
    ch.writeInbound(option(NBD_OPT_GO, goData("disk")));
    out(ch).release();
    ch.writeInbound(request(NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_WRITE_ZEROES, 1, at, 65536, null));
    ByteBuf b = out(ch);
    assertThat(reply(b).error()).as("NBD error of a fast zero").isZero();
    b.release();
    // without NBD_CMD_FLAG_NO_HOLE the zeroed range may be unmapped: it is a hole now
    assertThat(disk.blockStatus(at, 65536)).containsExactly(Extent.zero(at, 65536, true));
    ch.writeInbound(request(NBD_CMD_FLAG_FAST_ZERO | NBD_CMD_FLAG_NO_HOLE, NBD_CMD_WRITE_ZEROES, 2, at + 65536, 4096, null));
    b = out(ch);
    assertThat(reply(b).error()).as("NBD error of a fast zero that keeps the blocks").isZero();
    b.release();
    ByteBuffer back = ByteBuffer.allocate(65536 + 4096);
    disk.read(at, back);
    assertThat(back.flip().mismatch(ByteBuffer.allocate(back.remaining()))).isEqualTo(-1);
    ch.finishAndReleaseAll();
  }

  private long firstDataExtent() throws Exception {
    for (Extent e : disk.blockStatus(0, SIZE)) {
      if (e.data() && e.length() >= 65536 + 4096) {
        return e.offset();
      }
    }
    throw new AssertionError("the layout has no data extent of 68 KiB");
  }

  private static void add(List<Run> runs, Run r) {
    int last = runs.size() - 1;
    if (last >= 0 && runs.get(last).hole() == r.hole() && runs.get(last).start() + runs.get(last).length() == r.start()) {
      runs.set(last, new Run(runs.get(last).start(), runs.get(last).length() + r.length(), r.hole()));
    } else {
      runs.add(r);
    }
  }
}
