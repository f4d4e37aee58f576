package dev.blockbackup.engine;

import dev.blockbackup.formats.BlockIOException;

/**
 * A copy failed, and whether reading the source or writing the target failed: a backup job applies
 * on-source-error to the first and on-target-error to the second (block_copy_call_status's
 * error_is_read).
 */
public final class BlockCopyException extends BlockIOException {

  private static final long serialVersionUID = 1L;

  private final boolean read;

  BlockCopyException(BlockIOException cause, boolean read) {
    super(cause.error(), (read ? "reading the source: " : "writing the target: ") + cause.getMessage(), cause);
    this.read = read;
  }

  /** True when the source read failed, false when the target write did. */
  public boolean isRead() {
    return read;
  }
}
