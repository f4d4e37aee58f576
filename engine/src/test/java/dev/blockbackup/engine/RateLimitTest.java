package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;

import org.junit.jupiter.api.Test;

/** The 100 ms slice arithmetic, on a clock the test moves by hand. */
class RateLimitTest {

  static final long MS = 1_000_000L;

  @Test
  void noLimitNeverDelays() {
    RateLimit r = new RateLimit();
    r.setSpeed(0);
    r.account(1L << 40);
    assertThat(r.delayNanos(0)).isZero();
  }

  @Test
  void aSliceTakesItsQuotaThenWaitsForTheSliceEnd() {
    RateLimit r = new RateLimit();
    r.setSpeed(10L << 20); // 10 MiB/s: 1 MiB per 100 ms slice
    long t0 = 1_000 * MS;
    assertThat(r.delayNanos(t0)).isZero();
    r.account(512 << 10);
    assertThat(r.delayNanos(t0 + 10 * MS)).isZero();
    r.account(512 << 10); // quota reached
    assertThat(r.delayNanos(t0 + 20 * MS)).isEqualTo(80 * MS);
    // the next slice starts afresh
    assertThat(r.delayNanos(t0 + 101 * MS)).isZero();
  }

  @Test
  void anOvershootStretchesTheSliceInProportion() {
    RateLimit r = new RateLimit();
    r.setSpeed(10L << 20);
    long t0 = 5_000 * MS;
    assertThat(r.delayNanos(t0)).isZero();
    r.account(3L << 20); // three slices' worth at once
    assertThat(r.delayNanos(t0)).isEqualTo(300 * MS);
    assertThat(r.delayNanos(t0 + 299 * MS)).isEqualTo(1 * MS);
    assertThat(r.delayNanos(t0 + 301 * MS)).isZero();
  }

  @Test
  void overTimeTheRateIsTheSpeed() {
    RateLimit r = new RateLimit();
    long speed = 4L << 20;
    r.setSpeed(speed);
    long now = 0;
    long sent = 0;
    while (now < 10_000 * MS) {
      long d = r.delayNanos(now);
      if (d > 0) {
        now += d;
        continue;
      }
      r.account(64 << 10);
      sent += 64 << 10;
    }
    // ten seconds at 4 MiB/s, give or take one chunk and one slice
    assertThat(sent).isBetween(40L << 20, (40L << 20) + speed / 10 + (64 << 10));
  }

  @Test
  void aNewSpeedAppliesToTheNextDecision() {
    RateLimit r = new RateLimit();
    r.setSpeed(1 << 20);
    assertThat(r.delayNanos(0)).isZero();
    r.account(1 << 20);
    assertThat(r.delayNanos(0)).isPositive();
    r.setSpeed(0);
    assertThat(r.delayNanos(0)).isZero();
  }
}
