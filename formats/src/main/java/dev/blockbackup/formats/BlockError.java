package dev.blockbackup.formats;

/**
 * Why a block request failed, as an errno. The values are Linux's, which are also the NBD
 * protocol's error numbers, so the NBD server answers them as they are.
 */
public enum BlockError {
  EPERM(1),
  EIO(5),
  ENOMEM(12),
  EINVAL(22),
  ENOSPC(28),
  EOVERFLOW(75),
  ENOTSUP(95),
  ESHUTDOWN(108);

  private final int errno;

  BlockError(int errno) {
    this.errno = errno;
  }

  public int errno() {
    return errno;
  }
}
