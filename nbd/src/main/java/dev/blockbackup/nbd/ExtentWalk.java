package dev.blockbackup.nbd;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import java.util.List;

/**
 * Walks a device's block status over [pos, end) in order, asking again where each answer ends:
 * the one loop behind every NBD reply that describes a range (block status, sparse reads).
 */
final class ExtentWalk {

  private ExtentWalk() {}

  /** Takes one run [from, to) of extent {@code e}; false stops the walk before it. */
  interface Run {
    boolean accept(long from, long to, Extent e) throws BlockIOException;
  }

  /**
   * Hands {@code run} each run of [pos, end) and returns where the walk stopped: {@code end}, or
   * earlier where {@code run} said stop or the device described nothing, skipped or overlapped
   * (what follows is then not certain, and the caller reports it conservatively).
   */
  static long walk(BlockDevice device, long pos, long end, Run run) throws BlockIOException {
    while (pos < end) {
      List<Extent> extents = device.blockStatus(pos, end - pos);
      long before = pos;
      for (Extent e : extents) {
        long from = Math.max(e.offset(), pos);
        long to = Math.min(e.end(), end);
        if (from != pos || to <= from || !run.accept(from, to, e)) {
          return pos;
        }
        pos = to;
      }
      if (pos == before) {
        return pos;
      }
    }
    return pos;
  }
}
