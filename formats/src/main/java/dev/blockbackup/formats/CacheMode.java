package dev.blockbackup.formats;

import java.util.Locale;

/**
 * Whether a driver's syncs of its host file reach the disk, after QEMU's {@code cache=} modes.
 * Only the two that differ for a pure-Java driver are offered: Java has no O_DIRECT, so
 * {@code none} and {@code directsync} have no meaning here.
 */
public enum CacheMode {
  /**
   * Flushes, FUA writes and the ordering syncs of qcow2 metadata reach the disk: a host crash can
   * lose unflushed writes but never corrupt the image. QEMU's default.
   */
  WRITEBACK("writeback"),
  /**
   * Every sync is skipped, so a host crash may lose or corrupt the image. What {@code qemu-img
   * convert} uses for its target by default ({@code -t unsafe}): a copy that is thrown away when
   * it fails does not need to survive a crash half-way.
   */
  UNSAFE("unsafe");

  private final String qemuName;

  CacheMode(String qemuName) {
    this.qemuName = qemuName;
  }

  /** QEMU's name for the mode. */
  public String qemuName() {
    return qemuName;
  }

  /** The mode QEMU calls {@code name}; EINVAL for modes we do not offer. */
  public static CacheMode parse(String name) throws BlockIOException {
    for (CacheMode m : values()) {
      if (m.qemuName.equals(name.toLowerCase(Locale.ROOT))) {
        return m;
      }
    }
    throw new BlockIOException(BlockError.EINVAL, "unsupported cache mode '" + name + "' (supported: writeback, unsafe)");
  }
}
