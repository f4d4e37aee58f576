package dev.blockbackup.nbd;

import java.io.IOException;
import java.nio.file.Path;

/**
 * A TLS credentials directory that cannot be used: a file is missing, unreadable or not what
 * QEMU's layout expects there. The message names the file; {@link #file()} gives it.
 */
public final class TlsCredentialsException extends IOException {

  private final transient Path file;

  TlsCredentialsException(Path file, String problem) {
    super(file + ": " + problem);
    this.file = file;
  }

  TlsCredentialsException(Path file, String problem, Throwable cause) {
    super(file + ": " + problem, cause);
    this.file = file;
  }

  /** The file (or directory) at fault. */
  public Path file() {
    return file;
  }
}
