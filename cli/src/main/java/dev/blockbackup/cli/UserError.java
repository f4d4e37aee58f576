package dev.blockbackup.cli;

/**
 * A mistake of the user's (a missing file, a bad size, an unknown option): {@link Main} prints its
 * message as one line and exits 1, without a stack trace, the way qemu-img reports such mistakes.
 */
final class UserError extends RuntimeException {

  private static final long serialVersionUID = 1L;

  UserError(String message) {
    super(message);
  }

  UserError(String message, Throwable cause) {
    super(message, cause);
  }
}
