package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import org.junit.jupiter.api.Test;

class CliHelpTest {

  @Test
  void createListsQcow2OptionsWithoutNeedingAFile() {
    Cli.Run r = Cli.run("create", "-f", "qcow2", "-o", "help").ok();
    assertThat(r.out()).startsWith("Supported options for qcow2:")
        .contains("cluster_size=").contains("backing_file=").contains("backing_fmt=").contains("size=");
    assertThat(r.err()).isEmpty();
  }

  @Test
  void convertListsTargetOptionsWithoutNeedingFiles() {
    assertThat(Cli.run("convert", "-O", "qcow2", "-o", "help").ok().out()).contains("cluster_size=").doesNotContain("backing_file");
    assertThat(Cli.run("convert", "-O", "raw", "-o", "?").ok().out()).contains("Supported options for raw:").contains("(none)");
  }

  @Test
  void createWithoutFileIsAUsageError() {
    Cli.Run r = Cli.run("create", "-f", "qcow2");
    assertThat(r.exit()).isEqualTo(2);
    assertThat(r.err()).contains("Missing required parameter: 'FILE'").contains("Usage: blockbackup create");
  }

  @Test
  void convertWithoutTargetIsAUsageError() {
    Cli.Run r = Cli.run("convert", "-O", "qcow2", "src.raw");
    assertThat(r.exit()).isEqualTo(2);
    assertThat(r.err()).contains("Missing required parameter: 'DST'").contains("Usage: blockbackup convert");
  }

  @Test
  void infoHelpSaysHowActualSizeIsCounted() {
    Cli.Run r = Cli.run("info", "--help").ok();
    assertThat(r.out().replaceAll("\\s+", " ")).contains("actual-size").contains("st_blocks")
        .contains("host clusters in use times the cluster size").contains("for raw the file's length");
  }

  @Test
  void backupHelpNamesTheSyncModesProgressAndDefaults() {
    // picocli reports a description it cannot format (a lone '%') on System.err, not on our writer.
    java.io.PrintStream realErr = System.err;
    java.io.ByteArrayOutputStream picocliErr = new java.io.ByteArrayOutputStream();
    Cli.Run r;
    try {
      System.setErr(new java.io.PrintStream(picocliErr, true, java.nio.charset.StandardCharsets.UTF_8));
      r = Cli.run("backup", "--help").ok();
    } finally {
      System.setErr(realErr);
    }
    assertThat(picocliErr.toString(java.nio.charset.StandardCharsets.UTF_8)).isEmpty();
    assertThat(r.out().replaceAll("\\s+", " ")).contains("--sync=MODE").contains("full, top, incremental or bitmap").contains("--bitmap=NAME")
        .contains("a plain line per 10% otherwise").contains("default: the node name, drive0")
        .contains("--existing").contains("--speed=BYTES").doesNotContain("%%");
  }

  @Test
  void backupWithoutSyncIsAUsageError() {
    Cli.Run r = Cli.run("backup", "src.raw", "dst.qcow2");
    assertThat(r.exit()).isEqualTo(2);
    assertThat(r.err()).contains("Missing required option: '--sync=MODE'").contains("Usage: blockbackup backup");
  }

  @Test
  void versionIsPrinted() {
    assertThat(Cli.run("--version").ok().out()).startsWith("blockbackup ");
  }

  @Test
  void topLevelHelpAndHelpCommandListEveryCommand() {
    for (String[] args : new String[][] {{"--help"}, {"help"}}) {
      assertThat(Cli.run(args).ok().out()).contains("Commands:")
          .contains("create").contains("info").contains("convert").contains("backup").contains("help");
    }
    assertThat(Cli.run("help", "convert").ok().out()).contains("Usage: blockbackup convert");
  }

  @Test
  void mistypedCommandIsAUsageErrorThatSuggestsTheRightOne() {
    Cli.Run r = Cli.run("conver", "a.raw", "b.qcow2");
    assertThat(r.exit()).isEqualTo(2);
    assertThat(r.err()).contains("Unmatched arguments").contains("conver").contains("convert");
  }

  @Test
  void optionsBeforeTheCommandStillFindIt() {
    assertThat(Cli.run("--debug", "info", "--help").ok().out()).contains("Usage: blockbackup info");
  }

  @Test
  void theLaunchersTrainingRunEndsEveryCommandAsItShould() throws Exception {
    assertThat(CdsTraining.train()).isZero();
  }
}
