package dev.blockbackup.cli;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;

/**
 * A raw test disk with a seeded layout of random data, zeros written as data (allocated, only a
 * content scan finds them) and holes (never written), in regions of 4 KiB to 1 MiB on 4 KiB
 * boundaries (and some zero runs of 4 to 6 MiB): the three kinds a sparse copy must tell apart.
 */
final class SeededDisk {

  enum Kind { DATA, ZERO_DATA, HOLE }

  record Region(long offset, long length, Kind kind) {
    long end() {
      return offset + length;
    }
  }

  final Path path;
  final long size;
  final List<Region> regions;

  private SeededDisk(Path path, long size, List<Region> regions) {
    this.path = path;
    this.size = size;
    this.regions = regions;
  }

  /** Writes a {@code size}-byte raw file at {@code path} with the layout drawn from {@code seed}. */
  static SeededDisk write(Path path, long size, long seed) throws IOException {
    SplittableRandom rnd = new SplittableRandom(seed);
    List<Region> regions = new ArrayList<>();
    try (FileChannel c = FileChannel.open(path, StandardOpenOption.CREATE, StandardOpenOption.TRUNCATE_EXISTING,
        StandardOpenOption.WRITE)) {
      c.truncate(0);
      long pos = 0;
      while (pos < size) {
        long len = 4096L * (1 + rnd.nextInt(256));
        int p = rnd.nextInt(100);
        Kind kind = p < 60 ? Kind.DATA : p < 80 ? Kind.ZERO_DATA : Kind.HOLE;
        if (rnd.nextInt(100) < 8) {
          // Now and then a long zero run, so that even 2 MiB clusters have whole zero clusters.
          len = 4L * 1024 * 1024 + 4096L * rnd.nextInt(512);
          kind = rnd.nextBoolean() ? Kind.ZERO_DATA : Kind.HOLE;
        }
        len = Math.min(size - pos, len);
        regions.add(new Region(pos, len, kind));
        if (kind != Kind.HOLE) {
          byte[] bytes = new byte[(int) len];
          if (kind == Kind.DATA) {
            rnd.nextBytes(bytes);
            // Keep some compressible content too, so -c has something to shrink.
            if (rnd.nextBoolean()) {
              for (int i = 0; i < bytes.length; i++) {
                bytes[i] = (byte) ('a' + (i % 7));
              }
            }
            bytes[0] = 1; // never an all-zero first block
          }
          ByteBuffer b = ByteBuffer.wrap(bytes);
          long at = pos;
          while (b.hasRemaining()) {
            at += c.write(b, at);
          }
        }
        pos += len;
      }
    }
    // A hole at the end must still count: set the length explicitly.
    try (RandomAccessFile raf = new RandomAccessFile(path.toFile(), "rw")) {
      raf.setLength(size);
    }
    return new SeededDisk(path, size, regions);
  }

  /** The regions that read as zero: zeros written as data, and holes. */
  List<Region> zeroRegions() {
    return regions.stream().filter(r -> r.kind != Kind.DATA).toList();
  }

  /** Byte ranges of whole {@code unit}-aligned blocks lying inside zero regions (merging neighbours). */
  List<long[]> wholeZeroBlocks(int unit) {
    List<long[]> out = new ArrayList<>();
    long runStart = -1;
    long runEnd = -1;
    for (Region r : regions) {
      if (r.kind == Kind.DATA) {
        continue;
      }
      if (r.offset == runEnd) {
        runEnd = r.end();
      } else {
        add(out, runStart, runEnd, unit);
        runStart = r.offset;
        runEnd = r.end();
      }
    }
    add(out, runStart, runEnd, unit);
    return out;
  }

  private static void add(List<long[]> out, long start, long end, int unit) {
    if (start < 0) {
      return;
    }
    long s = (start + unit - 1) / unit * unit;
    long e = end / unit * unit;
    if (e > s) {
      out.add(new long[] {s, e});
    }
  }
}
