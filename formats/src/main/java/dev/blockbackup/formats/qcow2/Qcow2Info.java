package dev.blockbackup.formats.qcow2;

/**
 * What the header of an open qcow2 image says, as {@code qemu-img info} shows it (its JSON names in
 * brackets).
 *
 * @param version 2 or 3 ([format-specific.data.compat] "0.10" or "1.1")
 * @param virtualSize [virtual-size]
 * @param clusterSize [cluster-size]
 * @param backingFile [backing-filename] as stored in the header, or null
 * @param backingFormat [backing-filename-format], or null
 * @param dirty the dirty bit, incompatible bit 0 ([dirty-flag])
 * @param corrupt the corrupt bit, incompatible bit 1 ([format-specific.data.corrupt], v3 only)
 * @param lazyRefcounts compatible bit 0 ([format-specific.data.lazy-refcounts])
 * @param refcountBits [format-specific.data.refcount-bits]
 * @param compressionType "zlib" or "zstd" ([format-specific.data.compression-type])
 * @param extendedL2 incompatible bit 4 ([format-specific.data.extended-l2])
 * @param hostClustersInUse host clusters whose refcount is non-zero (what the image occupies)
 * @param dataFile the external data file's name as stored in the header, or null
 *     ([format-specific.data.data-file])
 * @param dataFileRaw data_file_raw, autoclear bit 1 ([format-specific.data.data-file-raw], shown
 *     only with a data file)
 */
public record Qcow2Info(
    int version,
    long virtualSize,
    int clusterSize,
    String backingFile,
    String backingFormat,
    boolean dirty,
    boolean corrupt,
    boolean lazyRefcounts,
    int refcountBits,
    String compressionType,
    boolean extendedL2,
    long hostClustersInUse,
    String dataFile,
    boolean dataFileRaw) {}
