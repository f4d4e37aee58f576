package dev.blockbackup.formats;

import java.io.Closeable;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.locks.ReentrantReadWriteLock;

/**
 * A raw image's second descriptor, opened through the C library (JNA), for what a {@link
 * java.nio.channels.FileChannel} cannot do: find a file's holes ({@code lseek} SEEK_DATA and
 * SEEK_HOLE), punch them and zero ranges without writing ({@code fallocate}), as QEMU's file-posix
 * does. Reads and writes stay on the channel.
 *
 * <p>Both descriptors must name one inode, or the holes we see and punch would be another file's.
 * A channel does not give out its descriptor (only reflection into java.base, which Java 17
 * refuses), and reopening the path a second time races with a rename. So this descriptor is opened
 * first, and Java opens the channel through {@link #procPath() /proc/self/fd/N}, which reopens the
 * inode the descriptor holds whatever its name is by then. The descriptor lives exactly as long as
 * the image and is closed with it.
 *
 * <p>Only 64-bit Linux on x86-64 and aarch64 (whose open flags and {@code off_t} we know) gets one;
 * elsewhere, where JNA cannot load, where /proc is not mounted, or with the system property
 * {@code blockbackup.pureJavaRaw=true}, {@link #open} answers null and the image keeps the
 * pure-Java behaviour. A file system that answers EOPNOTSUPP, ENOSYS or EINVAL
 * to one of the calls turns that call off for this file, and the image falls back for it.
 */
final class SparseFile implements Closeable {

  // Linux's values on x86-64 and aarch64.
  private static final int O_RDONLY = 0;
  private static final int O_RDWR = 2;
  private static final int O_CREAT = 0100;
  private static final int O_CLOEXEC = 02000000;
  private static final int SEEK_DATA = 3;
  private static final int SEEK_HOLE = 4;
  private static final int FALLOC_FL_KEEP_SIZE = 0x01;
  private static final int FALLOC_FL_PUNCH_HOLE = 0x02;
  private static final int FALLOC_FL_ZERO_RANGE = 0x10;
  private static final int EINTR = 4;
  private static final int ENXIO = 6;
  private static final int EPERM = 1;
  private static final int EINVAL = 22;
  private static final int ENOSPC = 28;
  private static final int ENOSYS = 38;
  private static final int EDQUOT = 122;
  private static final int EOPNOTSUPP = 95;

  /** Whether the C library's calls are bound: decided once, when this class initialises. */
  private static final boolean LOADED = load();

  /** The descriptor; -1 once closed. */
  private int fd;
  /**
   * Calls hold it shared, close exclusive: a descriptor number closed under a call in flight could
   * be handed to another file at once, and a hole punched there.
   */
  private final ReentrantReadWriteLock inUse = new ReentrantReadWriteLock();
  /** Whether lseek SEEK_DATA/SEEK_HOLE answers for this file (off after EINVAL: no such whence). */
  private volatile boolean seekWorks = true;
  /** Whether fallocate PUNCH_HOLE works here (off after EOPNOTSUPP: the file system has none). */
  private volatile boolean punchWorks;
  /** Whether fallocate ZERO_RANGE works here (ext4 and XFS have it; tmpfs does not). */
  private volatile boolean zeroRangeWorks;
  /** Whether plain fallocate (allocating blocks) works here. */
  private volatile boolean allocateWorks;

  private SparseFile(int fd, boolean writable) {
    this.fd = fd;
    this.punchWorks = writable;
    this.zeroRangeWorks = writable;
    this.allocateWorks = writable;
  }

  private static boolean load() {
    if (Boolean.getBoolean("blockbackup.pureJavaRaw")) {
      return false; // asked for: comparing the two paths, or working round a native problem
    }
    String os = System.getProperty("os.name", "");
    String arch = System.getProperty("os.arch", "");
    if (!os.equals("Linux") || !(arch.equals("amd64") || arch.equals("x86_64") || arch.equals("aarch64"))) {
      return false;
    }
    return LibC.available(); // false where JNA cannot load: the pure-Java behaviour
  }

  /** Whether native access loaded: false where every image runs pure Java. */
  static boolean available() {
    return LOADED;
  }

  /**
   * Opens {@code path} for the image: read-write if {@code writable}, creating it if {@code
   * create}. Returns null where native access is off or the open fails; the caller then opens the
   * file the usual way, which reports the failure as before.
   */
  static SparseFile open(Path path, boolean writable, boolean create) {
    if (!LOADED) {
      return null;
    }
    int flags = (writable ? O_RDWR : O_RDONLY) | (create ? O_CREAT : 0) | O_CLOEXEC;
    int fd = LibC.open(LibC.path(path), flags, 0666);
    if (fd < 0) {
      return null;
    }
    SparseFile f = new SparseFile(fd, writable);
    if (!Files.exists(f.procPath())) {
      f.close(); // no /proc: the channel could not be opened on this very inode
      return null;
    }
    return f;
  }

  /** The path through which the channel opens this descriptor's inode. */
  Path procPath() {
    inUse.readLock().lock();
    try {
      return Path.of("/proc/self/fd/" + fd);
    } finally {
      inUse.readLock().unlock();
    }
  }

  /** preadv2's flag: fail with EAGAIN rather than wait for the disk. */
  private static final int RWF_NOWAIT = 0x08;
  private static final int EAGAIN = 11;
  /** Whether preadv2 with RWF_NOWAIT works here (off once the kernel refuses it). */
  private static volatile boolean noWaitWorks = true;
  /** One struct iovec per thread: the callers are a few event loops, each calling often. */
  private static final ThreadLocal<com.sun.jna.Memory> IOVEC = ThreadLocal.withInitial(() -> new com.sun.jna.Memory(16));

  /**
   * Reads {@code dst.remaining()} bytes at {@code pos} into the direct buffer {@code dst} only if
   * the page cache holds them all (preadv2 with RWF_NOWAIT); true with {@code dst} filled, or
   * false with {@code dst}'s position as it was (a short read may have filled part of it) when
   * the read would wait for the disk, was short, or this kernel cannot say.
   */
  boolean readNoWait(long pos, ByteBuffer dst) throws BlockIOException {
    if (!noWaitWorks || !dst.isDirect()) {
      return false;
    }
    int want = dst.remaining();
    com.sun.jna.Memory iov = IOVEC.get();
    iov.setPointer(0, com.sun.jna.Native.getDirectBufferPointer(dst).share(dst.position()));
    iov.setLong(8, want);
    long r;
    int errno;
    inUse.readLock().lock();
    try {
      r = LibC.preadv2(descriptor(), iov, 1, pos, RWF_NOWAIT);
      errno = r < 0 ? LibC.errno() : 0;
    } finally {
      inUse.readLock().unlock();
    }
    if (r == want) {
      dst.position(dst.position() + want);
      return true;
    }
    if (r < 0 && errno != EAGAIN && errno != EINTR) {
      noWaitWorks = false; // ENOSYS, EOPNOTSUPP, EINVAL: the slow path is the only one here
    }
    return false;
  }

  /**
   * The first offset at or after {@code pos} that holds data; -1 if none does before the end of
   * the file; -2 if this file cannot tell (the caller reports data, as QEMU does).
   */
  long nextData(long pos) throws IOException {
    return seek(pos, SEEK_DATA);
  }

  /**
   * The first offset at or after {@code pos} in a hole (the end of the file counts as one); -1 if
   * {@code pos} is past the end; -2 if this file cannot tell.
   */
  long nextHole(long pos) throws IOException {
    return seek(pos, SEEK_HOLE);
  }

  private long seek(long pos, int whence) throws IOException {
    if (!seekWorks) {
      return -2;
    }
    long r;
    int errno;
    inUse.readLock().lock();
    try {
      r = LibC.lseek(descriptor(), pos, whence);
      errno = r < 0 ? LibC.errno() : 0;
    } finally {
      inUse.readLock().unlock();
    }
    if (r >= 0) {
      return r;
    }
    if (errno == ENXIO) {
      return -1;
    }
    if (errno == EINVAL || errno == EOPNOTSUPP || errno == ENOSYS) {
      seekWorks = false;
      return -2;
    }
    throw failure("lseek", errno);
  }

  /**
   * Deallocates {@code [offset, offset+length)}, which then reads as zero; the file keeps its size.
   * Returns false where the file system cannot punch holes.
   */
  boolean punchHole(long offset, long length) throws IOException {
    if (!punchWorks) {
      return false;
    }
    if (fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)) {
      return true;
    }
    punchWorks = false;
    return false;
  }

  /**
   * Makes the range read as zero, keeping (or making) it allocated, without writing it. Returns
   * false where the file system has no ZERO_RANGE.
   */
  boolean zeroRange(long offset, long length) throws IOException {
    if (!zeroRangeWorks) {
      return false;
    }
    if (fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)) {
      return true;
    }
    zeroRangeWorks = false;
    return false;
  }

  /** Allocates the blocks of the range (contents unchanged). Returns false where unsupported. */
  boolean allocate(long offset, long length) throws IOException {
    if (!allocateWorks) {
      return false;
    }
    if (fallocate(FALLOC_FL_KEEP_SIZE, offset, length)) {
      return true;
    }
    allocateWorks = false;
    return false;
  }

  /** True when done, false when the file system does not support {@code mode}; throws otherwise. */
  private boolean fallocate(int mode, long offset, long length) throws IOException {
    while (true) {
      int errno;
      inUse.readLock().lock();
      try {
        if (LibC.fallocate(descriptor(), mode, offset, length) == 0) {
          return true;
        }
        errno = LibC.errno();
      } finally {
        inUse.readLock().unlock();
      }
      if (errno == EINTR) {
        continue;
      }
      if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL) {
        return false;
      }
      throw failure("fallocate", errno);
    }
  }

  private int descriptor() throws BlockIOException {
    int d = fd;
    if (d < 0) {
      throw new BlockIOException(BlockError.ESHUTDOWN, "the file is closed");
    }
    return d;
  }

  @Override
  public void close() {
    inUse.writeLock().lock();
    try {
      if (fd >= 0) {
        LibC.close(fd); // nothing was written through this descriptor: a failing close loses nothing
        fd = -1;
      }
    } finally {
      inUse.writeLock().unlock();
    }
  }

  private static BlockIOException failure(String call, int errno) {
    BlockError e = switch (errno) {
      case ENOSPC, EDQUOT -> BlockError.ENOSPC;
      case EPERM -> BlockError.EPERM;
      default -> BlockError.EIO;
    };
    return new BlockIOException(e, call + " failed with errno " + errno);
  }
}
