package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import org.junit.jupiter.api.Test;

/** The text of backup's progress display, from fixed numbers. */
class BackupProgressTest {

  private static final long MIB = 1024 * 1024;
  private static final long SECOND = 1_000_000_000L;
  private static final String NL = System.lineSeparator();

  @Test
  void barShowsFillPercentBytesRateAndEta() {
    assertThat(BackupProgress.bar(12 * MIB, 40 * MIB, 2 * SECOND))
        .isEqualTo("[#########---------------------]  30.0%  12 MiB / 40 MiB  6.0 MiB/s  ETA 0:05");
  }

  @Test
  void barOfAFinishedJobIsFullWithNoTimeLeft() {
    assertThat(BackupProgress.bar(40 * MIB, 40 * MIB, 4 * SECOND))
        .isEqualTo("[" + "#".repeat(30) + "] 100.0%  40 MiB / 40 MiB  10.0 MiB/s  ETA 0:00");
  }

  @Test
  void etaIsUnknownUntilSomethingIsCopiedAndShowsHoursWhenLong() {
    assertThat(BackupProgress.eta(0, 100, SECOND)).isEqualTo("--:--");
    assertThat(BackupProgress.eta(1, 100, 0)).isEqualTo("--:--");
    // 1% in 40 s: 99 times that is left.
    assertThat(BackupProgress.eta(1, 100, 40 * SECOND)).isEqualTo("1:06:00");
    assertThat(BackupProgress.eta(50, 100, 90 * SECOND)).isEqualTo("1:30");
  }

  @Test
  void rateIsMibPerSecondWithOneDecimal() {
    assertThat(BackupProgress.rate(3 * MIB / 2, SECOND)).isEqualTo("1.5 MiB/s");
    assertThat(BackupProgress.rate(5 * MIB, 0)).isEqualTo("-.- MiB/s");
  }

  @Test
  void terminalModeRedrawsOneLineAndBlanksWhatAShorterLineLeaves() {
    BackupProgress p = new BackupProgress(BackupProgress.Mode.TERMINAL, "drive0");
    String first = p.update(MIB, 100 * MIB, 40 * SECOND);
    assertThat(first).startsWith("\r[-----").doesNotContain("\n").endsWith("0.0 MiB/s  ETA 1:06:00");
    // Half done at 1 MiB/s: "ETA 0:50" is three characters shorter, "50 MiB" one longer; two blanks cover the rest.
    String second = p.update(50 * MIB, 100 * MIB, 50 * SECOND);
    assertThat(second).startsWith("\r[###############---------------]  50.0%  50 MiB / 100 MiB  1.0 MiB/s  ETA 0:50  ")
        .hasSize(first.length());
    assertThat(p.finish(100 * MIB, 100 * MIB, 40 * SECOND)).startsWith("\r[" + "#".repeat(30) + "] 100.0%").endsWith(NL);
  }

  @Test
  void plainModePrintsALinePerTenthAndOnlyThen() {
    BackupProgress p = new BackupProgress(BackupProgress.Mode.PLAIN, "nightly");
    assertThat(p.update(0, 100 * MIB, 0)).isEqualTo("backup 'nightly': 0% (0 B of 100 MiB), -.- MiB/s, ETA --:--" + NL);
    assertThat(p.update(5 * MIB, 100 * MIB, SECOND)).isEmpty();
    assertThat(p.update(12 * MIB, 100 * MIB, 2 * SECOND))
        .isEqualTo("backup 'nightly': 12% (12 MiB of 100 MiB), 6.0 MiB/s, ETA 0:15" + NL);
    assertThat(p.update(19 * MIB, 100 * MIB, 3 * SECOND)).isEmpty();
    assertThat(p.update(100 * MIB, 100 * MIB, 10 * SECOND)).startsWith("backup 'nightly': 100% ");
    assertThat(p.finish(100 * MIB, 100 * MIB, 10 * SECOND)).isEmpty();
  }

  @Test
  void plainModeEndsWithTheHundredPercentLineWhenPollingMissedIt() {
    BackupProgress p = new BackupProgress(BackupProgress.Mode.PLAIN, "drive0");
    p.update(0, 8 * MIB, 0);
    assertThat(p.finish(8 * MIB, 8 * MIB, SECOND)).isEqualTo("backup 'drive0': 100% (8 MiB of 8 MiB), 8.0 MiB/s, ETA 0:00" + NL);
  }

  @Test
  void quietModePrintsNothing() {
    BackupProgress p = new BackupProgress(BackupProgress.Mode.QUIET, "drive0");
    assertThat(p.update(1, 2, SECOND)).isEmpty();
    assertThat(p.finish(2, 2, SECOND)).isEmpty();
  }

  @Test
  void anEmptyJobIsComplete() {
    assertThat(BackupProgress.fraction(0, 0)).isEqualTo(1.0);
    assertThat(BackupProgress.bar(0, 0, SECOND)).contains("100.0%").endsWith("ETA 0:00");
  }

  @Test
  void summaryIsOneLineWithSizeTimeRateAndTarget() {
    assertThat(BackupProgress.summary("drive0", 2L << 30, 1_230_000_000L, "t.qcow2", "qcow2"))
        .isEqualTo("backup 'drive0': 2 GiB copied in 1.23 s (1665.0 MiB/s), target t.qcow2 (qcow2)");
  }
}
