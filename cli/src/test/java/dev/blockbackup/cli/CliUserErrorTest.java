package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/** Every user mistake gets one clear line on stderr, exit 1, and never a stack trace. */
class CliUserErrorTest {

  @TempDir static Path dir;

  @BeforeEach
  void images() throws IOException {
    Path raw = dir.resolve("disk.raw");
    if (!Files.exists(raw)) {
      Cli.run("create", "-f", "raw", raw, "1M").ok();
      // A file with the qcow2 magic and version 3 but nonsense everywhere else.
      ByteBuffer b = ByteBuffer.allocate(4096);
      b.putInt(0x514649fb).putInt(3).putLong(0).putInt(0).putInt(77);
      b.clear();
      try (FileChannel c = FileChannel.open(dir.resolve("bad.qcow2"), StandardOpenOption.CREATE, StandardOpenOption.WRITE)) {
        c.write(b);
      }
    }
  }

  static Stream<Arguments> mistakes() {
    List<Arguments> m = new ArrayList<>();
    m.add(Arguments.of("no such file (info)", List.of("info", "nope.qcow2"), "cannot open 'nope.qcow2': no such file"));
    m.add(Arguments.of("no such file (convert)", List.of("convert", "-O", "qcow2", "nope.raw", "$/out.qcow2"), "no such file"));
    m.add(Arguments.of("a directory", List.of("info", "$"), "it is a directory"));
    m.add(Arguments.of("unknown format (info)", List.of("info", "-f", "vmdk", "$/disk.raw"), "unknown format 'vmdk'"));
    m.add(Arguments.of("unknown format (create)", List.of("create", "-f", "vhdx", "$/x.img", "1M"), "unknown format 'vhdx'"));
    m.add(Arguments.of("unknown target format", List.of("convert", "-O", "vdi", "$/disk.raw", "$/x.vdi"), "unknown format 'vdi'"));
    m.add(Arguments.of("cache mode we do not offer", List.of("convert", "-t", "none", "-O", "qcow2", "$/disk.raw", "$/x.qcow2"), "unsupported cache mode 'none'"));
    m.add(Arguments.of("bad size suffix", List.of("create", "$/x.raw", "12Q"), "invalid image size '12Q'"));
    m.add(Arguments.of("size not a number", List.of("create", "$/x.raw", "big"), "invalid image size 'big'"));
    m.add(Arguments.of("size in fractions of a byte", List.of("create", "$/x.raw", "1.5"), "a fraction needs a k, M, G, T, P or E suffix"));
    m.add(Arguments.of("size missing", List.of("create", "-f", "qcow2", "$/x.qcow2"), "image size missing"));
    m.add(Arguments.of("unknown -o key", List.of("create", "-f", "qcow2", "-o", "foo=1", "$/x.qcow2", "1M"), "invalid option 'foo'"));
    m.add(Arguments.of("-o for raw", List.of("create", "-o", "cluster_size=4k", "$/x.raw", "1M"), "invalid option 'cluster_size' for format raw"));
    m.add(Arguments.of("-o without value", List.of("create", "-f", "qcow2", "-o", "cluster_size", "$/x.qcow2", "1M"), "invalid option 'cluster_size' in -o"));
    m.add(Arguments.of("cluster size not a power of two", List.of("create", "-f", "qcow2", "-o", "cluster_size=3k", "$/x.qcow2", "1M"), "invalid cluster_size '3k'"));
    m.add(Arguments.of("cluster size too big", List.of("convert", "-O", "qcow2", "-o", "cluster_size=4M", "$/disk.raw", "$/x.qcow2"), "invalid cluster_size '4M'"));
    m.add(Arguments.of("backing without format", List.of("create", "-f", "qcow2", "-b", "$/disk.raw", "$/x.qcow2"), "without its format"));
    m.add(Arguments.of("backing format without file", List.of("create", "-f", "qcow2", "-F", "raw", "$/x.qcow2", "1M"), "without a backing file"));
    m.add(Arguments.of("backing for raw", List.of("create", "-b", "$/disk.raw", "-F", "raw", "$/x.raw", "1M"), "not supported by format raw"));
    m.add(Arguments.of("missing backing file", List.of("create", "-f", "qcow2", "-b", "gone.raw", "-F", "raw", "$/x.qcow2"), "no such file"));
    m.add(Arguments.of("own backing file", List.of("create", "-f", "qcow2", "-b", "disk.raw", "-F", "raw", "$/disk.raw"), "cannot be its own backing file"));
    m.add(Arguments.of("compress into raw", List.of("convert", "-c", "-O", "raw", "$/disk.raw", "$/x.raw"), "compression (-c) is not supported by format raw"));
    m.add(Arguments.of("convert onto itself", List.of("convert", "-O", "raw", "$/disk.raw", "$/disk.raw"), "same file"));
    m.add(Arguments.of("bad worker count", List.of("convert", "-m", "0", "$/disk.raw", "$/x.raw"), "invalid -m 0"));
    m.add(Arguments.of("too many workers", List.of("convert", "-m", "17", "$/disk.raw", "$/x.raw"), "invalid -m 17"));
    m.add(Arguments.of("target directory missing", List.of("convert", "$/disk.raw", "$/no/such/dir/x.raw"), "no such directory"));
    m.add(Arguments.of("raw file opened as qcow2", List.of("info", "-f", "qcow2", "$/disk.raw"), "cannot open"));
    m.add(Arguments.of("qcow2 that fails validation", List.of("info", "$/bad.qcow2"), "cannot open"));
    m.add(Arguments.of("qcow2 that fails validation (convert)", List.of("convert", "-O", "raw", "$/bad.qcow2", "$/x.raw"), "cannot open"));
    m.add(Arguments.of("no such file (backup)", List.of("backup", "--sync", "full", "nope.raw", "$/b.qcow2"), "cannot open 'nope.raw': no such file"));
    m.add(Arguments.of("backup target exists", List.of("backup", "--sync", "full", "$/disk.raw", "$/bad.qcow2"), "exists (remove it, or give --existing"));
    m.add(Arguments.of("backup --existing target missing", List.of("backup", "--sync", "full", "--existing", "$/disk.raw", "$/b.qcow2"), "does not exist"));
    m.add(Arguments.of("backup onto its source", List.of("backup", "--sync", "full", "--existing", "$/disk.raw", "$/disk.raw"), "same file"));
    m.add(Arguments.of("backup compress into raw", List.of("backup", "--sync", "full", "--compress", "--target-format", "raw", "$/disk.raw", "$/b.raw"), "--compress is not supported by target format raw"));
    m.add(Arguments.of("backup sync none", List.of("backup", "--sync", "none", "$/disk.raw", "$/b.qcow2"), "--sync none copies only what a guest overwrites"));
    m.add(Arguments.of("backup sync bitmap", List.of("backup", "--sync", "bitmap", "$/disk.raw", "$/b.qcow2"), "needs a dirty bitmap"));
    m.add(Arguments.of("backup unknown sync", List.of("backup", "--sync", "half", "$/disk.raw", "$/b.qcow2"), "invalid --sync 'half'"));
    m.add(Arguments.of("backup bad speed", List.of("backup", "--sync", "full", "--speed", "fast", "$/disk.raw", "$/b.qcow2"), "invalid speed 'fast'"));
    m.add(Arguments.of("backup speed suffix", List.of("backup", "--sync", "full", "--speed", "10Q", "$/disk.raw", "$/b.qcow2"), "invalid speed '10Q'"));
    m.add(Arguments.of("backup bad job id", List.of("backup", "--sync", "full", "--job-id", "1st", "$/disk.raw", "$/b.qcow2"), "Invalid job ID '1st'"));
    m.add(Arguments.of("backup bad progress", List.of("backup", "--sync", "full", "--progress", "loud", "$/disk.raw", "$/b.qcow2"), "invalid --progress 'loud'"));
    m.add(Arguments.of("backup -o with --existing", List.of("backup", "--sync", "full", "--existing", "-o", "cluster_size=4k", "--target-format", "qcow2", "$/disk.raw", "$/bad.qcow2"), "-o applies to a new target only"));
    m.add(Arguments.of("backup compress into existing", List.of("backup", "--sync", "full", "--existing", "--compress", "--target-format", "qcow2", "$/disk.raw", "$/bad.qcow2"), "--compress needs a new target"));
    m.add(Arguments.of("backup -o for raw target", List.of("backup", "--sync", "full", "--target-format", "raw", "-o", "cluster_size=4k", "$/disk.raw", "$/b.raw"), "invalid option 'cluster_size' for format raw"));
    return m.stream();
  }

  @ParameterizedTest(name = "{0}")
  @MethodSource("mistakes")
  void mistakeGivesOneLineAndExitOne(String what, List<String> args, String expected) {
    Cli.Run r = Cli.run(args.stream().map(a -> a.replace("$", dir.toString())).toArray());
    assertThat(r.exit()).as("%s", r).isEqualTo(1);
    assertThat(r.err().lines().toList()).as("%s", r).hasSize(1);
    assertThat(r.err()).as("%s", r).startsWith("blockbackup: ").contains(expected)
        .doesNotContain("Exception").doesNotContain("at dev.").doesNotContain("internal error");
    assertThat(r.out()).as("%s", r).isEmpty();
  }

  @Test
  void debugAddsTheStackTrace() {
    Cli.Run r = Cli.run("info", "--debug", "-f", "vmdk", dir.resolve("disk.raw"));
    assertThat(r.exit()).isEqualTo(1);
    assertThat(r.err().lines().findFirst()).hasValue("blockbackup: unknown format 'vmdk' (known: raw, qcow2)");
    assertThat(r.err()).contains("at dev.blockbackup.cli.");
  }

  @Test
  void unknownFlagIsAUsageErrorWithExitTwo() {
    Cli.Run r = Cli.run("info", "--bogus", dir.resolve("disk.raw"));
    assertThat(r.exit()).isEqualTo(2);
    assertThat(r.err()).contains("Unknown option: '--bogus'").contains("Usage: blockbackup info");
  }

  @Test
  void missingOperandIsAUsageErrorWithExitTwo() {
    Cli.Run r = Cli.run("convert", dir.resolve("disk.raw"));
    assertThat(r.exit()).isEqualTo(2);
    assertThat(r.err()).contains("Missing required parameter").contains("Usage: blockbackup convert");
  }

  @Test
  void noSubcommandIsAUsageError() {
    Cli.Run r = Cli.run();
    assertThat(r.exit()).isEqualTo(2);
    assertThat(r.err()).contains("Missing required subcommand").contains("Commands:");
  }

  @Test
  void refusedBackupLeavesNoTargetBehind() {
    Cli.run("backup", "--sync", "full", "--speed", "fast", dir.resolve("disk.raw"), dir.resolve("never.qcow2"));
    assertThat(dir.resolve("never.qcow2")).doesNotExist();
  }

  @Test
  void failedCreateLeavesNoFileBehind() {
    Cli.run("create", dir.resolve("never.raw"), "12Q");
    assertThat(dir.resolve("never.raw")).doesNotExist();
  }
}
