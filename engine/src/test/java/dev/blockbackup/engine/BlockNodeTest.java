package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.ForwardingBlockDevice;
import dev.blockbackup.formats.RawImage;
import dev.blockbackup.formats.WriteFlag;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

@Timeout(30)
class BlockNodeTest {

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

  @Test
  void drainWaitsForRequestsInFlightAndHoldsNewOnes() throws Exception {
    Gate gate = new Gate(RawImage.create(dir.resolve("a.raw"), 1 << 20));
    BlockNode node = BlockNode.of("drive0", gate);
    CompletableFuture<Void> w = CompletableFuture.runAsync(() -> {
      try {
        node.write(0, ByteBuffer.wrap(new byte[] {1}));
      } catch (BlockIOException e) {
        throw new RuntimeException(e);
      }
    });
    assertThat(gate.entered.await(10, TimeUnit.SECONDS)).isTrue();
    assertThat(node.inFlight()).isEqualTo(1);

    CompletableFuture<BlockNode.Drained> drain = CompletableFuture.supplyAsync(node::drain);
    Thread.sleep(100);
    assertThat(drain).isNotDone(); // the write is still in flight
    gate.release.countDown();
    BlockNode.Drained d = drain.get(10, TimeUnit.SECONDS);
    w.get(10, TimeUnit.SECONDS);
    assertThat(node.inFlight()).isZero();
    assertThat(node.isDrained()).isTrue();

    // while drained, a new request waits
    CompletableFuture<Void> r = CompletableFuture.runAsync(() -> {
      try {
        node.read(0, ByteBuffer.allocate(1));
      } catch (BlockIOException e) {
        throw new RuntimeException(e);
      }
    });
    Thread.sleep(100);
    assertThat(r).isNotDone();
    d.close();
    r.get(10, TimeUnit.SECONDS);
    assertThat(node.isDrained()).isFalse();
    d.close(); // a second close changes nothing
    assertThat(node.isDrained()).isFalse();
    node.close();
  }

  @Test
  void filtersGoInOnlyWhileDrained() throws Exception {
    RawImage raw = RawImage.create(dir.resolve("b.raw"), 1 << 20);
    BlockNode node = BlockNode.of("drive0", raw);
    ForwardingBlockDevice filter = new ForwardingBlockDevice(raw) {};
    assertThatThrownBy(() -> node.insertFilter(raw, filter)).isInstanceOf(IllegalStateException.class);
    try (BlockNode.Drained d = node.drain()) {
      node.insertFilter(raw, filter);
    }
    assertThat(node.device()).isSameAs(filter);
    assertThat(node.base()).isSameAs(raw);
    try (BlockNode.Drained d = node.drain()) {
      node.removeFilter(filter, raw);
    }
    assertThat(node.device()).isSameAs(raw);
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
