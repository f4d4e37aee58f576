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
import java.util.Set;
import java.util.stream.Collectors;
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
    m.add(Arguments.of("unknown format (info)", List.of("info", "-f", "vmdk", "$/disk.raw"), "Could not open '$/disk.raw': Unknown driver 'vmdk'"));
    m.add(Arguments.of("unknown format (create)", List.of("create", "-f", "vhdx", "$/x.img", "1M"), "Unknown file format 'vhdx'"));
    m.add(Arguments.of("unknown target format", List.of("convert", "-O", "vdi", "$/disk.raw", "$/x.vdi"), "Unknown file format 'vdi'"));
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
    m.add(Arguments.of("backup sync bitmap", List.of("backup", "--sync", "bitmap", "$/disk.raw", "$/b.qcow2"), "must provide a valid bitmap name for 'bitmap' sync mode"));
    m.add(Arguments.of("backup unknown sync", List.of("backup", "--sync", "half", "$/disk.raw", "$/b.qcow2"), "invalid --sync 'half'"));
    m.add(Arguments.of("backup bad speed", List.of("backup", "--sync", "full", "--speed", "fast", "$/disk.raw", "$/b.qcow2"), "invalid speed 'fast'"));
    m.add(Arguments.of("backup speed suffix", List.of("backup", "--sync", "full", "--speed", "10Q", "$/disk.raw", "$/b.qcow2"), "invalid speed '10Q'"));
    m.add(Arguments.of("backup bad job id", List.of("backup", "--sync", "full", "--job-id", "1st", "$/disk.raw", "$/b.qcow2"), "Invalid job ID '1st'"));
    m.add(Arguments.of("backup bad progress", List.of("backup", "--sync", "full", "--progress", "loud", "$/disk.raw", "$/b.qcow2"), "invalid --progress 'loud'"));
    m.add(Arguments.of("backup -o with --existing", List.of("backup", "--sync", "full", "--existing", "-o", "cluster_size=4k", "--target-format", "qcow2", "$/disk.raw", "$/bad.qcow2"), "-o applies to a new target only"));
    m.add(Arguments.of("backup compress into existing", List.of("backup", "--sync", "full", "--existing", "--compress", "--target-format", "qcow2", "$/disk.raw", "$/bad.qcow2"), "--compress needs a new target"));
    m.add(Arguments.of("backup -o for raw target", List.of("backup", "--sync", "full", "--target-format", "raw", "-o", "cluster_size=4k", "$/disk.raw", "$/b.raw"), "invalid option 'cluster_size' for format raw"));
    // Format names are case-sensitive, as qemu-img's: a target's is an unknown file format, a
    // source's or a backing file's an unknown driver.
    m.add(Arguments.of("format case (create -f)", List.of("create", "-f", "QCOW2", "$/x.qcow2", "1M"), "Unknown file format 'QCOW2'"));
    m.add(Arguments.of("format case (create -F)", List.of("create", "-f", "qcow2", "-b", "disk.raw", "-F", "RAW", "$/x.qcow2", "1M"), "Could not open '$/disk.raw': Unknown driver 'RAW'"));
    m.add(Arguments.of("format case (create -o backing_fmt)", List.of("create", "-f", "qcow2", "-o", "backing_file=disk.raw,backing_fmt=Raw", "$/x.qcow2"), "Unknown driver 'Raw'"));
    m.add(Arguments.of("format case (info -f)", List.of("info", "-f", "RAW", "$/disk.raw"), "Could not open '$/disk.raw': Unknown driver 'RAW'"));
    m.add(Arguments.of("format case (convert -O)", List.of("convert", "-O", "QCOW2", "$/disk.raw", "$/x.qcow2"), "Unknown file format 'QCOW2'"));
    m.add(Arguments.of("format case (convert -f)", List.of("convert", "-f", "Raw", "-O", "qcow2", "$/disk.raw", "$/x.qcow2"), "Unknown driver 'Raw'"));
    m.add(Arguments.of("format case (backup --target-format)", List.of("backup", "--sync", "full", "--target-format", "QCOW2", "$/disk.raw", "$/b.qcow2"), "Unknown file format 'QCOW2'"));
    m.add(Arguments.of("format case (backup -f)", List.of("backup", "--sync", "full", "-f", "RAW", "$/disk.raw", "$/b.qcow2"), "Unknown driver 'RAW'"));
    m.add(Arguments.of("format case (backup --existing --target-format)", List.of("backup", "--sync", "full", "--existing", "--target-format", "QCOW2", "$/disk.raw", "$/bad.qcow2"), "Could not open '$/bad.qcow2': Unknown driver 'QCOW2'"));
    // Sizes and their limits.
    m.add(Arguments.of("size above 2^63 - 1", List.of("create", "$/x.raw", "8E"), "invalid image size '8E': larger than 9223372036854775807 bytes"));
    m.add(Arguments.of("negative size", List.of("create", "$/x.raw", "--", "-5"), "invalid image size '-5': a size cannot be negative"));
    m.add(Arguments.of("fraction of a hex size", List.of("create", "$/x.raw", "0x1.5M"), "invalid image size '0x1.5M'"));
    m.add(Arguments.of("qcow2 size above the L1 limit", List.of("create", "-f", "qcow2", "$/x.qcow2", "4P"), "invalid image size '4P': 4503599627370496 bytes is too large for qcow2 with cluster_size 65536"));
    m.add(Arguments.of("qcow2 size above the L1 limit of small clusters", List.of("create", "-f", "qcow2", "-o", "cluster_size=512", "$/x.qcow2", "129G"), "invalid image size '129G'"));
    m.add(Arguments.of("qcow2 -o size above the limit", List.of("create", "-f", "qcow2", "-o", "size=3P", "$/x.qcow2"), "invalid image size '3P'"));
    m.add(Arguments.of("cluster size as a fraction", List.of("create", "-f", "qcow2", "-o", "cluster_size=1.5", "$/x.qcow2", "1M"), "invalid cluster_size '1.5'"));
    // Paths: the host's own reason, before anything is created.
    m.add(Arguments.of("target name too long (create)", List.of("create", "$/" + "n".repeat(300), "1M"), "File name too long"));
    m.add(Arguments.of("target name too long (convert)", List.of("convert", "$/disk.raw", "$/" + "n".repeat(300)), "File name too long"));
    m.add(Arguments.of("target name too long (backup)", List.of("backup", "--sync", "full", "$/disk.raw", "$/" + "n".repeat(300)), "File name too long"));
    m.add(Arguments.of("target under a file (create)", List.of("create", "$/disk.raw/x.raw", "1M"), "is not a directory"));
    m.add(Arguments.of("target directory missing (create)", List.of("create", "-f", "qcow2", "$/no/x.qcow2", "1M"), "no such directory"));
    m.add(Arguments.of("target directory missing (backup)", List.of("backup", "--sync", "full", "$/disk.raw", "$/no/b.qcow2"), "no such directory"));
    m.add(Arguments.of("target is a directory (create)", List.of("create", "$", "1M"), "it is a directory"));
    m.add(Arguments.of("backing name too long", List.of("create", "-f", "qcow2", "-b", "b".repeat(300), "-F", "raw", "$/x.qcow2", "1M"), "File name too long"));
    m.add(Arguments.of("backing name too long, no size", List.of("create", "-f", "qcow2", "-b", "b".repeat(300), "-F", "raw", "$/x.qcow2"), "File name too long"));
    m.add(Arguments.of("backing under a file", List.of("create", "-f", "qcow2", "-b", "disk.raw/x", "-F", "raw", "$/x.qcow2", "1M"), "Not a directory"));
    m.add(Arguments.of("missing backing file, size given", List.of("create", "-f", "qcow2", "-b", "gone.raw", "-F", "raw", "$/x.qcow2", "1M"), "cannot open '$/gone.raw': no such file"));
    m.add(Arguments.of("backing file that is a directory", List.of("create", "-f", "qcow2", "-b", ".", "-F", "raw", "$/x.qcow2", "1M"), "it is a directory"));
    m.add(Arguments.of("unknown backing format", List.of("create", "-f", "qcow2", "-b", "disk.raw", "-F", "vmdk", "$/x.qcow2"), "Unknown driver 'vmdk'"));
    // backup: every option is checked before TARGET is made.
    m.add(Arguments.of("backup job id starting with a digit", List.of("backup", "--sync", "full", "--job-id", "1bad", "$/disk.raw", "$/b.qcow2"), "Invalid job ID '1bad'"));
    m.add(Arguments.of("backup job id with a space", List.of("backup", "--sync", "full", "--job-id", "a b", "$/disk.raw", "$/b.qcow2"), "Invalid job ID 'a b'"));
    m.add(Arguments.of("backup job id with a slash", List.of("backup", "--sync", "full", "--job-id", "a/b", "$/disk.raw", "$/b.qcow2"), "Invalid job ID 'a/b'"));
    m.add(Arguments.of("backup job id not ASCII", List.of("backup", "--sync", "full", "--job-id", "\u00e9t\u00e9", "$/disk.raw", "$/b.qcow2"), "Invalid job ID"));
    m.add(Arguments.of("backup empty job id", List.of("backup", "--sync", "full", "--job-id=", "$/disk.raw", "$/b.qcow2"), "Invalid job ID ''"));
    m.add(Arguments.of("backup negative speed", List.of("backup", "--sync", "full", "--speed=-1", "$/disk.raw", "$/b.qcow2"), "invalid speed '-1'"));
    m.add(Arguments.of("backup speed too large", List.of("backup", "--sync", "full", "--speed", "8E", "$/disk.raw", "$/b.qcow2"), "invalid speed '8E'"));
    m.add(Arguments.of("backup bad cache mode", List.of("backup", "--sync", "full", "-t", "directsync", "$/disk.raw", "$/b.qcow2"), "invalid -t"));
    m.add(Arguments.of("backup bad cluster size", List.of("backup", "--sync", "full", "-o", "cluster_size=3k", "$/disk.raw", "$/b.qcow2"), "invalid cluster_size '3k'"));
    m.add(Arguments.of("backup unknown -o key", List.of("backup", "--sync", "full", "-o", "compat=0.10", "$/disk.raw", "$/b.qcow2"), "invalid option 'compat'"));
    m.add(Arguments.of("backup sync incremental into raw", List.of("backup", "--sync", "incremental", "--target-format", "raw", "$/disk.raw", "$/b.raw"), "must provide a valid bitmap name for 'incremental' sync mode"));
    m.add(Arguments.of("backup bitmap of a raw source", List.of("backup", "--sync", "incremental", "--bitmap", "b0", "$/disk.raw", "$/b.qcow2"), "--bitmap needs a qcow2 SRC"));
    m.add(Arguments.of("convert bad cluster size", List.of("convert", "-O", "qcow2", "-o", "cluster_size=0x10M", "$/disk.raw", "$/x.qcow2"), "invalid cluster_size '0x10M'"));
    return m.stream();
  }

  @ParameterizedTest(name = "{0}")
  @MethodSource("mistakes")
  void mistakeGivesOneLineAndExitOneAndCreatesNothing(String what, List<String> args, String expected) throws IOException {
    Set<Path> before = files();
    Cli.Run r = Cli.run(args.stream().map(a -> a.replace("$", dir.toString())).toArray());
    expected = expected.replace("$", dir.toString());
    assertThat(files()).as("files after %s", r).isEqualTo(before);
    assertThat(r.exit()).as("%s", r).isEqualTo(1);
    assertThat(r.err().lines().toList()).as("%s", r).hasSize(1);
    assertThat(r.err()).as("%s", r).startsWith("blockbackup: ").contains(expected)
        .doesNotContain("Exception").doesNotContain("at dev.").doesNotContain("internal error");
    assertThat(r.out()).as("%s", r).isEmpty();
  }

  /** Every file under the test's directory, to show that a refused command made none. */
  private static Set<Path> files() throws IOException {
    try (Stream<Path> s = Files.walk(dir)) {
      return s.collect(Collectors.toSet());
    }
  }

  @Test
  void backingNameLongerThanTheHeaderHoldsIsRefusedBeforeCreating() throws IOException {
    // A backing file that exists, under a name of more than qcow2's 1023 bytes.
    Path deep = dir;
    for (int i = 0; i < 6; i++) {
      deep = deep.resolve("d".repeat(200));
    }
    Files.createDirectories(deep);
    Cli.run("create", deep.resolve("b.raw"), "1M").ok();
    Path overlay = dir.resolve("long.qcow2");
    Cli.Run r = Cli.run("create", "-f", "qcow2", "-b", deep.resolve("b.raw"), "-F", "raw", overlay);
    assertThat(r.exit()).as("%s", r).isEqualTo(1);
    assertThat(r.err()).contains("longer than qcow2's limit of 1023");
    assertThat(overlay).doesNotExist();
  }

  @Test
  void sourceTooLargeForAQcow2TargetIsRefusedBeforeCreating() {
    // 4 PiB fits 2 MiB clusters, not the default 64 KiB ones.
    Path big = dir.resolve("big.qcow2");
    Cli.run("create", "-f", "qcow2", "-o", "cluster_size=2M", big, "4P").ok();
    for (Cli.Run r : List.of(Cli.run("convert", "-O", "qcow2", big, dir.resolve("big2.qcow2")),
        Cli.run("backup", "--sync", "full", big, dir.resolve("big2.qcow2")))) {
      assertThat(r.exit()).as("%s", r).isEqualTo(1);
      assertThat(r.err()).contains("4503599627370496 bytes are too large for qcow2 with cluster_size 65536");
      assertThat(dir.resolve("big2.qcow2")).doesNotExist();
    }
  }

  @Test
  void aBackingFileUnderWhatBecameAFileIsReportedWithTheHostsReason() throws IOException {
    Path sub = dir.resolve("was-a-dir");
    Files.createDirectories(sub);
    Cli.run("create", sub.resolve("base.raw"), "1M").ok();
    Path overlay = dir.resolve("over.qcow2");
    Cli.run("create", "-f", "qcow2", "-b", "was-a-dir/base.raw", "-F", "raw", overlay).ok();
    Files.delete(sub.resolve("base.raw"));
    Files.delete(sub);
    Files.createFile(sub);
    for (Cli.Run r : List.of(Cli.run("convert", "-O", "raw", overlay, dir.resolve("flat.raw")),
        Cli.run("backup", "--sync", "full", overlay, dir.resolve("flat.qcow2")))) {
      assertThat(r.exit()).as("%s", r).isEqualTo(1);
      assertThat(r.err()).as("%s", r).isEqualTo("blockbackup: cannot open '" + overlay
          + "' as qcow2: cannot open backing file '" + sub.resolve("base.raw") + "': Not a directory\n");
    }
    assertThat(dir.resolve("flat.raw")).doesNotExist();
    assertThat(dir.resolve("flat.qcow2")).doesNotExist();
  }

  @Test
  void aRefusedBackupCanBeRerunOnceCorrected() {
    Path target = dir.resolve("rerun.qcow2");
    Cli.Run bad = Cli.run("backup", "--sync", "full", "--job-id", "1bad", "-q", dir.resolve("disk.raw"), target);
    assertThat(bad.exit()).isEqualTo(1);
    assertThat(target).doesNotExist();
    Cli.run("backup", "--sync", "full", "--job-id", "good1", "-q", dir.resolve("disk.raw"), target).ok();
    assertThat(target).exists();
  }

  @Test
  void debugAddsTheStackTrace() {
    Cli.Run r = Cli.run("info", "--debug", "-f", "vmdk", dir.resolve("disk.raw"));
    assertThat(r.exit()).isEqualTo(1);
    assertThat(r.err().lines().findFirst()).hasValue("blockbackup: Could not open '" + dir.resolve("disk.raw") + "': Unknown driver 'vmdk' (known: raw, qcow2)");
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
