package dev.blockbackup.cli;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.ImageFormat;
import dev.blockbackup.formats.ImageLock;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.formats.qcow2.Qcow2Info;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.InvalidPathException;
import java.nio.file.Path;
import java.util.HashSet;
import java.util.Set;

/**
 * Opening images named on the command line: checks the file first so a user gets "no such file"
 * rather than a driver's message, and turns every refusal into a one-line {@link UserError}.
 */
final class Images {

  private Images() {}

  /** The format called {@code name} (-f, -O, -F), or a UserError naming the bad value. */
  static ImageFormat format(String name) {
    try {
      return ImageFormat.parse(name);
    } catch (BlockIOException e) {
      throw new UserError("unknown format '" + name + "' (known: raw, qcow2)");
    }
  }

  /** Checks that {@code path} is an existing regular, readable file. */
  static void checkExists(Path path) {
    if (!Files.exists(path)) {
      throw new UserError("cannot open '" + path + "': no such file");
    }
    if (Files.isDirectory(path)) {
      throw new UserError("cannot open '" + path + "': it is a directory");
    }
    if (!Files.isReadable(path)) {
      throw new UserError("cannot open '" + path + "': permission denied");
    }
  }

  /** The format given with -f, or the probed one when none was given (as qemu-img probes). */
  static ImageFormat formatOf(Path path, String given) {
    checkExists(path);
    if (given != null) {
      return format(given);
    }
    try {
      return ImageFormat.probe(path);
    } catch (BlockIOException e) {
      throw new UserError("cannot open '" + path + "': " + e.getMessage(), e);
    }
  }

  /** Opens {@code path} in {@code format}, or a UserError saying why not. */
  static BlockDevice open(Path path, ImageFormat format, boolean readOnly) {
    return open(path, format, readOnly, CacheMode.WRITEBACK);
  }

  /** As {@link #open(Path, ImageFormat, boolean)}, with the given cache mode. */
  static BlockDevice open(Path path, ImageFormat format, boolean readOnly, CacheMode cacheMode) {
    checkExists(path);
    try {
      return format.open(path, readOnly, cacheMode);
    } catch (BlockIOException | IllegalArgumentException e) {
      throw new UserError("cannot open '" + path + "' as " + format.qemuName() + ": " + withoutPath(e.getMessage(), path), e);
    }
  }

  /**
   * As {@link #open(Path, ImageFormat, boolean, CacheMode)}; with {@code forceShare} (-U), read-only
   * with QEMU's force-share=on for the image and its backing chain, so that it opens while QEMU writes it.
   */
  static BlockDevice open(Path path, ImageFormat format, boolean readOnly, CacheMode cacheMode, boolean forceShare) {
    if (!forceShare) {
      return open(path, format, readOnly, cacheMode);
    }
    try {
      return ImageLock.forceShare(() -> open(path, format, readOnly, cacheMode));
    } catch (BlockIOException e) {
      throw new UserError("cannot open '" + path + "': " + e.getMessage(), e);
    }
  }

  /**
   * Refuses a {@code target} that is {@code source} or any file of its backing chain, before
   * anything is opened for writing: writing it would destroy what is being read. Files are
   * compared by identity (device and inode), so a symlink or a hard link is no way round it. The
   * chain is followed through the qcow2 headers only, read with force-share as qemu-img info -U
   * would; a chain that cannot be followed is left to the open that comes next to report.
   */
  static void checkTargetOutsideChain(Path source, ImageFormat format, Path target) {
    if (!Files.exists(target)) {
      return;
    }
    Path image = source;
    ImageFormat fmt = format;
    Set<Path> seen = new HashSet<>();
    while (image != null && Files.exists(image) && seen.add(realPath(image))) {
      if (sameFile(image, target)) {
        throw new UserError(image == source
            ? "source and target are the same file '" + target + "'"
            : "target '" + target + "' is '" + image + "' of the backing chain of source '" + source
                + "': writing it would destroy the source");
      }
      image = fmt == ImageFormat.QCOW2 ? backingOf(image) : null;
      fmt = image == null ? null : probedOrRaw(image);
    }
  }

  /** The backing file named in a qcow2 header, resolved as QEMU resolves it, or null. */
  private static Path backingOf(Path qcow2) {
    try {
      Qcow2Info info = ImageLock.forceShare(() -> Qcow2Image.inspect(qcow2));
      return info.backingFile() == null ? null : Path.of(backingPath(qcow2, info.backingFile()));
    } catch (BlockIOException | InvalidPathException e) {
      return null;
    }
  }

  private static ImageFormat probedOrRaw(Path image) {
    try {
      return ImageFormat.probe(image);
    } catch (BlockIOException e) {
      return ImageFormat.RAW;
    }
  }

  private static Path realPath(Path p) {
    try {
      return p.toRealPath();
    } catch (IOException e) {
      return p.toAbsolutePath().normalize();
    }
  }

  private static boolean sameFile(Path a, Path b) {
    try {
      return Files.isSameFile(a, b);
    } catch (IOException e) {
      return false;
    }
  }

  /**
   * The header of a qcow2 image, read without its backing chain (which may be missing), as
   * qemu-img info reads it; or a UserError saying why not.
   */
  static Qcow2Info inspectQcow2(Path path) {
    checkExists(path);
    try {
      return Qcow2Image.inspect(path);
    } catch (BlockIOException | IllegalArgumentException e) {
      throw new UserError("cannot open '" + path + "' as qcow2: " + withoutPath(e.getMessage(), path), e);
    }
  }

  /** The driver's message without its leading "path: ", which our own prefix already says. */
  private static String withoutPath(String message, Path path) {
    String m = String.valueOf(message);
    for (String p : new String[] {path + ": ", path.toAbsolutePath() + ": "}) {
      if (m.startsWith(p)) {
        return m.substring(p.length());
      }
    }
    return m;
  }

  /**
   * Where a backing file named {@code backing} in the header of {@code image} lives: relative
   * names are relative to the image's directory (QEMU's path_combine), not to the working directory.
   * The result is not normalised, so it prints as qemu-img's full-backing-filename does.
   */
  static String backingPath(Path image, String backing) {
    if (backing.startsWith("/")) {
      return backing;
    }
    Path dir = image.getParent();
    return dir == null ? backing : dir + "/" + backing;
  }
}
