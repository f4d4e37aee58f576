package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.engine.ErrorInjectingDevice.Operation;
import dev.blockbackup.engine.ErrorInjectingDevice.Rule;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.RawImage;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

@Timeout(30)
class ErrorInjectingDeviceTest {

  static final long SIZE = 1 << 20;

  @TempDir Path dir;
  RawImage raw;
  ErrorInjectingDevice dev;

  @BeforeEach
  void setUp() throws Exception {
    raw = RawImage.create(dir.resolve("disk.raw"), SIZE);
    raw.write(0, ByteBuffer.wrap(filled(SIZE, 0x11)));
    dev = new ErrorInjectingDevice(raw);
  }

  @AfterEach
  void tearDown() throws Exception {
    dev.close();
  }

  private static byte[] filled(long n, int b) {
    byte[] a = new byte[(int) n];
    java.util.Arrays.fill(a, (byte) b);
    return a;
  }

  private byte[] rawAt(long off, int n) throws Exception {
    ByteBuffer b = ByteBuffer.allocate(n);
    raw.read(off, b);
    return b.array();
  }

  @Test
  void withoutRulesEverythingPassesThrough() throws Exception {
    dev.write(4096, ByteBuffer.wrap(filled(4096, 0x22)));
    dev.writeZeroes(8192, 4096);
    dev.discard(12288, 4096);
    dev.flush();
    ByteBuffer b = ByteBuffer.allocate(4096);
    dev.read(4096, b);
    assertThat(b.array()).isEqualTo(filled(4096, 0x22));
    assertThat(rawAt(8192, 4096)).isEqualTo(new byte[4096]);
    assertThat(dev.injections()).isZero();
  }

  @Test
  void readFaultFailsOnlyOverlappingReadsWithTheChosenError() throws Exception {
    dev.inject(Rule.fail(Operation.read, BlockError.EIO).at(65536, 65536));
    assertThatThrownBy(() -> dev.read(65536 + 100, ByteBuffer.allocate(10)))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EIO));
    // a read that merely overlaps the range by one byte at either end fails too
    assertThatThrownBy(() -> dev.read(65536 - 10, ByteBuffer.allocate(11))).isInstanceOf(BlockIOException.class);
    assertThatThrownBy(() -> dev.read(131071, ByteBuffer.allocate(1))).isInstanceOf(BlockIOException.class);
    // adjacent reads and writes into the range are not reads of it
    dev.read(0, ByteBuffer.allocate(65536));
    dev.read(131072, ByteBuffer.allocate(4096));
    dev.write(65536, ByteBuffer.wrap(filled(4096, 0x33)));
    assertThat(rawAt(65536, 4096)).isEqualTo(filled(4096, 0x33));
    assertThat(dev.injections()).isEqualTo(3);
  }

  @Test
  void writeFaultCoversEveryKindOfWriteAndChangesNothing() throws Exception {
    dev.inject(Rule.fail(Operation.write, BlockError.ENOSPC).at(0, 4096));
    List<ThrowingCall> calls = List.of(
        () -> dev.write(0, ByteBuffer.wrap(filled(512, 0x44))),
        () -> dev.writeZeroes(1024, 512),
        () -> dev.discard(0, 4096),
        () -> dev.writeCompressed(0, ByteBuffer.wrap(filled(4096, 0x44))));
    for (ThrowingCall c : calls) {
      assertThatThrownBy(c::call)
          .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.ENOSPC));
    }
    assertThat(rawAt(0, 4096)).isEqualTo(filled(4096, 0x11));
    dev.read(0, ByteBuffer.allocate(4096)); // reads are not writes
    dev.flush();
    assertThat(dev.injections()).isEqualTo(4);
  }

  @Test
  void flushRuleFailsFlushes() throws Exception {
    dev.inject(Rule.fail(Operation.flush, BlockError.EIO).times(1));
    assertThatThrownBy(dev::flush).isInstanceOf(BlockIOException.class);
    dev.flush();
    assertThat(dev.injections()).isEqualTo(1);
  }

  @Test
  void countedRuleFiresNTimesThenIsSpent() throws Exception {
    dev.inject(Rule.fail(Operation.write, BlockError.EIO).at(0, 4096).times(2));
    ByteBuffer data = ByteBuffer.wrap(filled(4096, 0x55));
    assertThatThrownBy(() -> dev.write(0, data.duplicate())).isInstanceOf(BlockIOException.class);
    assertThatThrownBy(() -> dev.write(0, data.duplicate())).isInstanceOf(BlockIOException.class);
    dev.write(0, data.duplicate());
    assertThat(rawAt(0, 4096)).isEqualTo(filled(4096, 0x55));
    assertThat(dev.injections()).isEqualTo(2);
    assertThat(dev.armedRules()).isZero();
  }

  @Test
  void firstMatchingRuleDecidesAndClearRemovesAll() throws Exception {
    dev.inject(Rule.fail(Operation.read, BlockError.ENOSPC).at(0, 4096).times(1))
        .inject(Rule.fail(Operation.read, BlockError.EIO));
    assertThatThrownBy(() -> dev.read(0, ByteBuffer.allocate(1)))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.ENOSPC));
    assertThatThrownBy(() -> dev.read(0, ByteBuffer.allocate(1)))
        .isInstanceOfSatisfying(BlockIOException.class, e -> assertThat(e.error()).isEqualTo(BlockError.EIO));
    dev.clear();
    dev.read(0, ByteBuffer.allocate(1));
    assertThat(dev.armedRules()).isZero();
    assertThat(dev.injections()).isEqualTo(2);
  }

  @Test
  void delayHoldsTheRequestUntilClearThenLetsItThrough() throws Exception {
    dev.inject(Rule.delay(Operation.write, Duration.ofMinutes(5)).at(0, 4096));
    CompletableFuture<Void> held = CompletableFuture.runAsync(() -> {
      try {
        dev.write(0, ByteBuffer.wrap(filled(4096, 0x66)));
      } catch (BlockIOException e) {
        throw new RuntimeException(e);
      }
    });
    // other requests are not held behind it
    while (dev.injections() == 0) {
      Thread.sleep(5);
    }
    dev.write(8192, ByteBuffer.wrap(filled(4096, 0x77)));
    assertThat(held).isNotDone();
    assertThat(rawAt(0, 4096)).isEqualTo(filled(4096, 0x11));
    dev.clear();
    held.get(10, TimeUnit.SECONDS);
    assertThat(rawAt(0, 4096)).isEqualTo(filled(4096, 0x66));
  }

  @Test
  void delayEndsByItself() throws Exception {
    dev.inject(Rule.delay(Operation.read, Duration.ofMillis(50)).times(1));
    dev.read(0, ByteBuffer.allocate(16));
    assertThat(dev.injections()).isEqualTo(1);
  }

  @Test
  void countedRuleFiresExactlyNTimesUnderConcurrency() throws Exception {
    dev.inject(Rule.fail(Operation.write, BlockError.EIO).times(100));
    AtomicInteger failed = new AtomicInteger();
    CountDownLatch go = new CountDownLatch(1);
    List<Thread> threads = new ArrayList<>();
    for (int t = 0; t < 8; t++) {
      int id = t;
      Thread th = new Thread(() -> {
        try {
          go.await();
          for (int i = 0; i < 50; i++) {
            try {
              dev.write(id * 4096L, ByteBuffer.wrap(filled(512, id)));
            } catch (BlockIOException e) {
              failed.incrementAndGet();
            }
          }
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
        }
      });
      th.start();
      threads.add(th);
    }
    go.countDown();
    for (Thread th : threads) {
      th.join();
    }
    assertThat(failed.get()).isEqualTo(100);
    assertThat(dev.injections()).isEqualTo(100);
  }

  @Test
  void badRulesAreRefusedWithTheValue() {
    assertThatThrownBy(() -> Rule.fail(Operation.read, BlockError.EIO).times(0)).hasMessageContaining("(0)");
    assertThatThrownBy(() -> Rule.fail(Operation.read, BlockError.EIO).at(-1, 10)).hasMessageContaining("-1");
    assertThatThrownBy(() -> Rule.delay(Operation.read, Duration.ZERO)).hasMessageContaining("PT0S");
  }

  interface ThrowingCall {
    void call() throws Exception;
  }
}
