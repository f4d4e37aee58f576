package dev.blockbackup.engine;

/** QAPI's OnCbwError: what a failed copy-before-write does (QEMU 7.1). */
public enum OnCbwError {
  /** The guest's request fails; the snapshot stays valid. QEMU's default. */
  break_guest_write,
  /** The guest's request goes through; the snapshot is broken and its job fails. */
  break_snapshot;

  /** The QAPI spelling, e.g. "break-snapshot". */
  public String qapiName() {
    return name().replace('_', '-');
  }

  /** Parses the QAPI spelling. */
  public static OnCbwError parse(String s) {
    for (OnCbwError v : values()) {
      if (v.qapiName().equals(s)) {
        return v;
      }
    }
    throw new IllegalArgumentException("on-cbw-error must be break-guest-write or break-snapshot, not '" + s + "'");
  }
}
