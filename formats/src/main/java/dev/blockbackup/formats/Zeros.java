package dev.blockbackup.formats;

import java.nio.ByteBuffer;

/**
 * All-zero bytes: the one test for them (QEMU's buffer_is_zero, which convert and the backup job
 * use to keep a target sparse, and the raw driver to leave holes alone) and the one shared source
 * of them. The test is {@link ByteBuffer#mismatch} against a read-only direct buffer of zeros,
 * which the JDK compares a vector at a time, on heap and direct buffers alike.
 */
public final class Zeros {

  /** Bytes compared (or copied) per step. */
  private static final int STEP = 1 << 20;
  private static final ByteBuffer ZEROS = ByteBuffer.allocateDirect(STEP).asReadOnlyBuffer();

  private Zeros() {}

  /** Whether the {@code length} bytes of {@code buf} at absolute index {@code from} are all zero. */
  public static boolean isZero(ByteBuffer buf, int from, int length) {
    for (int pos = from, end = from + length; pos < end; pos += STEP) {
      int n = Math.min(STEP, end - pos);
      if (buf.slice(pos, n).mismatch(ZEROS.slice(0, n)) >= 0) {
        return false;
      }
    }
    return true;
  }

  /** Whether the bytes from {@code buf}'s position to its limit are all zero. */
  public static boolean isZero(ByteBuffer buf) {
    return isZero(buf, buf.position(), buf.remaining());
  }

  /** Sets the {@code length} bytes of {@code buf} at absolute index {@code from} to zero. */
  public static void fill(ByteBuffer buf, int from, int length) {
    for (int pos = from, end = from + length; pos < end; pos += STEP) {
      int n = Math.min(STEP, end - pos);
      buf.put(pos, ZEROS, 0, n);
    }
  }
}
