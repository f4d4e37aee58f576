package dev.blockbackup.formats;

import static org.assertj.core.api.Assertions.assertThat;

import java.nio.ByteBuffer;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

class ZerosTest {

  @Test
  void aSingleNonZeroByteAnywhereInARangeMakesItNonZero() {
    SplittableRandom r = new SplittableRandom(7);
    for (ByteBuffer buf : new ByteBuffer[] {ByteBuffer.allocate(3 << 20), ByteBuffer.allocateDirect(3 << 20)}) {
      for (int i = 0; i < 200; i++) {
        int from = r.nextInt(buf.capacity());
        int length = r.nextInt(buf.capacity() - from + 1);
        assertThat(Zeros.isZero(buf, from, length)).isTrue();
        if (length == 0) {
          continue;
        }
        int at = from + r.nextInt(length);
        buf.put(at, (byte) (1 + r.nextInt(255)));
        assertThat(Zeros.isZero(buf, from, length)).as("byte %d in [%d, +%d)", at, from, length).isFalse();
        assertThat(Zeros.isZero(buf, from, at - from)).isTrue();
        assertThat(Zeros.isZero(buf, at + 1, from + length - at - 1)).isTrue();
        buf.put(at, (byte) 0);
      }
    }
  }

  @Test
  void wordEdgesAndAFourKibHalfAreJudgedAlone() {
    ByteBuffer b = ByteBuffer.allocateDirect(8192);
    for (int i : new int[] {0, 7, 8, 4095, 4096, 8191}) {
      b.put(i, (byte) 1);
      assertThat(Zeros.isZero(b, 0, 8192)).as("byte %d", i).isFalse();
      assertThat(Zeros.isZero(b, i < 4096 ? 4096 : 0, 4096)).isTrue();
      b.put(i, (byte) 0);
    }
  }

  @Test
  void fillZeroesExactlyTheRangeGiven() {
    ByteBuffer buf = ByteBuffer.allocate((2 << 20) + 10);
    for (int i = 0; i < buf.capacity(); i++) {
      buf.put(i, (byte) 0x5a);
    }
    Zeros.fill(buf, 3, buf.capacity() - 6);
    assertThat(Zeros.isZero(buf, 3, buf.capacity() - 6)).isTrue();
    assertThat(buf.get(2)).isEqualTo((byte) 0x5a);
    assertThat(buf.get(buf.capacity() - 3)).isEqualTo((byte) 0x5a);
    buf.position(3).limit(buf.capacity() - 3);
    assertThat(Zeros.isZero(buf)).isTrue();
  }
}
