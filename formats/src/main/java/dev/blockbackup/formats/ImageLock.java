package dev.blockbackup.formats;

import com.sun.jna.Memory;
import com.sun.jna.Platform;
import java.io.FileNotFoundException;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.file.Path;
import java.util.EnumSet;
import java.util.Set;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * An image file locked the way QEMU's file-posix driver locks it, so that QEMU and we refuse to
 * write an image the other one uses. Each block-layer permission n (QEMU's {@code BLK_PERM_*}
 * bits: consistent read, write, write unchanged, resize) has two lock bytes: byte
 * {@value #RAW_LOCK_PERM_BASE}+n is held while its holder has permission n, and byte
 * {@value #RAW_LOCK_SHARED_BASE}+n while its holder does not let others have it. All of them are
 * shared (read) locks; a conflict is found by testing for a lock another open holds on the
 * opposite byte, without taking it.
 *
 * <p>The locks are Linux open file description locks ({@code F_OFD_SETLK}), as QEMU takes them:
 * they belong to one open of the file rather than to the process, so closing another descriptor
 * of the same file keeps them, and two opens in one JVM exclude each other exactly as two
 * processes do. Java's own {@code FileChannel.lock} takes process-wide POSIX locks, which any
 * close of the file drops and which never conflict within one process, so it cannot be used here.
 * Where OFD locks are not to be had (another OS), images are opened without locks, with a warning.
 * {@code -Dblockbackup.locking=off} opens without locks on purpose, as QEMU's {@code locking=off}.
 */
public final class ImageLock implements AutoCloseable {

  /** file-posix's first permission byte; libvirt's virtlockd owns byte 0. */
  static final int RAW_LOCK_PERM_BASE = 100;
  /** file-posix's first "not shared" byte. */
  static final int RAW_LOCK_SHARED_BASE = 200;

  /** QEMU's block permissions (BLK_PERM_*), in bit order, with the names its errors use. */
  enum Permission {
    CONSISTENT_READ("consistent read"),
    WRITE("write"),
    WRITE_UNCHANGED("write unchanged"),
    RESIZE("resize");

    final String qemuName;

    Permission(String qemuName) {
      this.qemuName = qemuName;
    }
  }

  /**
   * What a read-only open holds: consistent reads, sharing no write or resize, as qemu-img opens
   * a source and as the qcow2 driver always holds its file (metadata must not change under it).
   */
  static final Set<Permission> READ = EnumSet.of(Permission.CONSISTENT_READ);
  /** What a read-write open holds: we write, and grow or cut the file. */
  static final Set<Permission> READ_WRITE = EnumSet.of(Permission.CONSISTENT_READ, Permission.WRITE,
      Permission.RESIZE);
  /** What both opens let others have: reading, and writes that change nothing (QEMU's default). */
  static final Set<Permission> SHARED = EnumSet.of(Permission.CONSISTENT_READ, Permission.WRITE_UNCHANGED);
  /** force-share=on: everything is shared. */
  static final Set<Permission> ALL = EnumSet.allOf(Permission.class);

  /**
   * force-share=on for the opens this thread makes inside {@link #forceShare}: QEMU inherits the
   * option down a backing chain, and a scope reaches the chain without a flag on every driver's open.
   */
  private static final ThreadLocal<Boolean> FORCE_SHARE = ThreadLocal.withInitial(() -> Boolean.FALSE);

  private final Path path;
  /** The descriptor the locks belong to (closing it releases them all), or -1 when unlocked. */
  private final int fd;
  private final AtomicBoolean released = new AtomicBoolean();

  private ImageLock(Path path, int fd) {
    this.path = path;
    this.fd = fd;
  }

  /** Opens something that may open images; what it opens read-only is opened with force-share=on. */
  @FunctionalInterface
  public interface Opener<T> {
    T open() throws BlockIOException;
  }

  /**
   * Runs {@code opener} with QEMU's force-share=on ({@code qemu-img -U}) for every image it opens
   * on this thread, backing files included: a read-only open takes the consistent-read byte only
   * and shares everything, so it succeeds while QEMU writes the image. A read-write open inside
   * fails with EINVAL, as in QEMU.
   */
  public static <T> T forceShare(Opener<T> opener) throws BlockIOException {
    Boolean before = FORCE_SHARE.get();
    FORCE_SHARE.set(Boolean.TRUE);
    try {
      return opener.open();
    } finally {
      FORCE_SHARE.set(before);
    }
  }

  /**
   * Opens {@code path} as a driver's image file ({@code "r"} or {@code "rw"}, which creates a
   * missing file), having taken the image locks first: read-only holds {@link #READ}, read-write
   * {@link #READ_WRITE}, both share {@link #SHARED} (all, under {@link #forceShare}). The locks
   * live as long as the file: closing it, or its channel, releases them.
   *
   * @throws BlockIOException EAGAIN when another open holds a conflicting lock, with QEMU's
   *     message ({@code Failed to get "write" lock}, {@code Failed to get shared "write" lock}, ...)
   */
  public static RandomAccessFile openFile(Path path, boolean readOnly) throws IOException {
    return openFile(path, path, readOnly);
  }

  /**
   * As {@link #openFile(Path, boolean)}, locking {@code path} but opening {@code file}, another
   * name of the same file (the raw driver opens its {@code /proc/self/fd} link).
   */
  public static RandomAccessFile openFile(Path path, Path file, boolean readOnly) throws IOException {
    ImageLock lock = lock(path, readOnly);
    try {
      return new LockedFile(file, readOnly ? "r" : "rw", lock);
    } catch (FileNotFoundException | RuntimeException e) {
      lock.close();
      throw e;
    }
  }

  /**
   * The locks of {@link #openFile} alone, for a driver that opens its file some other way: it
   * closes them when it closes the file. A read-write lock creates a missing file, as opening it
   * read-write would.
   */
  public static ImageLock lock(Path path, boolean readOnly) throws BlockIOException {
    boolean forceShare = FORCE_SHARE.get();
    if (forceShare && !readOnly) {
      throw new BlockIOException(BlockError.EINVAL, path + ": force-share=on can only be used with read-only images");
    }
    return acquire(path, readOnly, readOnly ? READ : READ_WRITE, forceShare ? ALL : SHARED);
  }

  /**
   * Takes the locks for holding {@code perm} and sharing {@code shared} of {@code path}, opened
   * read-only or read-write (created if missing). As QEMU does, the bytes are locked first and the
   * conflicts tested after, so of two opens racing for the image at least one fails.
   */
  static ImageLock acquire(Path path, boolean readOnly, Set<Permission> perm, Set<Permission> shared)
      throws BlockIOException {
    if (!OfdLocks.AVAILABLE || "off".equals(System.getProperty("blockbackup.locking"))) {
      return new ImageLock(path, -1);
    }
    int fd = LibC.open(LibC.path(path), (readOnly ? O_RDONLY : O_RDWR | O_CREAT) | O_CLOEXEC, 0666);
    if (fd < 0) {
      int errno = LibC.errno();
      throw new BlockIOException(errno == EACCES ? BlockError.EACCES : BlockError.EIO,
          "cannot open " + path + ": " + LibC.message(errno));
    }
    ImageLock lock = new ImageLock(path, fd);
    try {
      lock.lockBytes(perm, shared);
      lock.checkConflicts(perm, shared);
      return lock;
    } catch (BlockIOException | RuntimeException e) {
      lock.close();
      throw e;
    }
  }

  private void lockBytes(Set<Permission> perm, Set<Permission> shared) throws BlockIOException {
    for (Permission p : Permission.values()) {
      if (perm.contains(p)) {
        lockByte(RAW_LOCK_PERM_BASE + p.ordinal());
      }
      if (!shared.contains(p)) {
        lockByte(RAW_LOCK_SHARED_BASE + p.ordinal());
      }
    }
  }

  /** raw_check_lock_bytes: every permission we take against others' "not shared", then the reverse. */
  private void checkConflicts(Set<Permission> perm, Set<Permission> shared) throws BlockIOException {
    for (Permission p : perm) {
      if (lockedElsewhere(RAW_LOCK_SHARED_BASE + p.ordinal())) {
        throw conflict("Failed to get \"" + p.qemuName + "\" lock");
      }
    }
    for (Permission p : Permission.values()) {
      if (!shared.contains(p) && lockedElsewhere(RAW_LOCK_PERM_BASE + p.ordinal())) {
        throw conflict("Failed to get shared \"" + p.qemuName + "\" lock");
      }
    }
  }

  private BlockIOException conflict(String what) {
    return new BlockIOException(BlockError.EAGAIN, what + ". Is another process using the image [" + path + "]?");
  }

  private void lockByte(int offset) throws BlockIOException {
    try (Memory flock = flock(F_RDLCK, offset)) {
      if (LibC.fcntl(fd, F_OFD_SETLK, flock) < 0) {
        throw new BlockIOException(BlockError.EIO,
            "Failed to lock byte " + offset + " of " + path + ": " + LibC.message(LibC.errno()));
      }
    }
  }

  /** F_OFD_GETLK: whether another open holds a lock on the byte that a write lock would conflict with. */
  private boolean lockedElsewhere(int offset) throws BlockIOException {
    try (Memory flock = flock(F_WRLCK, offset)) {
      if (LibC.fcntl(fd, F_OFD_GETLK, flock) < 0) {
        throw new BlockIOException(BlockError.EIO,
            "Failed to check byte " + offset + " of " + path + ": " + LibC.message(LibC.errno()));
      }
      return flock.getShort(0) != F_UNLCK;
    }
  }

  /** Linux's struct flock on 64-bit ABIs: short type, short whence, off_t start, off_t len, pid_t pid. */
  private static Memory flock(short type, long offset) {
    Memory m = new Memory(32);
    m.clear();
    m.setShort(0, type);
    m.setShort(2, SEEK_SET);
    m.setLong(8, offset);
    m.setLong(16, 1);
    // l_pid stays 0, as OFD locks require
    return m;
  }

  /** Releases every lock of this open (closing its descriptor does). Idempotent. */
  @Override
  public void close() {
    if (fd >= 0 && released.compareAndSet(false, true)) {
      LibC.close(fd); // close(2) releases the locks even when it reports an error
    }
  }

  /** The image file of a driver: closing it (or its channel, which closes it) releases its locks. */
  private static final class LockedFile extends RandomAccessFile {
    private final ImageLock lock;

    LockedFile(Path path, String mode, ImageLock lock) throws FileNotFoundException {
      super(path.toFile(), mode);
      this.lock = lock;
    }

    @Override
    public void close() throws IOException {
      try {
        super.close();
      } finally {
        lock.close();
      }
    }
  }

  // Linux's values, the same on every 64-bit ABI that uses the generic fcntl.h.
  private static final int O_RDONLY = 0;
  private static final int O_RDWR = 2;
  private static final int O_CREAT = 0100;
  private static final int O_CLOEXEC = 02000000;
  private static final int F_OFD_GETLK = 36;
  private static final int F_OFD_SETLK = 37;
  private static final short F_RDLCK = 0;
  private static final short F_WRLCK = 1;
  private static final short F_UNLCK = 2;
  private static final short SEEK_SET = 0;
  private static final int EACCES = 13;

  /** Whether OFD locks are to be had here: decided on the first lock, with one warning if not. */
  private static final class OfdLocks {
    static final boolean AVAILABLE = check();

    private static boolean check() {
      String why;
      if (!Platform.isLinux()) {
        why = "OFD locks are Linux's";
      } else if (!Set.of("x86-64", "aarch64", "ppc64le", "riscv64", "s390x").contains(Platform.ARCH)) {
        why = "struct flock of " + Platform.ARCH + " is not known here";
      } else if (!LibC.available()) {
        why = "the C library cannot be bound";
      } else {
        return true;
      }
      System.getLogger(ImageLock.class.getName()).log(System.Logger.Level.WARNING,
          "images are opened without QEMU's locks: " + why);
      return false;
    }
  }
}
