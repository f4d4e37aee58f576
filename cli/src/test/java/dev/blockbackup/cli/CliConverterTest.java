package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.ForwardingBlockDevice;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.WriteFlag;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.testkit.CountingDevice;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Comparator;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** The copy engine on raw files, watched through filters: what it reads and writes, not just the result. */
class CliConverterTest {

  private static final long SIZE = 24L * 1024 * 1024 + 8192;

  @TempDir Path dir;

  /** Remembers every write request. */
  static final class RecordingTarget extends ForwardingBlockDevice {
    final List<long[]> writes = Collections.synchronizedList(new ArrayList<>());

    RecordingTarget(BlockDevice d) {
      super(d);
    }

    @Override
    public void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
      writes.add(new long[] {offset, src.remaining()});
      super.write(offset, src, flags);
    }
  }

  @ParameterizedTest(name = "-m {0}")
  @ValueSource(ints = {1, 8})
  void copyIsExactAndWritesOnlyNonZeroGranulesInMergedRuns(int workers) throws Exception {
    SeededDisk src = SeededDisk.write(dir.resolve("src.raw"), SIZE, 7);
    Path out = dir.resolve("out.raw");
    Converter.Result r;
    RecordingTarget target;
    try (BlockDevice s = RawImage.open(src.path, true); RawImage t = RawImage.create(out, SIZE)) {
      target = new RecordingTarget(t);
      r = new Converter(s, target, workers, false).run();
    }

    assertThat(Files.mismatch(src.path, out)).isEqualTo(-1L);
    List<long[]> writes = new ArrayList<>(target.writes);
    writes.sort(Comparator.comparingLong(w -> w[0]));
    for (long[] z : src.wholeZeroBlocks(Converter.ZERO_GRANULE)) {
      for (long[] w : writes) {
        assertThat(w[0] + w[1] <= z[0] || w[0] >= z[1]).as("write [%d,+%d) into zeros [%d,%d)", w[0], w[1], z[0], z[1]).isTrue();
      }
    }
    // Runs are merged: two writes touch only where a chunk boundary split them.
    for (int i = 1; i < writes.size(); i++) {
      long end = writes.get(i - 1)[0] + writes.get(i - 1)[1];
      if (end == writes.get(i)[0]) {
        assertThat(end % Converter.DEFAULT_CHUNK).isZero();
      }
    }
    long dataBytes = src.regions.stream().filter(g -> g.kind() == SeededDisk.Kind.DATA).mapToLong(SeededDisk.Region::length).sum();
    assertThat(r.written()).isEqualTo(dataBytes).isEqualTo(writes.stream().mapToLong(w -> w[1]).sum());
    assertThat(r.written() + r.zero()).isEqualTo(SIZE);
  }

  @Test
  void rangesTheSourceReportsAsZeroAreNeitherReadNorWritten() throws Exception {
    SeededDisk src = SeededDisk.write(dir.resolve("src.raw"), SIZE, 11);
    List<long[]> reads = Collections.synchronizedList(new ArrayList<>());
    try (RawImage raw = RawImage.open(src.path, true); RawImage t = RawImage.create(dir.resolve("out.raw"), SIZE)) {
      // A source that knows its zeros, as qcow2 does: zero regions are reported as zero extents.
      BlockDevice knowing = new ForwardingBlockDevice(raw) {
        @Override
        public List<Extent> blockStatus(long offset, long length) {
          for (SeededDisk.Region g : src.regions) {
            if (g.end() > offset) {
              long len = Math.min(g.end(), offset + length) - offset;
              return List.of(g.kind() == SeededDisk.Kind.DATA ? Extent.data(offset, len) : Extent.zero(offset, len, false));
            }
          }
          throw new AssertionError("past the end: " + offset);
        }

        @Override
        public void read(long offset, ByteBuffer dst) throws BlockIOException {
          reads.add(new long[] {offset, dst.remaining()});
          super.read(offset, dst);
        }
      };
      RecordingTarget target = new RecordingTarget(t);
      Converter.Result r = new Converter(knowing, target, 4, false).run();
      long dataBytes = src.regions.stream().filter(g -> g.kind() == SeededDisk.Kind.DATA).mapToLong(SeededDisk.Region::length).sum();
      assertThat(r.read()).isEqualTo(dataBytes);
      assertThat(reads.stream().mapToLong(x -> x[1]).sum()).isEqualTo(dataBytes);
    }
    assertThat(Files.mismatch(src.path, dir.resolve("out.raw"))).isEqualTo(-1L);
  }

  @Test
  void aFailingTargetFailsTheCopyWithItsError() throws IOException {
    SeededDisk src = SeededDisk.write(dir.resolve("src.raw"), SIZE, 3);
    try (RawImage s = RawImage.open(src.path, true); RawImage t = RawImage.create(dir.resolve("out.raw"), SIZE)) {
      BlockDevice full = new ForwardingBlockDevice(t) {
        @Override
        public void write(long offset, ByteBuffer b, WriteFlag... flags) throws BlockIOException {
          throw new BlockIOException(dev.blockbackup.formats.BlockError.ENOSPC, "no space left at " + offset);
        }
      };
      Converter c = new Converter(s, full, 8, false);
      org.assertj.core.api.Assertions.assertThatThrownBy(c::run)
          .isInstanceOfSatisfying(BlockIOException.class,
              e -> assertThat(e.error()).isEqualTo(dev.blockbackup.formats.BlockError.ENOSPC));
    }
  }

  /** A qcow2 with data in the given 2 MiB chunks, each filled with {@link #fillOf} its index. */
  private static Path qcow2WithDataChunks(Path path, long size, long... chunks) throws BlockIOException {
    try (Qcow2Image img = Qcow2Image.create(path, Qcow2CreateOptions.of(size))) {
      ByteBuffer b = ByteBuffer.allocate(Converter.DEFAULT_CHUNK);
      for (long c : chunks) {
        java.util.Arrays.fill(b.array(), fillOf(c));
        img.write(c * Converter.DEFAULT_CHUNK, b.clear());
      }
    }
    return path;
  }

  /** A non-zero byte for chunk {@code c}. */
  private static byte fillOf(long c) {
    return (byte) (c % 251 + 1);
  }

  @Test
  void theFirstDataChunkOfEachPrimeSpanIsCopiedFirstThenTheRestInOrder() throws Exception {
    long size = 64L * 1024 * 1024;
    Path src = qcow2WithDataChunks(dir.resolve("src.qcow2"), size, 1, 2, 9, 10, 11, 20, 30);
    try (Qcow2Image s = Qcow2Image.open(src, true); RawImage t = RawImage.create(dir.resolve("out.raw"), size)) {
      RecordingTarget target = new RecordingTarget(t);
      Converter.Result r = new Converter(s, target, 1, false, 8L * Converter.DEFAULT_CHUNK).run();
      assertThat(target.writes).extracting(w -> w[0] / Converter.DEFAULT_CHUNK).containsExactly(1L, 9L, 20L, 30L, 2L, 10L, 11L);
      assertThat(r.written()).isEqualTo(7L * Converter.DEFAULT_CHUNK);
      assertThat(r.zero()).isEqualTo(size - r.written());
    }
  }

  /**
   * An empty qcow2 (three data chunks in it) of 1 TiB and of 4 TiB: the copy asks the source the
   * same number of block status and read calls for both, so its cost follows the data, not the
   * virtual size.
   */
  @Test
  void sourceCallsOfAnAlmostEmptyQcow2DoNotGrowWithItsVirtualSize() throws Exception {
    long[] sizes = {1L << 40, 4L << 40};
    long[] calls = new long[sizes.length];
    for (int i = 0; i < sizes.length; i++) {
      long size = sizes[i];
      long chunks = size / Converter.DEFAULT_CHUNK;
      Path src = qcow2WithDataChunks(dir.resolve("src" + i + ".qcow2"), size, 0, chunks / 2, chunks - 1);
      try (Qcow2Image s = Qcow2Image.open(src, true);
          Qcow2Image t = Qcow2Image.create(dir.resolve("out" + i + ".qcow2"), Qcow2CreateOptions.of(size))) {
        CountingDevice counting = new CountingDevice(s);
        Converter.Result r = new Converter(counting, t, 4, false, 65536L * 8192).run();
        assertThat(r.written()).isEqualTo(3L * Converter.DEFAULT_CHUNK);
        assertThat(r.zero()).isEqualTo(size - r.written());
        calls[i] = counting.sourceCalls();
        ByteBuffer b = ByteBuffer.allocate(Converter.DEFAULT_CHUNK);
        t.read((chunks / 2) * Converter.DEFAULT_CHUNK, b);
        assertThat(b.get(0)).isEqualTo(fillOf(chunks / 2));
        assertThat(b.get(Converter.DEFAULT_CHUNK - 1)).isEqualTo(fillOf(chunks / 2));
      }
    }
    assertThat(calls[1]).isEqualTo(calls[0]).isLessThan(40);
  }


  @Test
  void progressEndsAtOneHundredPercentOnStdout() throws IOException {
    SeededDisk src = SeededDisk.write(dir.resolve("src.raw"), SIZE, 5);
    Path out = dir.resolve("out.raw");
    Cli.Run r = Cli.run("convert", "-p", "-f", "raw", "-O", "raw", src.path, out).ok();
    assertThat(r.out()).endsWith("    (100.00/100%)\n").doesNotContain("(-");
    assertThat(r.err()).isEmpty();
    assertThat(Files.mismatch(src.path, out)).isEqualTo(-1L);
  }
}
