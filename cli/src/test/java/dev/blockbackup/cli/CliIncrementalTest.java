package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.qcow2.Qcow2Bitmap;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.QemuImg;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code backup --sync incremental --bitmap NAME -b PREV}: a chain of backups from a persistent bitmap. */
class CliIncrementalTest {

  static final long SIZE = 32L << 20;
  static final int CLUSTER = 64 * 1024;

  @TempDir Path dir;

  private static byte[] readAll(Path qcow2) throws Exception {
    try (Qcow2Image img = Qcow2Image.open(qcow2, true)) {
      byte[] b = new byte[(int) img.size()];
      img.read(0, ByteBuffer.wrap(b));
      return b;
    }
  }

  private static void write(Path qcow2, long seed, long... clusters) throws Exception {
    SplittableRandom r = new SplittableRandom(seed);
    try (Qcow2Image img = Qcow2Image.open(qcow2, false)) {
      for (long c : clusters) {
        byte[] b = new byte[4096];
        r.nextBytes(b);
        img.write(c * CLUSTER + 512, ByteBuffer.wrap(b));
      }
    }
  }

  private static long dirty(Path qcow2, String name) throws Exception {
    for (Qcow2Bitmap b : Qcow2Image.inspectBitmaps(qcow2)) {
      if (b.name().equals(name)) {
        return b.bitmap().count();
      }
    }
    throw new AssertionError("no bitmap " + name);
  }

  @Test
  @Tag("interop")
  void aChainOfIncrementalsEachEqualsTheDiskAtItsTime() throws Exception {
    Path disk = dir.resolve("disk.qcow2");
    Qcow2Image.create(disk, Qcow2CreateOptions.of(SIZE)).close();
    write(disk, 1, 0, 1, 2, 3, 100, 200, 300);
    Cli.run("bitmap", "--add", disk, "b0").ok();
    Cli.run("backup", "--sync", "full", "-q", disk, dir.resolve("full.qcow2")).ok();
    String prev = "full.qcow2";
    for (int round = 1; round <= 3; round++) {
      write(disk, 10 + round, round, 50 + round, 400 + round);
      assertThat(dirty(disk, "b0")).isEqualTo(3L * CLUSTER);
      byte[] pointInTime = readAll(disk);
      String name = "inc" + round + ".qcow2";
      Cli.run("backup", "--sync", "incremental", "--bitmap", "b0", "-b", prev, "-q", disk, dir.resolve(name)).ok();
      assertThat(readAll(dir.resolve(name))).as("round %d through its chain", round).isEqualTo(pointInTime);
      QemuImg.assertIdentical(disk, "qcow2", dir.resolve(name), "qcow2");
      QemuImg.assertCheckClean(dir.resolve(name));
      assertThat(dirty(disk, "b0")).as("the bitmap starts over").isZero();
      prev = name;
    }
    QemuImg.assertCheckClean(disk);
  }

  @Test
  void refusedBeforeAnythingIsCreated() throws Exception {
    Path disk = dir.resolve("disk.qcow2");
    Qcow2Image.create(disk, Qcow2CreateOptions.of(SIZE)).close();
    Cli.run("bitmap", "--add", disk, "b0").ok();
    Path t = dir.resolve("t.qcow2");
    assertThat(Cli.run("backup", "--sync", "incremental", disk, t).err())
        .contains("must provide a valid bitmap name for 'incremental' sync mode");
    assertThat(Cli.run("backup", "--sync", "incremental", "--bitmap", "nope", disk, t).err())
        .contains("Bitmap 'nope' could not be found");
    assertThat(Cli.run("backup", "--sync", "full", "--bitmap-mode", "never", disk, t).err())
        .contains("Cannot specify bitmap sync mode without a bitmap");
    assertThat(Cli.run("backup", "--sync", "incremental", "--bitmap", "b0", "-b", "missing.qcow2", disk, t).err())
        .contains("-b 'missing.qcow2': no such file");
    assertThat(Cli.run("backup", "--sync", "full", "--bitmap", "b0", disk, t).err())
        .contains("Bitmap sync mode must be given when providing a bitmap");
    assertThat(Cli.run("backup", "--sync", "incremental", "--bitmap", "b0", "--bitmap-mode", "always", disk, t).err())
        .contains("Bitmap sync mode must be 'on-success'");
    assertThat(Files.exists(t)).as("no target left behind").isFalse();
  }
}
