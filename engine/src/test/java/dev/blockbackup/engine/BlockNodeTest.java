package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.ForwardingBlockDevice;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.WriteFlag;
import dev.blockbackup.testkit.Parked;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.Callable;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.FutureTask;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

@Timeout(30)
class BlockNodeTest {

  private static final Duration DEADLINE = Duration.ofSeconds(10);

  @TempDir Path dir;

  /** Holds every write until {@link #release} opens. */
  static final class Gate extends ForwardingBlockDevice {
    final CountDownLatch entered = new CountDownLatch(1);
    final CountDownLatch release = new CountDownLatch(1);

    Gate(BlockDevice d) {
      super(d);
    }

    @Override
    public void write(long offset, ByteBuffer src, WriteFlag... flags) throws BlockIOException {
      entered.countDown();
      try {
        release.await();
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
      super.write(offset, src, flags);
    }
  }

  /** A call running on its own thread, so a test can see where that thread waits. */
  record Running(Thread thread, FutureTask<Object> result) {
    static Running start(String name, Callable<Object> body) {
      FutureTask<Object> task = new FutureTask<>(body);
      Thread t = new Thread(task, name);
      t.start();
      return new Running(t, task);
    }
  }

  @Test
  void drainWaitsForRequestsInFlightAndHoldsNewOnes() throws Exception {
    Gate gate = new Gate(RawImage.create(dir.resolve("a.raw"), 1 << 20));
    BlockNode node = BlockNode.of("drive0", gate);
    Running w = Running.start("writer", () -> {
      node.write(0, ByteBuffer.wrap(new byte[] {1}));
      return null;
    });
    assertThat(gate.entered.await(10, TimeUnit.SECONDS)).isTrue();
    assertThat(node.inFlight()).isEqualTo(1);

    Running drain = Running.start("drainer", node::drain);
    // The drain has begun (new requests wait) and its thread is parked inside drain(): it can
    // only go on once the write in flight leaves.
    Parked.awaitParkedIn(drain.thread(), "BlockNode", "drain", DEADLINE);
    assertThat(node.isDrained()).isTrue();
    assertThat(drain.result()).isNotDone();
    gate.release.countDown();
    BlockNode.Drained d = (BlockNode.Drained) drain.result().get(10, TimeUnit.SECONDS);
    w.result().get(10, TimeUnit.SECONDS);
    assertThat(node.inFlight()).isZero();
    assertThat(node.isDrained()).isTrue();
    // a caller that must not block is told "not now" at once, and nothing stays admitted
    assertThat(node.readNoWait(0, ByteBuffer.allocateDirect(1))).isFalse();
    assertThat(node.inFlight()).isZero();

    // while drained, a new request waits: its thread parks on the way in, before the device
    Running r = Running.start("reader", () -> {
      node.read(0, ByteBuffer.allocate(1));
      return null;
    });
    Parked.awaitParkedIn(r.thread(), "BlockNode", "read", DEADLINE);
    assertThat(node.inFlight()).as("the read is not admitted").isZero();
    assertThat(r.result()).isNotDone();
    d.close();
    r.result().get(10, TimeUnit.SECONDS);
    assertThat(node.isDrained()).isFalse();
    d.close(); // a second close changes nothing
    assertThat(node.isDrained()).isFalse();
    node.close();
  }

  @Test
  void filtersGoInOnlyWhileDrained() throws Exception {
    RawImage raw = RawImage.create(dir.resolve("b.raw"), 1 << 20);
    BlockNode node = BlockNode.of("drive0", raw);
    ForwardingBlockDevice filter = new ForwardingBlockDevice(node.unfiltered()) {};
    assertThatThrownBy(() -> node.insertFilter(node.unfiltered(), filter)).isInstanceOf(IllegalStateException.class);
    try (BlockNode.Drained d = node.drain()) {
      node.insertFilter(node.unfiltered(), filter);
    }
    assertThat(node.device()).isSameAs(filter);
    assertThat(node.base()).isSameAs(raw);
    try (BlockNode.Drained d = node.drain()) {
      node.removeFilter(filter, node.unfiltered());
    }
    assertThat(node.device()).isSameAs(node.unfiltered());
    node.close();
  }

  @Test
  void aBusyNodeRefusesASecondJobAndClose() throws Exception {
    RawImage raw = RawImage.create(dir.resolve("c.raw"), 1 << 20);
    BlockNode node = BlockNode.of("drive0", raw);
    node.block("block device is in use by block job: backup");
    assertThatThrownBy(() -> node.block("x"))
        .isInstanceOf(JobException.class)
        .hasMessage("Node 'drive0' is busy: block device is in use by block job: backup");
    assertThatThrownBy(node::close).isInstanceOf(BlockIOException.class);
    node.unblock("block device is in use by block job: backup");
    node.close();
  }
}
