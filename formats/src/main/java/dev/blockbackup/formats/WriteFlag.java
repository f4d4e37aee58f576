package dev.blockbackup.formats;

/** Modifiers of a write or write-zeroes request, named after their NBD command flags. */
public enum WriteFlag {
  /** Force unit access: the written data is durable before the request completes (NBD_CMD_FLAG_FUA). */
  FUA,
  /** Write-zeroes may deallocate the range instead of writing zeros (the opposite of NBD_CMD_FLAG_NO_HOLE). */
  MAY_UNMAP,
  /** Write-zeroes fails with ENOTSUP rather than write buffers of zeros (NBD_CMD_FLAG_FAST_ZERO). */
  NO_FALLBACK;

  /** Whether {@code wanted} is among {@code flags}. */
  public static boolean isSet(WriteFlag[] flags, WriteFlag wanted) {
    for (WriteFlag f : flags) {
      if (f == wanted) {
        return true;
      }
    }
    return false;
  }
}
