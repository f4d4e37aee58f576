package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.RawImage;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A copy that ends must count either as remaining (in flight) or as copied for whoever reports
 * progress meanwhile. When it counted as neither, a sync=top scan or a skipped copy that reported
 * "remaining" at that moment set the total too low, and the job completed with offset > len (found
 * by {@link BackupPointInTimePropertyTest}).
 */
class BlockCopyProgressTest {

  static final int CLUSTER = 64 * 1024;

  @TempDir Path dir;

  /** QEMU's ProgressMeter as Job keeps it: total = current + remaining at each report. */
  static final class Meter implements BlockCopy.Progress {
    final AtomicLong current = new AtomicLong();
    final AtomicLong total = new AtomicLong();
    volatile Runnable onFirstCopy;

    @Override
    public void copied(long bytes) {
      Runnable r = onFirstCopy;
      onFirstCopy = null;
      if (r != null) {
        r.run(); // another thread reports "remaining" right as this copy ends
      }
      current.addAndGet(bytes);
    }

    @Override
    public void remaining(long bytes) {
      total.set(current.get() + bytes);
    }
  }

  @Test
  @Timeout(30)
  void remainingReportedWhileACopyEndsKeepsTheTotalRight() throws Exception {
    try (RawImage src = RawImage.create(dir.resolve("src.raw"), 2 * CLUSTER);
        RawImage tgt = RawImage.create(dir.resolve("tgt.raw"), 2 * CLUSTER)) {
      src.write(0, ByteBuffer.wrap(new byte[] {1, 2, 3}));
      Meter meter = new Meter();
      BlockCopy bcs = new BlockCopy(src, tgt, CLUSTER, 0, false, false, meter);
      bcs.updateRemaining();
      assertThat(meter.total.get()).isEqualTo(2 * CLUSTER);
      AtomicReference<Thread> reporter = new AtomicReference<>();
      meter.onFirstCopy = () -> {
        Thread t = new Thread(bcs::updateRemaining, "progress-reporter");
        reporter.set(t);
        t.start();
        try {
          t.join(500); // it must not see the ending copy as neither remaining nor copied
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
        }
      };

      bcs.copyRange(0, 1);
      reporter.get().join();

      assertThat(meter.current.get()).isEqualTo(CLUSTER);
      assertThat(bcs.remainingBytes()).isEqualTo(CLUSTER);
      assertThat(meter.total.get()).as("total after a report raced the end of a copy").isEqualTo(2 * CLUSTER);
    }
  }
}
