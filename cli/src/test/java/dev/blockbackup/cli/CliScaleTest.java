package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Sizes past what a command supports are refused before anything is created. */
class CliScaleTest {

  @TempDir Path dir;

  /** 32 PiB needs 2^39 clusters of 64 KiB in the job's copy bitmap: more than its 2^38. */
  @Test
  void aBackupOfASourceBeyondTheJobsLimitFailsBeforeTheTargetIsCreated() {
    Path src = dir.resolve("huge.qcow2");
    Cli.run("create", "-f", "qcow2", "-o", "cluster_size=2M", src, "32P").ok();
    Path dst = dir.resolve("backup.qcow2");
    Cli.Run r = Cli.run("backup", "--sync", "full", "-q", src, dst);
    assertThat(r.exit()).isEqualTo(1);
    assertThat(r.err()).contains(String.valueOf(32L << 50)).contains(String.valueOf(16L << 50))
        .contains("64 KiB clusters").doesNotContain("Exception").hasLineCount(1);
    assertThat(Files.exists(dst)).isFalse();
  }
}
