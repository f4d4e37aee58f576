package dev.blockbackup.formats;

import com.sun.jna.Native;
import com.sun.jna.NativeLibrary;

/**
 * The C library calls {@link SparseFile} makes, bound through JNA's direct mapping (native methods
 * registered once, no proxy per call). The only class that names a JNA type, so that a missing JNA
 * fails here, in {@link #bind()}, and nowhere else. A call returns -1 on failure and {@link
 * #errno()} then tells why, as the C calls do; {@code off_t} is a Java long on the 64-bit Linux
 * this is bound on.
 */
final class LibC {

  private LibC() {}

  /** Registers the natives below against the C library; true once they are callable. */
  static boolean bind() {
    Native.register(LibC.class, NativeLibrary.getInstance("c"));
    return true;
  }

  /** The errno the last call of this thread through JNA left. */
  static int errno() {
    return Native.getLastError();
  }

  static native int open(byte[] path, int flags, int mode);

  static native long lseek(int fd, long offset, int whence);

  static native int fallocate(int fd, int mode, long offset, long length);

  static native int close(int fd);
}
