package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.ForwardingBlockDevice;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.WriteFlag;
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

  @ParameterizedTest(name = "stride {0}")
  @ValueSource(ints = {0, 1, 2, 3, 256, 1000})
  void chunkOrderVisitsEveryChunkOnceStartingWithEachSpan(int stride) {
    for (long n : new long[] {1, 2, 255, 256, 257, 1024, 1025}) {
      java.util.BitSet seen = new java.util.BitSet();
      for (long k = 0; k < n; k++) {
        long i = Converter.chunkAt(k, n, stride);
        assertThat(i).as("k=%d of n=%d", k, n).isBetween(0L, n - 1);
        assertThat(seen.get((int) i)).as("chunk %d twice (n=%d)", i, n).isFalse();
        seen.set((int) i);
        if (stride > 1 && k < (n + stride - 1) / stride) {
          assertThat(i).isEqualTo(k * stride);
        }
      }
      assertThat(seen.cardinality()).isEqualTo((int) n);
    }
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

  @Test
  void zeroScanSeesASingleNonZeroByteAnywhere() {
    ByteBuffer b = ByteBuffer.allocateDirect(8192);
    assertThat(Converter.isZero(b, 0, 8192)).isTrue();
    for (int i : new int[] {0, 7, 8, 4095, 4096, 8191}) {
      b.put(i, (byte) 1);
      assertThat(Converter.isZero(b, 0, 8192)).as("byte %d", i).isFalse();
      assertThat(Converter.isZero(b, i < 4096 ? 4096 : 0, 4096)).isTrue();
      b.put(i, (byte) 0);
    }
  }
}
