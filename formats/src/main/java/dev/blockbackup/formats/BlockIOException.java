package dev.blockbackup.formats;

import java.io.IOException;

/** A block request failed; {@link #error()} says why, as the errno an NBD client would see. */
public class BlockIOException extends IOException {

  private final BlockError error;

  public BlockIOException(BlockError error, String message) {
    super(message);
    this.error = error;
  }

  public BlockIOException(BlockError error, String message, Throwable cause) {
    super(message, cause);
    this.error = error;
  }

  public BlockError error() {
    return error;
  }

  /** Wraps an I/O failure of the host file: ENOSPC when the host said so, EIO otherwise. */
  public static BlockIOException fromHost(String what, IOException e) {
    if (e instanceof BlockIOException b) {
      return b;
    }
    String m = String.valueOf(e.getMessage());
    BlockError err = m.contains("No space left") || m.contains("Disk quota exceeded") ? BlockError.ENOSPC : BlockError.EIO;
    return new BlockIOException(err, what + ": " + m, e);
  }

  /** Checks that {@code [offset, offset+length)} lies inside a device of {@code size} bytes. */
  public static void checkRange(long offset, long length, long size) throws BlockIOException {
    if (offset < 0 || length < 0 || offset > size || length > size - offset) {
      throw new BlockIOException(
          BlockError.EINVAL, "request [" + offset + ", +" + length + ") is outside the device of " + size + " bytes");
    }
  }
}
