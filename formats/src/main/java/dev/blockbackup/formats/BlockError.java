package dev.blockbackup.formats;

/**
 * Why a block request failed, as an errno. The values are Linux's, which are also the NBD
 * protocol's error numbers, so the NBD server answers them as they are.
 */
public enum BlockError {
  EPERM(1, "Operation not permitted"),
  EIO(5, "Input/output error"),
  /** A lock another open of the image holds (QEMU's image locking answers -EAGAIN). */
  EAGAIN(11, "Resource temporarily unavailable"),
  ENOMEM(12, "Cannot allocate memory"),
  EACCES(13, "Permission denied"),
  EINVAL(22, "Invalid argument"),
  ENOSPC(28, "No space left on device"),
  EOVERFLOW(75, "Value too large for defined data type"),
  ENOTSUP(95, "Operation not supported"),
  ESHUTDOWN(108, "Cannot send after transport endpoint shutdown"),
  ETIMEDOUT(110, "Connection timed out"),
  ECANCELED(125, "Operation canceled");

  private final int errno;
  private final String strerror;

  BlockError(int errno, String strerror) {
    this.errno = errno;
    this.strerror = strerror;
  }

  public int errno() {
    return errno;
  }

  /**
   * glibc's strerror text: what QEMU puts in a job's error field and BLOCK_JOB_COMPLETED, e.g.
   * "Input/output error".
   */
  public String strerror() {
    return strerror;
  }
}
