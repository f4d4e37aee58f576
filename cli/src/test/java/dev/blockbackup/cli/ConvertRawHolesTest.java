package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.ForwardingBlockDevice;
import dev.blockbackup.formats.RawImage;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.atomic.LongAdder;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Convert of a raw file with holes: the raw driver reports them, and the copy never reads them. */
class ConvertRawHolesTest {

  private static final long SIZE = 24L * 1024 * 1024 + 8192;

  @TempDir Path dir;

  @Test
  void convertOfASparseRawReadsNoHoleBytes() throws Exception {
    SeededDisk src = SeededDisk.write(dir.resolve("src.raw"), SIZE, 13);
    long stored = src.regions.stream().filter(g -> g.kind() != SeededDisk.Kind.HOLE).mapToLong(SeededDisk.Region::length).sum();
    assertThat(stored).as("the layout has holes").isLessThan(SIZE);
    Path out = dir.resolve("out.raw");
    LongAdder read = new LongAdder();
    Converter.Result r;
    try (RawImage raw = RawImage.open(src.path, true); RawImage t = RawImage.create(out, SIZE)) {
      ForwardingBlockDevice counting = new ForwardingBlockDevice(raw) {
        @Override
        public void read(long offset, ByteBuffer dst) throws BlockIOException {
          read.add(dst.remaining());
          super.read(offset, dst);
        }
      };
      r = new Converter(counting, t, 4, false).run();
    }
    // written zeros are data to the file system and are read; the holes are not
    assertThat(read.sum()).as("bytes read from the source").isEqualTo(stored);
    assertThat(r.read()).isEqualTo(stored);
    assertThat(Files.mismatch(src.path, out)).isEqualTo(-1L);
  }
}
