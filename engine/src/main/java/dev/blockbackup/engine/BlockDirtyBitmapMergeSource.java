package dev.blockbackup.engine;

import java.util.Objects;

/**
 * QAPI's BlockDirtyBitmapMergeSource: a bitmap to merge from, on the target's own node ({@link
 * #local}) or on another node ({@link #external}).
 */
public record BlockDirtyBitmapMergeSource(BlockNode node, String name) {

  public BlockDirtyBitmapMergeSource {
    Objects.requireNonNull(name, "name");
  }

  /** A bitmap of the merge target's node. */
  public static BlockDirtyBitmapMergeSource local(String name) {
    return new BlockDirtyBitmapMergeSource(null, name);
  }

  /** A bitmap of {@code node}. */
  public static BlockDirtyBitmapMergeSource external(BlockNode node, String name) {
    return new BlockDirtyBitmapMergeSource(Objects.requireNonNull(node, "node"), name);
  }
}
