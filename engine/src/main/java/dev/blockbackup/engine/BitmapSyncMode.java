package dev.blockbackup.engine;

/**
 * QAPI's BitmapSyncMode: what a bitmap backup does with its bitmap when the job ends.
 *
 * <p>During the job the bitmap is frozen and a successor records the writes made since the job's
 * point in time. At the end {@link #on_success} makes the successor the bitmap when the job
 * succeeded and merges it back otherwise; {@link #never} always merges it back; {@link #always}
 * makes the successor the bitmap either way, and after a failure adds what the job had not copied.
 */
public enum BitmapSyncMode {
  /** "on-success": the incremental style; a failed job leaves the bitmap as it was, plus new writes. */
  on_success,
  /** "never": the differential style; the bitmap keeps every bit, plus new writes. */
  never,
  /** "always": best effort; the bitmap is what the target still lacks, whatever the outcome. */
  always;

  /** The QAPI spelling ("on-success", "never", "always"). */
  public String qapiName() {
    return name().replace('_', '-');
  }

  public static BitmapSyncMode parse(String s) {
    for (BitmapSyncMode m : values()) {
      if (m.qapiName().equals(s)) {
        return m;
      }
    }
    throw new IllegalArgumentException("bitmap-mode must be on-success, never or always, not '" + s + "'");
  }
}
