package dev.blockbackup.cli;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.ImageFormat;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.formats.qcow2.Qcow2Info;
import java.nio.file.Files;
import java.nio.file.Path;

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
