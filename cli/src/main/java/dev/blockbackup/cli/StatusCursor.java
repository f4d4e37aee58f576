package dev.blockbackup.cli;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import java.util.List;

/**
 * A forward-only walk over a device's block status that finds where the next bytes not known to be
 * zero begin. It asks for the whole rest of the range at once and keeps the answer, so each extent
 * is fetched once however many questions fall inside it: an empty disk is one call, not one per
 * chunk (qemu-img convert's block status of whole extents, not of its buffer).
 *
 * <p>Not thread-safe: its one user asks under its own lock. Questions must not go backwards.
 */
final class StatusCursor {

  private final BlockDevice device;
  /** The last answer, and the index of the first of its extents not yet passed. */
  private List<Extent> extents = List.of();
  private int next;

  StatusCursor(BlockDevice device) {
    this.device = device;
  }

  /** The first byte in [offset, end) that block status does not report as zero, or -1. */
  long nextNonZero(long offset, long end) throws BlockIOException {
    long pos = offset;
    while (pos < end) {
      while (next < extents.size() && extents.get(next).end() <= pos) {
        next++;
      }
      if (next == extents.size()) {
        extents = device.blockStatus(pos, end - pos);
        next = 0;
        if (extents.isEmpty() || extents.get(0).offset() != pos) {
          throw new BlockIOException(BlockError.EIO, "block status at " + pos + " answered " + extents);
        }
      }
      Extent e = extents.get(next);
      if (e.offset() > pos) {
        throw new BlockIOException(BlockError.EIO, "block status at " + pos + " answered " + e + " out of order");
      }
      if (!e.zero()) {
        return pos;
      }
      pos = e.end();
    }
    return -1;
  }
}
