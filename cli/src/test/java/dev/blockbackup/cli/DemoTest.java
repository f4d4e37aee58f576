package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** bin/demo's program on a small disk: the backups it takes under live writers equal their points in time. */
class DemoTest {

  @TempDir Path dir;

  @Test
  void backupsTakenWhileWritersWriteEqualTheirPointsInTime() throws Exception {
    StringWriter text = new StringWriter();
    boolean ok = new Demo(dir, 16L << 20, new PrintWriter(text, true)).run();
    String said = text.toString();
    assertThat(ok).as(said).isTrue();
    assertThat(said)
        .contains("our compare: the backup equals the point in time, byte for byte")
        .contains("copy-before-write copied")
        .contains("demo finished: every backup equals the disk at its point in time")
        .doesNotContain("DIFFERS");
    assertThat(said).contains("backup --sync incremental into backup-incremental.qcow2");
    assertThat(said.split("our compare: the backup equals the point in time", -1)).hasSize(3);
    assertThat(dir.resolve("backup-full.qcow2")).exists();
    assertThat(dir.resolve("backup-incremental.qcow2")).exists();
  }
}
