package dev.blockbackup.engine;

/** QAPI's MirrorSyncMode: what a backup copies in the background. */
public enum MirrorSyncMode {
  /** The whole disk, backing chain flattened. */
  full,
  /** Only clusters allocated in the source's top layer. */
  top,
  /** Nothing in the background: only what guests are about to overwrite (fleecing). */
  none,
  /** Alias of bitmap with bitmap-mode on-success. */
  incremental,
  /** Only clusters dirty in a bitmap (see {@link BitmapSyncMode} for what happens to it). */
  bitmap;

  public static MirrorSyncMode parse(String s) {
    for (MirrorSyncMode m : values()) {
      if (m.name().equals(s)) {
        return m;
      }
    }
    throw new IllegalArgumentException("sync must be full, top, none, incremental or bitmap, not '" + s + "'");
  }
}
