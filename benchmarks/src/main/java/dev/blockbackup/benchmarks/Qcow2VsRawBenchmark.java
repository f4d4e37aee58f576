package dev.blockbackup.benchmarks;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Comparator;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OperationsPerInvocation;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * The qcow2 driver against a raw file in the same directory: sequential 1 MiB writes into a fresh
 * image (every write allocates) and reads, random 64 KiB writes and reads of an allocated image.
 * Scores are operations per second; for the sequential ones an operation is 1 MiB, so the score is
 * MiB/s. Compare {@code format=qcow2} with {@code format=raw} of one run.
 *
 * <p>Targets (checked from the output, not asserted): allocating sequential writes at least 0.8x
 * raw, reads at least 0.9x raw.
 *
 * <p>{@code -p dir=/path} puts the images elsewhere; the default is a fresh directory under
 * /var/tmp, because /tmp may be a tmpfs, which would measure memory instead of a file system.
 * Nothing is flushed to disk inside the measurement, for either format: this measures the
 * drivers over the page cache, as qemu-img convert does with its default cache=unsafe.
 */
@BenchmarkMode(Mode.Throughput)
@OutputTimeUnit(TimeUnit.SECONDS)
@Warmup(iterations = 3, time = 2)
@Measurement(iterations = 5, time = 2)
@Fork(value = 1, jvmArgsAppend = {"-Xms1g", "-Xmx1g"})
public class Qcow2VsRawBenchmark {

  static final int MIB = 1024 * 1024;
  /** Image size in MiB: one sequential pass writes or reads all of it (fixed: it is the ops per invocation). */
  static final int IMAGE_MIB = 512;
  static final int BLOCK_64K = 64 * 1024;

  /** Which driver, and where, and how big: shared by every state below. */
  @State(Scope.Benchmark)
  public static class Config {
    @Param({"qcow2", "raw"})
    public String format;

    /** Directory for the images; empty means a fresh one under /var/tmp (not a tmpfs /tmp). */
    @Param({""})
    public String dir;

    Path base;

    @Setup(Level.Trial)
    public void makeDir() throws IOException {
      Path parent = Path.of(dir.isEmpty() ? "/var/tmp" : dir);
      base = Files.createTempDirectory(parent, "bb-bench-");
    }

    @TearDown(Level.Trial)
    public void removeDir() throws IOException {
      try (Stream<Path> s = Files.walk(base)) {
        s.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
      }
    }

    long size() {
      return (long) IMAGE_MIB * MIB;
    }

    BlockDevice create(String name) throws IOException {
      Path p = base.resolve(name + "." + format);
      Files.deleteIfExists(p);
      return format.equals("qcow2")
          ? Qcow2Image.create(p, Qcow2CreateOptions.of(size()).withClusterSize(64 * 1024))
          : RawImage.create(p, size());
    }
  }

  /** Data to write: random, so nothing along the way can shortcut it. */
  @State(Scope.Thread)
  public static class Buffers {
    ByteBuffer mib;
    ByteBuffer block;
    final SplittableRandom random = new SplittableRandom(42);

    @Setup(Level.Trial)
    public void fill() {
      mib = randomDirect(MIB, random);
      block = randomDirect(BLOCK_64K, random);
    }
  }

  /** A fresh, empty image for every invocation: each 1 MiB write allocates. */
  @State(Scope.Thread)
  public static class FreshImage {
    BlockDevice device;

    @Setup(Level.Invocation)
    public void create(Config config) throws IOException {
      device = config.create("fresh");
    }

    @TearDown(Level.Invocation)
    public void close() throws IOException {
      device.close();
    }
  }

  /** An image written all over once: reads find data, rewrites find clusters allocated. */
  @State(Scope.Thread)
  public static class FullImage {
    BlockDevice device;
    long blocks64k;

    @Setup(Level.Trial)
    public void create(Config config, Buffers buffers) throws IOException {
      device = config.create("full");
      for (long off = 0; off < config.size(); off += MIB) {
        device.write(off, buffers.mib.duplicate());
      }
      device.flush();
      blocks64k = config.size() / BLOCK_64K;
    }

    @TearDown(Level.Trial)
    public void close() throws IOException {
      device.close();
    }
  }

  /** One pass of 1 MiB writes over a fresh image; the score is MiB/s. */
  @Benchmark
  @OperationsPerInvocation(IMAGE_MIB)
  public void sequentialWrite1MiBAllocating(Config config, FreshImage image, Buffers buffers) throws IOException {
    for (long off = 0; off < config.size(); off += MIB) {
      image.device.write(off, buffers.mib.duplicate());
    }
  }

  /** One pass of 1 MiB reads over an allocated image; the score is MiB/s. */
  @Benchmark
  @OperationsPerInvocation(IMAGE_MIB)
  public long sequentialRead1MiB(Config config, FullImage image, Buffers buffers) throws IOException {
    ByteBuffer dst = buffers.mib;
    long sum = 0;
    for (long off = 0; off < config.size(); off += MIB) {
      dst.clear();
      image.device.read(off, dst);
      sum += dst.get(0);
    }
    return sum;
  }

  /** One 64 KiB write at a random aligned offset of an allocated image; the score is writes/s. */
  @Benchmark
  public void randomWrite64KiB(FullImage image, Buffers buffers) throws IOException {
    long off = buffers.random.nextLong(image.blocks64k) * BLOCK_64K;
    image.device.write(off, buffers.block.duplicate());
  }

  /** One 64 KiB read at a random aligned offset; the score is reads/s. */
  @Benchmark
  public byte randomRead64KiB(FullImage image, Buffers buffers) throws IOException {
    long off = buffers.random.nextLong(image.blocks64k) * BLOCK_64K;
    ByteBuffer dst = buffers.block;
    dst.clear();
    image.device.read(off, dst);
    return dst.get(0);
  }

  static ByteBuffer randomDirect(int size, SplittableRandom random) {
    byte[] b = new byte[size];
    random.nextBytes(b);
    return ByteBuffer.allocateDirect(size).put(b).flip();
  }

}
