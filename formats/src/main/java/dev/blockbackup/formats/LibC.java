package dev.blockbackup.formats;

import com.sun.jna.Native;
import com.sun.jna.NativeLibrary;
import com.sun.jna.Platform;
import com.sun.jna.Pointer;
import java.nio.charset.Charset;
import java.nio.file.Path;
import java.util.Arrays;

/**
 * The C library calls the formats make where Java has no equivalent ({@link SparseFile}'s holes,
 * {@link ImageLock}'s OFD locks), bound once through JNA's direct mapping (native methods
 * registered once, no proxy per call). The only class that binds JNA to the C library, so that a
 * missing JNA or C library fails here, in {@link #available()}, once, with one warning saying why;
 * each user then keeps its own fallback. A call returns -1 on failure and {@link #errno()} then
 * tells why, as the C calls do; {@code off_t} is a Java long on the 64-bit Linux this is bound on.
 */
final class LibC {

  private LibC() {}

  /** Whether the natives below are callable: bound on the first ask, and only then. */
  static boolean available() {
    return Binding.BOUND;
  }

  /** The errno the last call of this thread through JNA left. */
  static int errno() {
    return Native.getLastError();
  }

  static native int open(byte[] path, int flags, int mode);

  static native int close(int fd);

  static native long lseek(int fd, long offset, int whence);

  static native int fallocate(int fd, int mode, long offset, long length);

  static native int fcntl(int fd, int cmd, Pointer arg);

  /** preadv2(2): {@code iov} points to {@code iovcnt} struct iovec (base, length: 16 bytes each). */
  static native long preadv2(int fd, Pointer iov, int iovcnt, long offset, int flags);

  static native String strerror(int errnum);

  /** The message of {@code errno}, or its number where the C library has none to give. */
  static String message(int errno) {
    try {
      String s = strerror(errno);
      return s != null ? s : "errno " + errno;
    } catch (RuntimeException e) {
      return "errno " + errno;
    }
  }

  /** The path as the NUL-terminated bytes Java itself hands the kernel for file names. */
  static byte[] path(Path path) {
    String enc = System.getProperty("sun.jnu.encoding");
    Charset cs = enc != null && Charset.isSupported(enc) ? Charset.forName(enc) : Charset.defaultCharset();
    byte[] b = path.toAbsolutePath().toString().getBytes(cs);
    return Arrays.copyOf(b, b.length + 1);
  }

  /** Binds on first use (the holder idiom): a process that never needs a native call never loads JNA. */
  private static final class Binding {
    static final boolean BOUND = bind();

    private static boolean bind() {
      try {
        // by its soname (libc.so.6 on Linux): "c" alone would make JNA search its library path
        Native.register(LibC.class, NativeLibrary.getInstance(Platform.C_LIBRARY_NAME));
        return true;
      } catch (LinkageError | RuntimeException e) {
        // no JNA on the class path, or no native part for this machine
        System.getLogger(LibC.class.getName()).log(System.Logger.Level.WARNING,
            "native calls are unavailable, the C library cannot be bound: " + e);
        return false;
      }
    }
  }
}
