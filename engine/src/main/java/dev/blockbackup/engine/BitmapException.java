package dev.blockbackup.engine;

/**
 * A block-dirty-bitmap command (or a job using a bitmap) refused: the message is QEMU's, word for
 * word; {@link #hint()} is the line QEMU appends as a hint (error_append_hint), or null.
 *
 * <p>Unchecked, like {@link JobException}: it goes back to whoever sent the command.
 */
public final class BitmapException extends RuntimeException {

  private static final long serialVersionUID = 1L;

  private final String hint;

  BitmapException(String message) {
    this(message, null);
  }

  BitmapException(String message, String hint) {
    super(message);
    this.hint = hint;
  }

  /** QEMU's hint for this error (without its newline), or null. */
  public String hint() {
    return hint;
  }
}
