package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.ImageLock;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.AccessDeniedException;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.FileSystemException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.concurrent.ThreadLocalRandom;

/**
 * Writes a new, empty v3 image the way {@code qemu-img create -f qcow2} lays it out: header in
 * cluster 0, the refcount table from cluster 1, its refcount blocks, then the L1 table. Refcounts
 * are 16 bits wide and lazy refcounts are off. Unlike QEMU, the refcount table is sized up front
 * for the fully allocated image (up to QEMU's 8 MiB limit), so it rarely has to grow.
 *
 * <p>With an external data file ({@link DataFileCreator}) the image holds metadata only; with
 * data_file_raw every guest cluster is mapped to itself in the data file at once (L2 tables after
 * the L1 table), as QEMU preallocates the metadata, so that the raw file's content is the disk's.
 */
final class ImageCreator {

  /** How the temporary file of an unfinished create ends; safe to delete when no create runs. */
  static final String TEMP_SUFFIX = ".blockbackup-create";

  private ImageCreator() {}

  /**
   * Writes the empty image at {@code path}, synced: a new file appears whole or not at all, an
   * existing one is overwritten in place. On failure what was written is removed (a new file) or
   * left truncated (an existing one).
   */
  static void write(Path path, Qcow2CreateOptions options, CacheMode cacheMode) throws BlockIOException {
    int cs = options.clusterSize();
    int cb = Integer.numberOfTrailingZeros(cs);
    long size = options.size();
    long l2e = cs / 8;
    long l1Size = Qcow2Header.ceilDiv(size, (long) cs * l2e);
    if (l1Size * 8 > Qcow2Header.MAX_L1_BYTES) {
      throw new BlockIOException(BlockError.EINVAL, "image size " + size + " needs an L1 table of " + l1Size * 8
          + " bytes with " + cs + "-byte clusters, above QEMU's limit of 32 MiB");
    }
    // an empty image has no L1 cluster to count (QEMU's layout: the offset points past the file)
    long l1Clusters = Qcow2Header.ceilDiv(l1Size * 8, cs);
    long perBlock = (long) cs * 8 / 16;
    // Size the refcount table for the fully allocated image, so it never has to grow.
    long rtc = 1;
    long rbc = 1;
    for (int i = 0; i < 8; i++) {
      long total = 1 + rtc + rbc + l1Clusters + l1Size + Qcow2Header.ceilDiv(size, cs) + 64;
      rbc = Qcow2Header.ceilDiv(total, perBlock);
      rtc = Math.max(1, Qcow2Header.ceilDiv(rbc * 8, cs));
    }
    rtc = Math.min(rtc, Qcow2Header.MAX_REFTABLE_BYTES / cs);
    // data_file_raw: one L2 table per L1 entry, mapping every cluster to itself
    long l2Tables = options.dataFileRaw() ? l1Size : 0;
    long nrb = 1;
    while (nrb * perBlock < 1 + rtc + nrb + l1Clusters + l2Tables) {
      nrb++;
    }
    long reftableOff = (long) cs;
    long refblocksOff = (1 + rtc) * cs;
    long l1Off = l1Size == 0 ? 0 : (1 + rtc + nrb) * cs;
    long l2Off = l1Off + l1Clusters * cs;
    long used = 1 + rtc + nrb + l1Clusters + l2Tables;
    ByteBuffer c0;
    try {
      c0 = Qcow2Header.newCluster0(cb, size, l1Size, l1Off, reftableOff, rtc, options.backingFile(),
          options.backingFormat(), options.dataFile(), options.dataFileRaw());
    } catch (IllegalArgumentException e) {
      throw new BlockIOException(BlockError.EINVAL, path + ": " + e.getMessage(), e);
    }
    ByteBuffer rt = ByteBuffer.allocate((int) (rtc * cs));
    for (int i = 0; i < nrb; i++) {
      rt.putLong(i * 8, refblocksOff + (long) i * cs);
    }
    ByteBuffer rbs = ByteBuffer.allocate((int) (nrb * cs));
    for (int i = 0; i < used; i++) {
      rbs.putShort(i * 2, (short) 1);
    }
    ByteBuffer l1 = l1Clusters > 0 ? ByteBuffer.allocate((int) (l1Clusters * cs)) : null;
    for (int i = 0; i < l2Tables; i++) {
      l1.putLong(i * 8, (l2Off + (long) i * cs) | Qcow2Image.COPIED);
    }
    Layout layout = new Layout(c0, reftableOff, rt, refblocksOff, rbs, l1Off, l1,
        new IdentityL2(l2Off, l2Tables, cb, Qcow2Header.ceilDiv(size, cs)));
    boolean syncs = cacheMode != CacheMode.UNSAFE;
    try (DataFileCreator data = DataFileCreator.prepare(path, options, syncs)) {
      if (Files.exists(path, LinkOption.NOFOLLOW_LINKS)) {
        overwrite(path, layout, syncs);
      } else {
        createNew(path, layout, syncs);
      }
      data.keep();
    }
  }

  /**
   * The L2 tables of a data_file_raw image: {@code tables} tables from {@code offset}, mapping each
   * of the image's {@code clusters} guest clusters to the same offset in the data file (COPIED, no
   * refcount: the data file's clusters have none). Written a table at a time, since a large disk
   * has many.
   */
  private record IdentityL2(long offset, long tables, int clusterBits, long clusters) {

    void writeTo(FileChannel ch) throws IOException {
      int cs = 1 << clusterBits;
      int perTable = cs / 8;
      ByteBuffer t = ByteBuffer.allocate(cs);
      for (long i = 0; i < tables; i++) {
        t.clear();
        for (int k = 0; k < perTable; k++) {
          long g = i * perTable + k;
          t.putLong(k * 8, g < clusters ? (g << clusterBits) | Qcow2Image.COPIED : 0);
        }
        writeFully(ch, t, offset + i * cs);
      }
    }
  }

  /** What an empty image holds, cluster 0 (the header) apart from the rest. */
  private record Layout(ByteBuffer header, long reftableOff, ByteBuffer reftable, long refblocksOff,
      ByteBuffer refblocks, long l1Off, ByteBuffer l1, IdentityL2 l2) {

    /** Everything but the header, then the header, so that a file with a header is whole. */
    void writeTo(FileChannel ch, boolean syncs) throws IOException {
      writeFully(ch, reftable.duplicate(), reftableOff);
      writeFully(ch, refblocks.duplicate(), refblocksOff);
      if (l1 != null) {
        writeFully(ch, l1.duplicate(), l1Off);
      }
      l2.writeTo(ch);
      if (syncs) {
        ch.force(false);
      }
      writeFully(ch, header.duplicate(), 0);
      if (syncs) {
        ch.force(false);
      }
    }
  }

  /**
   * A new target is built whole in a temporary file beside it and published with a hard link,
   * which fails if the target has appeared meanwhile, so nothing is ever replaced, and which is
   * atomic: after a crash the target is either absent or a complete, synced image. Order: write
   * and sync the file, link, sync the directory, unlink the temporary name, sync the directory.
   * We prefer this to writing the target in place with its header last: until the header lands
   * such a file reads as a raw image of zeros, which a user (or format probing) could take for
   * their disk. A SIGKILL can leave the temporary file behind: its name starts with a dot and ends
   * in {@value #TEMP_SUFFIX}, and a rerun picks another name, so it never gets in the way.
   */
  private static void createNew(Path path, Layout layout, boolean syncs) throws BlockIOException {
    Path abs = path.toAbsolutePath();
    Path dir = abs.getParent();
    Path tmp = null;
    boolean published = false;
    try {
      tmp = createTemp(dir, abs.getFileName().toString());
      try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.WRITE)) {
        layout.writeTo(ch, syncs);
      }
      boolean linked = publish(tmp, abs);
      published = true;
      syncDirectory(dir, syncs);
      if (linked) {
        Files.delete(tmp);
        syncDirectory(dir, syncs);
      }
      tmp = null;
    } catch (FileAlreadyExistsException e) {
      throw new BlockIOException(BlockError.EINVAL, "cannot create " + path + ": it appeared while the image was"
          + " being written; it is left as it is");
    } catch (FileSystemException e) {
      // name the target the user gave, not our temporary name
      throw BlockIOException.fromHost("cannot create " + path, new IOException(reason(e), e));
    } catch (IOException e) {
      throw BlockIOException.fromHost("cannot create " + path, e);
    } finally {
      if (tmp != null) {
        // a create that fails leaves nothing: the temporary file, and the target if we made it
        deleteQuietly(tmp);
        if (published) {
          deleteQuietly(abs);
        }
      }
    }
  }

  private static void deleteQuietly(Path p) {
    try {
      Files.deleteIfExists(p);
    } catch (IOException ignored) {
      // the failure that brought us here is what the caller must see
    }
  }

  private static String reason(FileSystemException e) {
    if (e instanceof NoSuchFileException) {
      return "No such file or directory";
    }
    if (e instanceof AccessDeniedException) {
      return "Permission denied";
    }
    return e.getReason() != null ? e.getReason() : String.valueOf(e.getMessage());
  }

  /** A temporary file in {@code dir}, created exclusively, named after the target. */
  private static Path createTemp(Path dir, String name) throws IOException {
    // keep the name short enough for NAME_MAX (255 bytes) whatever the target's name
    String stem = name.length() > 64 ? name.substring(0, 64) : name;
    for (int attempt = 0; ; attempt++) {
      String random = Long.toHexString(ThreadLocalRandom.current().nextLong() >>> 16);
      Path tmp = dir.resolve("." + stem + "." + random + TEMP_SUFFIX);
      try {
        Files.newByteChannel(tmp, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE).close();
        return tmp;
      } catch (FileAlreadyExistsException e) {
        if (attempt == 16) {
          throw new IOException("no free temporary name like " + tmp, e);
        }
      }
    }
  }

  /** Gives the finished image its name; true when the temporary name is still to be removed. */
  private static boolean publish(Path tmp, Path target) throws IOException {
    try {
      Files.createLink(target, tmp);
      return true;
    } catch (UnsupportedOperationException | FileSystemException e) {
      if (e instanceof FileSystemException fse && !noHardLinks(fse)) {
        throw fse;
      }
      // A file system without hard links (vfat, some FUSE mounts): a move without
      // REPLACE_EXISTING refuses an existing target, though not atomically with the rename.
      Files.move(tmp, target);
      return false;
    }
  }

  /** link(2) fails with EPERM or EOPNOTSUPP where the file system has no hard links. */
  private static boolean noHardLinks(FileSystemException e) {
    String reason = String.valueOf(e.getReason());
    return !(e instanceof FileAlreadyExistsException)
        && (reason.equals("Operation not permitted") || reason.equals("Operation not supported"));
  }

  private static void syncDirectory(Path dir, boolean syncs) throws IOException {
    if (!syncs) {
      return;
    }
    try (FileChannel d = FileChannel.open(dir, StandardOpenOption.READ)) {
      d.force(true);
    }
  }

  /**
   * An existing target is overwritten in place, as qemu-img create does (the user named it, and
   * its inode, permissions and links stay). Truncated first and the header written last, a crash
   * leaves it empty, headerless, or whole, never a qcow2 header over missing tables.
   */
  private static void overwrite(Path path, Layout layout, boolean syncs) throws BlockIOException {
    // the image locks first: an image another process (QEMU included) holds is never truncated
    try (RandomAccessFile f = ImageLock.openFile(path, false); FileChannel ch = f.getChannel()) {
      ch.truncate(0);
      if (syncs) {
        ch.force(false);
      }
      try {
        layout.writeTo(ch, syncs);
      } catch (IOException e) {
        try {
          ch.truncate(0); // no headerless remains of a failed create
        } catch (IOException suppressed) {
          e.addSuppressed(suppressed);
        }
        throw e;
      }
    } catch (IOException e) {
      throw BlockIOException.fromHost("cannot create " + path, e);
    }
  }

  private static void writeFully(FileChannel ch, ByteBuffer b, long pos) throws IOException {
    long p = pos;
    while (b.hasRemaining()) {
      p += ch.write(b, p);
    }
  }
}
