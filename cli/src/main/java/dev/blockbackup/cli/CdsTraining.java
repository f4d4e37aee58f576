package dev.blockbackup.cli;

import java.io.IOException;
import java.io.PrintWriter;
import java.io.Writer;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Comparator;
import java.util.SplittableRandom;
import java.util.stream.Stream;

/**
 * The training run behind {@code bin/blockbackup}'s class data sharing archive: runs every command
 * once on small images in a scratch directory, in one JVM, so that the list of classes it loads
 * (-XX:DumpLoadedClassList) covers what any later run needs. The launcher then dumps a static
 * archive from that list; a static archive, unlike one written at a run's exit, can hold picocli's
 * classes, whose class files are of Java 5 and so were left out of the dynamic one.
 *
 * <p>Not a test: it asserts nothing and prints nothing. A command that fails here only leaves its
 * classes out of the archive, which costs speed, never correctness; the exit status says so.
 */
final class CdsTraining {

  private CdsTraining() {}

  public static void main(String[] args) throws IOException {
    System.exit(train() == 0 ? 0 : 1);
  }

  /** Runs the commands; returns how many did not end as they should. */
  static int train() throws IOException {
    Path dir = Files.createTempDirectory("blockbackup-cds");
    int failed = 0;
    try {
      String raw = dir.resolve("a.raw").toString();
      String qcow2 = dir.resolve("a.qcow2").toString();
      String overlay = dir.resolve("top.qcow2").toString();
      failed += run("--version");
      failed += run("--help");
      failed += run("help", "backup");
      failed += run("create", "-f", "raw", raw, "8M");
      writeSomeData(Path.of(raw));
      failed += run("info", raw);
      failed += run("info", "--output", "json", raw);
      failed += run("convert", "--timing", "-f", "raw", "-O", "qcow2", raw, qcow2);
      failed += run("convert", "-c", "-O", "qcow2", raw, dir.resolve("c.qcow2").toString());
      failed += run("convert", "-O", "raw", qcow2, dir.resolve("b.raw").toString());
      failed += run("create", "-f", "qcow2", "-b", qcow2, "-F", "qcow2", overlay);
      failed += run("info", overlay);
      failed += run("backup", "--sync", "full", "-t", "unsafe", "-q", qcow2, dir.resolve("f.qcow2").toString());
      failed += run("backup", "--sync", "full", "--progress", "plain", "--target-format", "raw", raw,
          dir.resolve("f.raw").toString());
      failed += run("backup", "--sync", "top", "--progress", "plain", overlay, dir.resolve("t.qcow2").toString());
      // The error path: this one must fail.
      failed += 1 - run("convert", "-O", "qcow2", dir.resolve("missing.raw").toString(), qcow2);
    } finally {
      try (Stream<Path> files = Files.walk(dir)) {
        files.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
      }
    }
    return failed;
  }

  private static int run(String... args) {
    PrintWriter none = new PrintWriter(Writer.nullWriter());
    return Main.run(none, none, args) == 0 ? 0 : 1;
  }

  /** Random data in the first half of every MiB, so that copies see data, zeros and holes. */
  private static void writeSomeData(Path raw) throws IOException {
    SplittableRandom random = new SplittableRandom(1);
    byte[] half = new byte[512 << 10];
    try (FileChannel ch = FileChannel.open(raw, StandardOpenOption.WRITE)) {
      for (long mib = 0; mib < 8; mib += 2) {
        random.nextBytes(half);
        ch.write(ByteBuffer.wrap(half), mib << 20);
      }
    }
  }
}
