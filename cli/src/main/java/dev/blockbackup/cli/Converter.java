package dev.blockbackup.cli;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import dev.blockbackup.formats.Zeros;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.atomic.LongAdder;

/**
 * The offline full copy behind {@code convert}: what {@code qemu-img convert} does, and what the
 * backup job's copier will build on. Several workers each take the next chunk of the source that
 * holds anything but zeros, read only what is not known to be zero, and write only the granules
 * that are not all zeros, so the fresh target (which reads as zero everywhere) stays sparse.
 *
 * <p>Chunks whose block status is all zero are never handed out: a {@link StatusCursor} walks the
 * source's extents in large answers and jumps over whole zero extents, so an empty multi-TiB
 * source costs what its metadata costs, not a call per chunk.
 *
 * <p>Chunks are aligned to the target's cluster size, so two workers never write the same target
 * cluster; the drivers are thread-safe for writes to different clusters.
 */
final class Converter {

  /** Zero detection granularity: qemu-img convert's default {@code -S 4k}. */
  static final int ZERO_GRANULE = 4096;
  /** Bytes one worker copies at a time: qemu-img convert's 2 MiB I/O buffer. */
  static final int DEFAULT_CHUNK = 2 * 1024 * 1024;
  /**
   * qemu-img convert runs 8 coroutines ({@code -m 8}) on one thread. Ours are threads, and buffered
   * writes to one file serialize on its inode lock, so more threads than cores only contend
   * (measured: 2 workers copy 2 GiB in 0.5 s on 2 cores, 8 take 1.2 s).
   */
  static final int DEFAULT_WORKERS = Math.min(8, Runtime.getRuntime().availableProcessors());

  /** What a finished copy did. */
  record Result(long length, long read, long written, long zero, long nanos) {}

  private final BlockDevice source;
  private final BlockDevice target;
  /** The target when every cluster is to be written compressed ({@code -c}), else null. */
  private final Qcow2Image compressed;
  private final int workers;
  private final int chunk;
  /** The unit of "all zeros, skip it": a target cluster for qcow2 (a partial cluster saves nothing). */
  private final int granule;
  /** Chunks per prime span (see the constructor); 1 copies in plain order. */
  private final long stride;

  /** Hands out the chunks to copy; guards the cursors and positions below. */
  private final Object dispatch = new Object();
  /** Finds the first data chunk of each prime span (the first pass). */
  private final StatusCursor primeCursor;
  /** Finds every data chunk (the second pass, or the only one). */
  private final StatusCursor cursor;
  /** The first pass goes on from this byte: the start of the span after the last it handed out. */
  private long primeFrom;
  /** The second pass goes on from this byte. */
  private long from;
  /** The prime span whose first data chunk the second pass met last (the first pass copied it). */
  private long lastPrimeSpan = -1;
  private final AtomicReference<Throwable> failure = new AtomicReference<>();
  private final LongAdder read = new LongAdder();
  private final LongAdder written = new LongAdder();
  private final LongAdder zero = new LongAdder();
  /** Source bytes whose chunk is finished, for progress reports. */
  private final LongAdder done = new LongAdder();

  /**
   * @param compress write every non-zero cluster with {@link Qcow2Image#writeCompressed}; the target
   *     must then be a fresh qcow2 image
   */
  Converter(BlockDevice source, BlockDevice target, int workers, boolean compress) {
    this(source, target, workers, compress, 0);
  }

  /**
   * @param primeSpan when positive, the copy starts with the first chunk of every {@code primeSpan}
   *     bytes before the rest. For a qcow2 target this is what one L2 table maps: the driver
   *     syncs the file when it adds an L2 table, and a sync costs what is dirty at that moment, so
   *     adding them all while almost nothing is dirty saves a flush of hundreds of MiB each.
   */
  Converter(BlockDevice source, BlockDevice target, int workers, boolean compress, long primeSpan) {
    if (workers < 1) {
      throw new IllegalArgumentException("workers (" + workers + ") must be at least 1");
    }
    if (compress && !(target instanceof Qcow2Image)) {
      throw new IllegalArgumentException("compression needs a qcow2 target, not " + target.getClass().getSimpleName());
    }
    if (target.size() < source.size()) {
      throw new IllegalArgumentException("target (" + target.size() + " bytes) is smaller than the source (" + source.size() + ")");
    }
    this.source = source;
    this.target = target;
    this.compressed = compress ? (Qcow2Image) target : null;
    this.workers = workers;
    int cluster = target.alignment();
    this.granule = Math.max(ZERO_GRANULE, cluster);
    this.chunk = Math.max(DEFAULT_CHUNK, cluster);
    this.stride = primeSpan > chunk ? primeSpan / chunk : 1;
    this.primeCursor = new StatusCursor(source);
    this.cursor = new StatusCursor(source);
  }

  /** The share of the source copied so far, from 0 to 1; may be called from any thread. */
  double progress() {
    long length = source.size();
    return length == 0 ? 1 : (double) done.sum() / length;
  }

  /** Copies the whole source; on failure, the first error (the target is left as far as it got). */
  Result run() throws BlockIOException, InterruptedException {
    long start = System.nanoTime();
    long length = source.size();
    long chunks = (length + chunk - 1) / chunk;
    int n = (int) Math.max(1, Math.min(workers, chunks));
    List<Thread> threads = new ArrayList<>(n);
    for (int i = 0; i < n; i++) {
      Thread t = new Thread(() -> work(length), "convert-" + i);
      t.setDaemon(true);
      threads.add(t);
      t.start();
    }
    try {
      for (Thread t : threads) {
        t.join();
      }
    } catch (InterruptedException e) {
      failure.compareAndSet(null, e);
      for (Thread t : threads) {
        t.join();
      }
      throw e;
    }
    Throwable f = failure.get();
    if (f instanceof BlockIOException b) {
      throw b;
    } else if (f instanceof RuntimeException r) {
      throw r;
    } else if (f instanceof Error e) {
      throw e;
    } else if (f != null) {
      throw new BlockIOException(BlockError.EIO, "copy failed: " + f, f);
    }
    return new Result(length, read.sum(), written.sum(), zero.sum(), System.nanoTime() - start);
  }

  private void work(long length) {
    ByteBuffer buf = ByteBuffer.allocateDirect(chunk);
    try {
      for (long off = nextChunk(length); off >= 0 && failure.get() == null; off = nextChunk(length)) {
        int len = (int) Math.min(chunk, length - off);
        copyChunk(off, len, buf);
        done.add(len);
      }
    } catch (Throwable t) {
      failure.compareAndSet(null, t);
    }
  }

  /**
   * The offset of the next chunk to copy, or -1 when none is left: first the first chunk holding
   * data in each prime span, in order, then every other chunk holding data, in order. The chunks
   * the second pass jumps over are all zero: they count as zero and as done.
   */
  long nextChunk(long length) throws BlockIOException {
    synchronized (dispatch) {
      long spanBytes = stride * chunk;
      if (stride > 1 && primeFrom < length) {
        long data = primeCursor.nextNonZero(primeFrom, length);
        if (data >= 0) {
          long first = data / chunk * chunk;
          primeFrom = (first / spanBytes + 1) * spanBytes;
          return first;
        }
        primeFrom = length;
      }
      while (from < length) {
        long data = cursor.nextNonZero(from, length);
        long first = data < 0 ? length : Math.max(from, data / chunk * chunk);
        zero.add(first - from);
        done.add(first - from);
        if (data < 0) {
          from = length;
          return -1;
        }
        from = Math.min(length, first + chunk);
        if (stride > 1 && first / spanBytes != lastPrimeSpan) {
          lastPrimeSpan = first / spanBytes; // the first pass copied this one
          continue;
        }
        return first;
      }
      return -1;
    }
  }

  private void copyChunk(long off, int len, ByteBuffer buf) throws BlockIOException {
    List<Extent> extents = status(off, len);
    buf.clear().limit(len);
    boolean anyToRead = false;
    for (Extent e : extents) {
      if (!e.zero()) {
        anyToRead = true;
        break;
      }
    }
    if (!anyToRead) {
      zero.add(len);
      return;
    }
    // Read runs of extents whose content we must see in one request each; fill known zeros from ZEROS.
    int i = 0;
    while (i < extents.size()) {
      Extent e = extents.get(i);
      int at = (int) (e.offset() - off);
      long runEnd = e.end();
      int j = i + 1;
      while (j < extents.size() && extents.get(j).zero() == e.zero()) {
        runEnd = extents.get(j).end();
        j++;
      }
      int runLen = (int) (runEnd - e.offset());
      if (e.zero()) {
        Zeros.fill(buf, at, runLen);
      } else {
        source.read(e.offset(), buf.slice(at, runLen));
        read.add(runLen);
      }
      i = j;
    }
    // The target may be a few bytes longer (whole sectors); those read as zero and keep the last
    // granule whole, which a compressed cluster needs.
    int out = (int) Math.min(chunk, target.size() - off);
    if (out > len) {
      buf.limit(out);
      Zeros.fill(buf, len, out - len);
    }
    if (compressed != null) {
      writeCompressed(off, out, buf);
    } else {
      writeNonZeroRuns(off, out, buf);
    }
  }

  /** Writes the runs of granules that hold any non-zero byte, each run as one request. */
  private void writeNonZeroRuns(long off, int len, ByteBuffer buf) throws BlockIOException {
    int runStart = -1;
    for (int b = 0; b < len; b += granule) {
      int n = Math.min(granule, len - b);
      if (Zeros.isZero(buf, b, n)) {
        zero.add(n);
        if (runStart >= 0) {
          write(off, buf, runStart, b);
          runStart = -1;
        }
      } else if (runStart < 0) {
        runStart = b;
      }
    }
    if (runStart >= 0) {
      write(off, buf, runStart, len);
    }
  }

  private void write(long off, ByteBuffer buf, int from, int to) throws BlockIOException {
    target.write(off + from, buf.slice(from, to - from));
    written.add(to - from);
  }

  /** One compressed write per non-zero cluster (qcow2 compresses cluster by cluster). */
  private void writeCompressed(long off, int len, ByteBuffer buf) throws BlockIOException {
    for (int c = 0; c < len; c += granule) {
      int n = Math.min(granule, len - c);
      if (Zeros.isZero(buf, c, n)) {
        zero.add(n);
      } else {
        compressed.writeCompressed(off + c, buf.slice(c, n));
        written.add(n);
      }
    }
  }

  /** The source's block status for the chunk, asking again until the whole chunk is covered. */
  private List<Extent> status(long off, int len) throws BlockIOException {
    List<Extent> out = new ArrayList<>(4);
    long pos = off;
    long end = off + len;
    while (pos < end) {
      List<Extent> part = source.blockStatus(pos, end - pos);
      if (part.isEmpty() || part.get(0).offset() != pos) {
        throw new BlockIOException(BlockError.EIO, "block status at " + pos + " answered " + part);
      }
      for (Extent e : part) {
        if (e.offset() != pos || e.end() > end) {
          throw new BlockIOException(BlockError.EIO, "block status at " + pos + " answered " + e + " out of order");
        }
        out.add(e);
        pos = e.end();
      }
    }
    return out;
  }
}
