package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.CacheMode;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class ImageCreatorTest {

  @TempDir Path dir;

  @Test
  void aNewImageLeavesNothingElseInItsDirectory() throws IOException {
    Path target = dir.resolve("new.qcow2");
    Qcow2Image.create(target, Qcow2CreateOptions.of(1 << 20)).close();
    assertThat(names()).containsExactly("new.qcow2");
  }

  @Test
  void anExistingFileIsOverwrittenInPlaceNotReplaced() throws IOException {
    Path target = dir.resolve("old.qcow2");
    Files.write(target, new byte[3 << 20]);
    Path otherName = dir.resolve("link");
    Files.createLink(otherName, target);
    Qcow2Image.create(target, Qcow2CreateOptions.of(1 << 20), CacheMode.WRITEBACK).close();
    // the same file, as qemu-img create keeps it: a second name sees the new image
    assertThat(Files.isSameFile(target, otherName)).isTrue();
    assertThat(Files.readAllBytes(otherName)).isEqualTo(Files.readAllBytes(target));
    assertThat(Files.size(target)).isLessThan(3 << 20);
    Qcow2Image.open(otherName, true).close();
  }

  @Test
  void aMissingDirectoryIsNamedByTheTargetNotByATemporaryFile() {
    Path target = dir.resolve("no-such-dir").resolve("x.qcow2");
    assertThatThrownBy(() -> Qcow2Image.create(target, Qcow2CreateOptions.of(1 << 20)))
        .isInstanceOf(BlockIOException.class)
        .hasMessage("cannot create " + target + ": No such file or directory");
  }

  @Test
  void aVeryLongTargetNameStillGetsATemporaryFile() throws IOException {
    Path target = dir.resolve("d".repeat(240) + ".qcow2");
    Qcow2Image.create(target, Qcow2CreateOptions.of(1 << 20)).close();
    assertThat(names()).containsExactly(target.getFileName().toString());
  }

  private java.util.List<String> names() throws IOException {
    try (Stream<Path> s = Files.list(dir)) {
      return s.map(p -> p.getFileName().toString()).toList();
    }
  }
}
