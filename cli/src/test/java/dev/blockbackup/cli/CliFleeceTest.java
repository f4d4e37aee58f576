package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.blockbackup.testkit.QemuImg;
import java.io.BufferedReader;
import java.io.File;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.TreeMap;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.stream.Stream;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code blockbackup serve --fleece}: argument mistakes in-process; the pull-mode backup itself
 * with QEMU's and libnbd's tools against a serve subprocess: writers change the live export while
 * nbdcopy reads the snapshot export, and the copy is the image as it was when serve started.
 */
class CliFleeceTest {

  static final int CLUSTER = 64 * 1024;

  @TempDir Path dir;
  @TempDir Path fleeceDir;

  private static List<Path> files(Path d) throws Exception {
    try (Stream<Path> s = Files.list(d)) {
      return s.sorted().toList();
    }
  }

  private static void assertOneLineExit1(Cli.Run r) {
    assertThat(r.exit()).as(r.toString()).isEqualTo(1);
    assertThat(r.err().strip()).startsWith("blockbackup: ").doesNotContain("\n").doesNotContain("Exception");
  }

  @Test
  void bitmapNamesBitmapsOfASingleImage() throws Exception {
    Path a = Files.write(dir.resolve("a.raw"), new byte[4096]);
    Path b = Files.write(dir.resolve("b.raw"), new byte[4096]);
    Cli.Run r = Cli.run("serve", "--fleece", "--bitmap", "b0", a, b);
    assertOneLineExit1(r);
    assertThat(r.err()).contains("single IMAGE");
  }

  @Test
  void fleeceDirNeedsFleeceAndAnExistingDirectory() throws Exception {
    Path a = Files.write(dir.resolve("a.raw"), new byte[4096]);
    Cli.Run without = Cli.run("serve", "--fleece-dir", fleeceDir, a);
    assertOneLineExit1(without);
    assertThat(without.err()).contains("only for --fleece");
    Cli.Run missing = Cli.run("serve", "--fleece", "--fleece-dir", fleeceDir.resolve("none"), a);
    assertOneLineExit1(missing);
    assertThat(missing.err()).contains("no such directory");
  }

  @Test
  void aSnapshotNameThatClashesIsRefused() throws Exception {
    Path a = Files.write(dir.resolve("a.raw"), new byte[4096]);
    Path b = Files.write(dir.resolve("b.raw"), new byte[4096]);
    Cli.Run r = Cli.run("serve", "--fleece", a, b + ",name=a-snapshot");
    assertOneLineExit1(r);
    assertThat(r.err()).contains("'a-snapshot'");
  }

  @Test
  void aMissingBitmapIsOneLineAndLeavesNoFleecingImageAndNoLock() throws Exception {
    Path img = dir.resolve("disk.qcow2");
    assertThat(Cli.run("create", "-f", "qcow2", img, "4M").exit()).isZero();
    Path sock = dir.resolve("nbd.sock");
    Cli.Run r = Cli.run("serve", "--fleece", "--bitmap", "nope", "--fleece-dir", fleeceDir, "--nbd", "unix:" + sock,
        img);
    assertOneLineExit1(r);
    assertThat(r.err()).contains("Dirty bitmap 'nope' not found");
    assertThat(files(fleeceDir)).isEmpty();
    assertThat(sock).doesNotExist();
    assertThat(Cli.run("info", img).exit()).isZero();
  }

  @Test
  void withoutFleeceAMissingBitmapIsRefusedToo() throws Exception {
    Path img = dir.resolve("disk.qcow2");
    assertThat(Cli.run("create", "-f", "qcow2", img, "4M").exit()).isZero();
    Cli.Run r = Cli.run("serve", "--bitmap", "nope", "--nbd", "unix:" + dir.resolve("nbd.sock"), img);
    assertOneLineExit1(r);
    assertThat(r.err()).contains("Dirty bitmap 'nope' not found");
    assertThat(Cli.run("info", img).exit()).isZero();
  }

  private static boolean installed(String tool) {
    String path = System.getenv("PATH");
    return path != null && Stream.of(path.split(File.pathSeparator)).anyMatch(d -> Files.isExecutable(Path.of(d, tool)));
  }

  /** A serve subprocess; its output as it comes, line by line. */
  private record Serve(Process process, BufferedReader out) {
    static Serve start(Object... args) throws Exception {
      String java = ProcessHandle.current().info().command().orElse("java");
      List<String> cmd = new ArrayList<>(List.of(java, "-cp", System.getProperty("java.class.path"),
          Main.class.getName(), "serve"));
      for (Object a : args) {
        cmd.add(a.toString());
      }
      Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
      return new Serve(p, new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8)));
    }

    /** SIGTERM, and the exit code once it ended. */
    int stop() throws Exception {
      process.destroy();
      assertThat(process.waitFor(60, TimeUnit.SECONDS)).isTrue();
      return process.exitValue();
    }
  }

  /** One write of the writers: a 64 KiB pattern at a cluster. */
  private record Write(int pattern, long offset) {
    String command() {
      return "write -P 0x" + Integer.toHexString(pattern) + " " + offset + " " + CLUSTER;
    }
  }

  @Test
  @Tag("interop")
  void nbdcopyOfTheSnapshotWhileQemuIoWritesTheLiveExportIsTheImageAtStart() throws Exception {
    assumeTrue(installed("nbdcopy") && installed("qemu-io") && installed("qemu-img"), "nbdcopy, qemu-io, qemu-img");
    long size = 32L * 1024 * 1024;
    Path img = dir.resolve("disk.qcow2");
    QemuImg.img("create", "-f", "qcow2", img, size).assertExit(0);
    QemuImg.io("-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 5M 3M", "-c", "write -P 0x33 31M 1M", img)
        .assertExit(0);
    Path before = dir.resolve("before.qcow2");
    Files.copy(img, before);

    Path sock = dir.resolve("nbd.sock");
    Serve serve = Serve.start(img, "--fleece", "--fleece-dir", fleeceDir, "--nbd", "unix:" + sock);
    AtomicBoolean stop = new AtomicBoolean();
    CompletableFuture<List<Write>> writers = null;
    try {
      String live = serve.out().readLine();
      String snapshot = serve.out().readLine();
      assertThat(live).isEqualTo("nbd+unix:///disk?socket=" + sock);
      assertThat(snapshot).isEqualTo("nbd+unix:///disk-snapshot?socket=" + sock);
      assertThat(files(fleeceDir)).hasSize(1);

      // Rounds of 16 writes through the live export, over the data and the holes alike, until the
      // copy is done; the copy starts only after the first round, so copy-before-write has work.
      AtomicInteger rounds = new AtomicInteger();
      CountDownLatch firstRound = new CountDownLatch(1);
      writers = CompletableFuture.supplyAsync(() -> {
        SplittableRandom rnd = new SplittableRandom(5);
        List<Write> done = new ArrayList<>();
        while (!stop.get() || rounds.get() < 2) {
          List<Object> args = new ArrayList<>(List.of("-f", "raw"));
          List<Write> round = new ArrayList<>();
          for (int i = 0; i < 16; i++) {
            Write w = new Write(1 + rnd.nextInt(255), rnd.nextLong(size / CLUSTER) * CLUSTER);
            round.add(w);
            args.add("-c");
            args.add(w.command());
          }
          args.add(live);
          QemuImg.io(args.toArray()).assertExit(0);
          done.addAll(round);
          rounds.incrementAndGet();
          firstRound.countDown();
        }
        return done;
      });
      writers.whenComplete((w, e) -> firstRound.countDown()); // a writer that failed wakes us too
      assertThat(firstRound.await(120, TimeUnit.SECONDS)).isTrue();
      Path copy = dir.resolve("copy.raw");
      QemuImg.run("nbdcopy", snapshot, copy).assertExit(0);
      stop.set(true);
      List<Write> written = writers.get(120, TimeUnit.SECONDS);
      assertThat(written).hasSizeGreaterThanOrEqualTo(32);

      QemuImg.assertIdentical(copy, "raw", before, "qcow2");

      assertThat(serve.stop()).isZero();
      assertThat(sock).doesNotExist();
      assertThat(files(fleeceDir)).as("the fleecing image is deleted").isEmpty();
      QemuImg.assertCheckClean(img);
      // the live image got every write, in order, over what it held before
      Path expected = dir.resolve("expected.raw");
      QemuImg.img("convert", "-f", "qcow2", "-O", "raw", before, expected).assertExit(0);
      List<Object> replay = new ArrayList<>(List.of("-f", "raw"));
      for (Write w : written) {
        replay.add("-c");
        replay.add(w.command());
      }
      replay.add(expected);
      QemuImg.io(replay.toArray()).assertExit(0);
      QemuImg.assertIdentical(img, "qcow2", expected, "raw");
    } finally {
      stop.set(true);
      serve.process().destroyForcibly();
      if (writers != null) {
        writers.handle((w, e) -> null).get(120, TimeUnit.SECONDS);
      }
    }
  }

  /** Ranges (start -> length) with neighbours joined: servers may split a run where they like. */
  private static Map<Long, Long> joined(Map<Long, Long> ranges) {
    Map<Long, Long> out = new LinkedHashMap<>();
    long start = -1;
    long end = -1;
    for (Map.Entry<Long, Long> e : new TreeMap<>(ranges).entrySet()) {
      if (e.getKey() == end) {
        end += e.getValue();
        continue;
      }
      if (start >= 0) {
        out.put(start, end - start);
      }
      start = e.getKey();
      end = start + e.getValue();
    }
    if (start >= 0) {
      out.put(start, end - start);
    }
    return out;
  }

  /**
   * An incremental pull-mode backup as virtnbdbackup makes one: a full copy when the bitmap was
   * made, writes, then serve --fleece --bitmap; the snapshot's dirty bitmap, read while the live
   * export is written, marks exactly what QEMU's bitmap marked at start, and copying only those
   * ranges from the snapshot onto the full copy gives the image as it was at start.
   */
  @Test
  @Tag("interop")
  void onlyTheFrozenBitmapsDirtyRangesOfTheSnapshotOnTheFullCopyGiveTheImageAtStart() throws Exception {
    assumeTrue(installed("nbdinfo") && installed("qemu-io") && installed("qemu-img") && installed("qemu-nbd"),
        "nbdinfo, qemu-io, qemu-img, qemu-nbd");
    long size = 32L * 1024 * 1024;
    Path img = dir.resolve("disk.qcow2");
    QemuImg.img("create", "-f", "qcow2", img, size).assertExit(0);
    QemuImg.io("-c", "write -P 0x11 0 4M", "-c", "write -P 0x22 20M 1M", img).assertExit(0);
    QemuImg.img("bitmap", "--add", img, "b0").assertExit(0);
    Path full = dir.resolve("full.raw");
    QemuImg.img("convert", "-f", "qcow2", "-O", "raw", img, full).assertExit(0);
    QemuImg.io("-c", "write -P 0x44 2M 64k", "-c", "write -P 0x55 10M 200k", "-c", "write -P 0x66 31M 4k", img)
        .assertExit(0);
    Path before = dir.resolve("before.qcow2");
    Files.copy(img, before);
    Map<Long, Long> atStart = joined(QemuImg.dirtyRanges(before, "b0"));
    assertThat(atStart).isNotEmpty();

    Path sock = dir.resolve("nbd.sock");
    Serve serve = Serve.start(img, "--fleece", "--bitmap", "b0", "--fleece-dir", fleeceDir, "--nbd", "unix:" + sock);
    try {
      String live = serve.out().readLine();
      String snapshot = serve.out().readLine();
      assertThat(serve.out().readLine()).isEqualTo("bitmap context qemu:dirty-bitmap:b0 on disk-snapshot");
      assertThat(snapshot).isEqualTo("nbd+unix:///disk-snapshot?socket=" + sock);
      // after the point in time: over a dirty cluster, over clean ones
      QemuImg.io("-f", "raw", "-c", "write -P 0x77 2M 64k", "-c", "write -P 0x88 16M 1M", "-c", "write -P 0x99 0 64k",
          live).assertExit(0);

      Map<Long, Long> dirty = joined(QemuImg.dirtyRanges(snapshot, "b0"));
      assertThat(dirty).as("the snapshot's bitmap is QEMU's at start").isEqualTo(atStart);
      for (Map.Entry<Long, Long> e : dirty.entrySet()) {
        long off = e.getKey();
        long len = e.getValue();
        String source = "json:{\"driver\":\"raw\",\"offset\":" + off + ",\"size\":" + len + ",\"file\":{"
            + "\"driver\":\"nbd\",\"export\":\"disk-snapshot\",\"server\":{\"type\":\"unix\",\"path\":\""
            + sock + "\"}}}";
        QemuImg.img("convert", "-n", "-f", "raw", source, "--target-image-opts",
            "driver=raw,offset=" + off + ",size=" + len + ",file.filename=" + full).assertExit(0);
      }
      QemuImg.assertIdentical(full, "raw", before, "qcow2");

      assertThat(serve.stop()).isZero();
      assertThat(files(fleeceDir)).isEmpty();
      // the image's own bitmap went on recording: the writes after the point in time are in it too
      Map<Long, Long> after = joined(QemuImg.dirtyRanges(img, "b0"));
      assertThat(after).containsKey(16L * 1024 * 1024).isNotEqualTo(atStart);
    } finally {
      serve.process().destroyForcibly();
    }
  }
}
