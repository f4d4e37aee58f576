package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;

import com.fasterxml.jackson.databind.JsonNode;
import dev.blockbackup.formats.WriteFlag;
import dev.blockbackup.testkit.QemuImg;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * A writer process killed with SIGKILL in the middle of its writes leaves an image that qemu-img
 * check finds free of corruptions (leaks are allowed: they are what a crash may cost), and every
 * byte reads as the last write to it that was made durable (by FUA or a flush before the kill)
 * or as a later write to it.
 */
@Tag("interop")
class Qcow2CrashTest {

  private static final int OPS = 80;

  @TempDir Path dir;

  /** The writes the child makes: op i, with FUA when {@link #fua}, followed by a flush when {@link #flushAfter}. */
  record CrashOp(long offset, int length, long seed) {
    byte[] data() {
      byte[] d = new byte[length];
      new SplittableRandom(seed).nextBytes(d);
      return d;
    }
  }

  static boolean fua(int i) {
    return i % 5 == 4;
  }

  static boolean flushAfter(int i) {
    return i % 7 == 6;
  }

  static List<CrashOp> ops(long seed, long size, int cluster) {
    SplittableRandom r = new SplittableRandom(seed);
    List<CrashOp> ops = new ArrayList<>();
    for (int i = 0; i < OPS; i++) {
      ModelOps.Range g = ModelOps.range(r, size, cluster);
      ops.add(new CrashOp(g.offset(), (int) Math.min(g.length(), 1 << 20), r.nextLong()));
    }
    return ops;
  }

  /**
   * The child: opens the image read-write, makes the writes, prints "ack i" after each one
   * completes (and its flush, if any), then waits to be killed.
   */
  public static void main(String[] args) throws Exception {
    Path path = Paths.get(args[0]);
    long seed = Long.parseLong(args[1]);
    try (Qcow2Image img = Qcow2Image.open(path, false)) {
      List<CrashOp> ops = ops(seed, img.size(), img.alignment());
      for (int i = 0; i < ops.size(); i++) {
        CrashOp op = ops.get(i);
        img.write(op.offset(), ByteBuffer.wrap(op.data()), fua(i) ? new WriteFlag[] {WriteFlag.FUA} : new WriteFlag[0]);
        if (flushAfter(i)) {
          img.flush();
        }
        System.out.println("ack " + i);
        System.out.flush();
      }
      Thread.sleep(600_000);
    }
  }

  @ParameterizedTest(name = "{0}-byte clusters, backing {1}, killed after {2} acks")
  @CsvSource({"65536, none, 1", "65536, none, 9", "65536, none, 40", "4096, none, 70", "4096, raw, 13", "4096, raw, 55",
      "65536, raw, 27", "65536, raw, 80"})
  void aKilledWriterLeavesNoCorruptionAndKeepsWhatWasDurable(int cluster, String backing, int killAfter)
      throws Exception {
    long size = 8L << 20;
    Path path = dir.resolve("crash.qcow2");
    byte[] base = new byte[(int) size];
    Qcow2CreateOptions options = Qcow2CreateOptions.of(size).withClusterSize(cluster);
    if (backing.equals("raw")) {
      base = Qcow2ModelPropertyTest.baseContent(size, cluster);
      ModelRunner.writeRaw(dir.resolve("base.raw"), base);
      options = options.withBacking("base.raw", "raw");
    }
    Qcow2Image.create(path, options).close();
    long seed = cluster * 1000L + killAfter;

    String java = Paths.get(System.getProperty("java.home"), "bin", "java").toString();
    Process child = new ProcessBuilder(java, "-cp", System.getProperty("java.class.path"), getClass().getName(),
        path.toString(), Long.toString(seed)).redirectErrorStream(true).start();
    int acked = -1;
    List<String> output = new ArrayList<>();
    try (BufferedReader out = new BufferedReader(new InputStreamReader(child.getInputStream(), StandardCharsets.UTF_8))) {
      String line;
      while (acked < killAfter - 1 && (line = out.readLine()) != null) {
        output.add(line);
        if (line.startsWith("ack ")) {
          acked = Integer.parseInt(line.substring(4));
        }
      }
    } finally {
      child.destroyForcibly(); // SIGKILL: no close, no flush
      assertThat(child.waitFor(60, TimeUnit.SECONDS)).as("the child died").isTrue();
    }
    assertThat(acked).as("acknowledged writes; the child said: %s", output).isEqualTo(killAfter - 1);

    QemuImg.Result check = QemuImg.img("check", "--output=json", "-f", "qcow2", path);
    JsonNode j = check.json();
    assertThat(j.path("corruptions").asLong(0)).as("corruptions after the kill: %s %s", check.out(), check.err())
        .isZero();
    assertThat(check.exit()).as("qemu-img check exit (0 clean, 3 leaks only): %s %s", check.out(), check.err())
        .isIn(0, 3);

    // Bytes whose last write was durable and that no later write touched must read as that write
    // left them. (A byte a later, non-durable write touched may read old, new or, as in QEMU when
    // the L2 update of a whole-cluster allocation lands before its data, stale bytes.)
    List<CrashOp> ops = ops(seed, size, cluster);
    int lastFlush = -1;
    for (int i = 0; i <= acked; i++) {
      if (flushAfter(i)) {
        lastFlush = i;
      }
    }
    int[] last = new int[(int) size]; // the last op touching each byte, over all ops the child may have run
    Arrays.fill(last, -1);
    for (int i = 0; i < ops.size(); i++) {
      CrashOp op = ops.get(i);
      Arrays.fill(last, (int) op.offset(), (int) op.offset() + op.length(), i);
    }
    byte[] actual = ModelRunner.qemuContent(path, "qcow2", dir);
    long strict = 0;
    for (int i = -1; i <= acked; i++) {
      boolean durableOp = i < 0 || i <= lastFlush || fua(i);
      if (!durableOp) {
        continue;
      }
      byte[] d = i < 0 ? null : ops.get(i).data();
      long from = i < 0 ? 0 : ops.get(i).offset();
      long to = i < 0 ? size : from + ops.get(i).length();
      for (long b = from; b < to; b++) {
        if (last[(int) b] != i) {
          continue;
        }
        byte expected = d == null ? base[(int) b] : d[(int) (b - from)];
        strict++;
        if (actual[(int) b] != expected) {
          throw new AssertionError(String.format(
              "byte %d reads 0x%02x after the kill, but its last write, %s, was durable and wrote 0x%02x"
                  + " (acked up to op %d, last flush after op %d)",
              b, actual[(int) b], i < 0 ? "none (the base or zero)" : "op " + i + " " + ops.get(i), expected, acked,
              lastFlush));
        }
      }
    }
    assertThat(strict).as("bytes checked strictly").isGreaterThan(size / 4);

    // and our driver opens the crashed image read-write and reads what qemu reads
    try (Qcow2Image img = Qcow2Image.open(path, false)) {
      ModelRunner.verifyContent(img, actual, "our driver after the kill");
    }
  }
}
