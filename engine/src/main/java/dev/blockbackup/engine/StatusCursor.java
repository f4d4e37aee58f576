package dev.blockbackup.engine;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.Extent;
import java.util.List;

/**
 * The source's block status for a walk that moves forward through the disk: one driver call
 * answers as many extents as the driver will, and the walk reads them until it passes the last, so
 * an empty multi-TiB disk is one call, not one per chunk. Looking behind the cached answer (the
 * walk starting over) asks the driver again.
 *
 * <p>An answer may be older than the data: the background copier only acts on it for clusters
 * still dirty in the copy bitmap, and a dirty cluster has not been written since the point in time
 * (every guest write to one goes through copy-before-write, which claims it first).
 */
final class StatusCursor {

  private final BlockDevice source;
  private final long len;
  private List<Extent> extents = List.of();
  private int index;

  StatusCursor(BlockDevice source) {
    this.source = source;
    this.len = source.size();
  }

  /**
   * The extent that holds {@code offset}, or null when the driver does not say (a block status
   * error only costs the caller its shortcuts).
   */
  Extent at(long offset) {
    if (extents.isEmpty() || offset < extents.get(0).offset() || offset >= extents.get(extents.size() - 1).end()) {
      try {
        extents = source.blockStatus(offset, len - offset);
      } catch (BlockIOException e) {
        extents = List.of();
      }
      index = 0;
    }
    while (index < extents.size() && extents.get(index).end() <= offset) {
      index++;
    }
    if (index > 0 && extents.get(index - 1).end() > offset) {
      index = 0; // an earlier offset inside the cached answer: look from its start
      while (extents.get(index).end() <= offset) {
        index++;
      }
    }
    if (index >= extents.size() || extents.get(index).offset() > offset) {
      return null;
    }
    return extents.get(index);
  }
}
