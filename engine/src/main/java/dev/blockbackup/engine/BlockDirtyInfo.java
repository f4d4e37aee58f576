package dev.blockbackup.engine;

/**
 * QAPI's BlockDirtyInfo, one entry of query-block's dirty-bitmaps: {@code name} is null for the
 * anonymous successor a job creates; {@code count} is in bytes (dirty granules times granularity,
 * the last one cut at the disk's end), as QEMU reports it.
 */
public record BlockDirtyInfo(String name, long count, int granularity, boolean recording, boolean busy,
    boolean persistent, boolean inconsistent) {}
