package dev.blockbackup.cli;

import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.ImageFormat;
import dev.blockbackup.formats.ImageLock;
import dev.blockbackup.formats.qcow2.Qcow2Bitmap;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.formats.qcow2.Qcow2Info;
import dev.blockbackup.formats.qcow2.Qcow2Snapshot;
import dev.blockbackup.formats.qcow2.Qcow2Snapshots;
import java.io.IOException;
import java.nio.file.AccessDeniedException;
import java.nio.file.FileSystemException;
import java.nio.file.Files;
import java.nio.file.InvalidPathException;
import java.nio.file.LinkOption;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

/**
 * Opening images named on the command line: checks the file first so a user gets "no such file"
 * rather than a driver's message, and turns every refusal into a one-line {@link UserError}.
 */
final class Images {

  private Images() {}

  /**
   * The format of an image to be written (create -f, convert -O, backup --target-format), by its
   * exact name: qemu-img's names are case-sensitive, and so is its refusal, "Unknown file format".
   */
  static ImageFormat format(String name) {
    ImageFormat f = byName(name);
    if (f == null) {
      throw new UserError("Unknown file format '" + name + "'" + KNOWN);
    }
    return f;
  }

  /**
   * The format of an image to be read (-f of info, convert, backup; create -F), by its exact name;
   * {@code path} is the image. qemu-img says "Could not open ...: Unknown driver" for these.
   */
  static ImageFormat driver(Path path, String name) {
    ImageFormat f = byName(name);
    if (f == null) {
      throw new UserError("Could not open '" + path + "': Unknown driver '" + name + "'" + KNOWN);
    }
    return f;
  }

  private static final String KNOWN = " (known: raw, qcow2)";

  private static ImageFormat byName(String name) {
    try {
      return ImageFormat.parse(name);
    } catch (BlockIOException e) {
      return null;
    }
  }

  /**
   * Checks that {@code path} is an existing regular, readable file; else says why not, with the
   * host's own reason where it is not a plain "no such file" ("File name too long", "Not a directory").
   */
  static void checkExists(Path path) {
    BasicFileAttributes a;
    try {
      a = Files.readAttributes(path, BasicFileAttributes.class);
    } catch (IOException e) {
      throw new UserError("cannot open '" + path + "': " + reason(e), e);
    }
    if (a.isDirectory()) {
      throw new UserError("cannot open '" + path + "': it is a directory");
    }
    if (!Files.isReadable(path)) {
      throw new UserError("cannot open '" + path + "': permission denied");
    }
  }

  /**
   * Checks, before anything is written, that an image can be made at {@code path}: its directory
   * exists and is one, and the host takes the name. An existing file there is not refused here.
   */
  static void checkCreatable(Path path) {
    Path dir = path.toAbsolutePath().getParent();
    if (dir != null) {
      BasicFileAttributes d;
      try {
        d = Files.readAttributes(dir, BasicFileAttributes.class);
      } catch (NoSuchFileException e) {
        throw new UserError("cannot create '" + path + "': no such directory '" + dir + "'", e);
      } catch (IOException e) {
        throw new UserError("cannot create '" + path + "': " + reason(e), e);
      }
      if (!d.isDirectory()) {
        throw new UserError("cannot create '" + path + "': '" + dir + "' is not a directory");
      }
    }
    try {
      if (Files.readAttributes(path, BasicFileAttributes.class).isDirectory()) {
        throw new UserError("cannot create '" + path + "': it is a directory");
      }
    } catch (NoSuchFileException absent) {
      // the usual case: the file is to be made
    } catch (IOException e) {
      // ENAMETOOLONG and the like: the host refuses the name itself
      throw new UserError("cannot create '" + path + "': " + reason(e), e);
    }
  }

  /**
   * Refuses a qcow2 {@code target} of {@code size} bytes that an L1 table of QEMU's largest size
   * cannot map with {@code clusterSize}-byte clusters, as qemu-img create refuses it.
   */
  static void checkQcow2Size(Path target, long size, int clusterSize) {
    long max = Qcow2CreateOptions.maxSize(clusterSize);
    if (size > max) {
      throw new UserError("cannot create '" + target + "': the source's " + size + " bytes are too large for qcow2"
          + " with cluster_size " + clusterSize + " (at most " + max + "; try a larger cluster_size)");
    }
  }

  /** Makes an image at a path; what {@link #creating} runs. */
  interface Creation {
    BlockDevice create() throws BlockIOException;
  }

  /**
   * Runs {@code creation}, which makes the image {@code target}; if it fails and there was no file
   * at {@code target} before, removes what it left (an empty file the host would not size, say),
   * so that a refused command leaves nothing behind.
   */
  static BlockDevice creating(Path target, Creation creation) throws BlockIOException {
    boolean existed = Files.exists(target, LinkOption.NOFOLLOW_LINKS);
    try {
      return creation.create();
    } catch (BlockIOException | RuntimeException e) {
      if (!existed) {
        try {
          Files.deleteIfExists(target);
        } catch (IOException cleanup) {
          e.addSuppressed(cleanup);
        }
      }
      throw e;
    }
  }

  /** The host's reason for a failed look-up: strerror's text, as qemu-img prints it. */
  static String reason(IOException e) {
    if (e instanceof NoSuchFileException) {
      return "no such file";
    }
    if (e instanceof AccessDeniedException) {
      return "permission denied";
    }
    if (e instanceof FileSystemException f && f.getReason() != null) {
      return f.getReason();
    }
    return String.valueOf(e.getMessage());
  }

  /** The format given with -f, or the probed one when none was given (as qemu-img probes). */
  static ImageFormat formatOf(Path path, String given) {
    if (given != null) {
      ImageFormat f = driver(path, given);
      checkExists(path);
      return f;
    }
    checkExists(path);
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
      if (format == ImageFormat.QCOW2) {
        backingChainFault(path, e);
      }
      throw new UserError("cannot open '" + path + "' as " + format.qemuName() + ": " + withoutPath(e.getMessage(), path), e);
    }
  }

  /**
   * After {@code image} failed to open: walks its backing chain by the headers alone and, if a
   * backing file cannot be looked up, says so with the host's reason (the driver sees only that
   * the file is not there, whether its name was too long or a directory on the way was a file).
   * Done only on failure, so that a good open reads each header once.
   */
  private static void backingChainFault(Path image, Exception failure) {
    Set<Path> seen = new HashSet<>();
    Path p = image;
    while (seen.add(p.toAbsolutePath().normalize())) {
      Qcow2Info info;
      try {
        info = Qcow2Image.inspect(p);
      } catch (BlockIOException e) {
        return; // this layer is the fault itself; the driver's message says how
      }
      if (info.backingFile() == null) {
        return;
      }
      Path backing = Path.of(backingPath(p, info.backingFile()));
      try {
        Files.readAttributes(backing, BasicFileAttributes.class);
      } catch (IOException e) {
        throw new UserError("cannot open '" + image + "' as qcow2: cannot open backing file '" + backing + "': "
            + reason(e), failure);
      }
      String fmt = info.backingFormat();
      try {
        if (fmt == null ? ImageFormat.probe(backing) != ImageFormat.QCOW2 : !fmt.equals("qcow2")) {
          return;
        }
      } catch (BlockIOException e) {
        return;
      }
      p = backing;
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

  /** The persistent bitmaps of a qcow2 image, as qemu-img info lists them; or a UserError saying why not. */
  static List<Qcow2Bitmap> bitmaps(Path path) {
    try {
      return Qcow2Image.inspectBitmaps(path);
    } catch (BlockIOException e) {
      throw new UserError("cannot open '" + path + "' as qcow2: " + withoutPath(e.getMessage(), path), e);
    }
  }

  /** The internal snapshots of a qcow2 image, as qemu-img info lists them; or a UserError saying why not. */
  static List<Qcow2Snapshot> snapshots(Path path) {
    try {
      return Qcow2Snapshots.read(path);
    } catch (BlockIOException e) {
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
