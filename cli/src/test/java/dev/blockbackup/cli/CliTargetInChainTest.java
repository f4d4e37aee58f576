package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * convert and backup refuse a target that is their source or any file of its backing chain, by
 * file identity (symlinks and hard links included), before anything is opened for writing: every
 * file stays byte-identical.
 */
class CliTargetInChainTest {

  private static final int SIZE = 1 << 20;

  @TempDir Path dir;

  private Path base;
  private Path mid;
  private Path top;
  private Path baseLink;
  private Path midHardLink;

  /** base.raw <- mid.qcow2 <- top.qcow2, each layer with data of its own; a symlink and a hard link. */
  @BeforeEach
  void chain() throws Exception {
    base = dir.resolve("base.raw");
    try (RawImage b = RawImage.create(base, SIZE)) {
      b.write(0, ByteBuffer.wrap(new byte[] {1, 1, 1, 1}));
    }
    mid = dir.resolve("mid.qcow2");
    try (Qcow2Image m = Qcow2Image.create(mid, Qcow2CreateOptions.of(SIZE).withBacking("base.raw", "raw"))) {
      m.write(65536, ByteBuffer.wrap(new byte[] {2, 2, 2, 2}));
    }
    top = dir.resolve("top.qcow2");
    try (Qcow2Image t = Qcow2Image.create(top, Qcow2CreateOptions.of(SIZE).withBacking("mid.qcow2", "qcow2"))) {
      t.write(131072, ByteBuffer.wrap(new byte[] {3, 3, 3, 3}));
    }
    baseLink = Files.createSymbolicLink(dir.resolve("link-to-base.raw"), base);
    midHardLink = Files.createLink(dir.resolve("hardlink-to-mid.qcow2"), mid);
  }

  private Map<Path, String> hashes() throws Exception {
    Map<Path, String> h = new LinkedHashMap<>();
    for (Path p : List.of(base, mid, top, midHardLink)) {
      h.put(p, HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(Files.readAllBytes(p))));
    }
    return h;
  }

  private Path named(String which) {
    return switch (which) {
      case "top" -> top;
      case "mid" -> mid;
      case "base" -> base;
      case "symlink" -> baseLink;
      case "hardlink" -> midHardLink;
      default -> throw new IllegalArgumentException(which);
    };
  }

  private void assertRefusedAndUntouched(String expected, Object... args) throws Exception {
    Map<Path, String> before = hashes();
    Cli.Run r = Cli.run(args);
    assertThat(r.exit()).as(r.toString()).isEqualTo(1);
    assertThat(r.err()).as(r.toString()).contains(expected).doesNotContain("Exception");
    assertThat(hashes()).isEqualTo(before);
    assertThat(Files.isSymbolicLink(baseLink)).isTrue();
  }

  private String expectedMessage(String which) {
    Path t = named(which);
    return which.equals("top")
        ? "source and target are the same file '" + t + "'"
        : "target '" + t + "' is '";
  }

  @ParameterizedTest(name = "onto {0}")
  @ValueSource(strings = {"top", "mid", "base", "symlink", "hardlink"})
  void convertToQcow2OntoAFileOfTheChainIsRefused(String which) throws Exception {
    assertRefusedAndUntouched(expectedMessage(which), "convert", "-O", "qcow2", top, named(which));
  }

  @ParameterizedTest(name = "onto {0}")
  @ValueSource(strings = {"top", "mid", "base", "symlink", "hardlink"})
  void convertToRawOntoAFileOfTheChainIsRefused(String which) throws Exception {
    assertRefusedAndUntouched(expectedMessage(which), "convert", "-O", "raw", top, named(which));
  }

  @ParameterizedTest(name = "onto {0}")
  @ValueSource(strings = {"top", "mid", "base", "symlink", "hardlink"})
  void backupIntoAnExistingFileOfTheChainIsRefused(String which) throws Exception {
    assertRefusedAndUntouched(expectedMessage(which), "backup", "--sync", "full", "--existing", "-q", top,
        named(which));
  }

  @ParameterizedTest(name = "onto {0}")
  @ValueSource(strings = {"top", "mid", "base", "symlink", "hardlink"})
  void backupOntoAFileOfTheChainIsRefusedBeforeItsExistenceIs(String which) throws Exception {
    assertRefusedAndUntouched(expectedMessage(which), "backup", "--sync", "top", "-q", top, named(which));
  }

  @Test
  void theMessageNamesTheChainFileAndTheSource() throws Exception {
    Cli.Run r = Cli.run("convert", "-O", "qcow2", top, baseLink);
    assertThat(r.err()).contains("target '" + baseLink + "' is '" + dir.resolve("base.raw") + "' of the backing chain of source '" + top
        + "': writing it would destroy the source");
  }

  @Test
  void aTargetBesideTheChainIsWritten() throws Exception {
    Map<Path, String> before = hashes();
    Cli.run("convert", "-O", "qcow2", top, dir.resolve("flat.qcow2")).ok();
    Cli.run("backup", "--sync", "full", "-q", top, dir.resolve("backup.qcow2")).ok();
    assertThat(hashes()).isEqualTo(before);
    try (Qcow2Image flat = Qcow2Image.open(dir.resolve("flat.qcow2"), true)) {
      ByteBuffer b = ByteBuffer.allocate(4);
      flat.read(131072, b);
      assertThat(b.array()).containsOnly(3);
      flat.read(65536, b.clear());
      assertThat(b.array()).containsOnly(2);
      flat.read(0, b.clear());
      assertThat(b.array()).containsOnly(1);
    }
  }
}
