package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.BlockError;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.ImageLock;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;

/**
 * The external data file of an image being created: opened and locked like an image file for as
 * long as the create runs, created empty when missing, and extended (sparsely) to the virtual size
 * when shorter. Its bytes are never written: unlike qemu-img create, which truncates the data file
 * to zero first, we create the metadata over an existing raw disk so that it keeps its content (with
 * data_file_raw the disk reads exactly as the raw file). A data file we created is removed again
 * when the create fails.
 */
final class DataFileCreator implements AutoCloseable {

  /** The locked data file, or null when the image has none. */
  private final RandomAccessFile file;
  private final Path path;
  /** Whether we created the file, so a failed create removes it. */
  private final boolean created;
  private boolean kept;

  private DataFileCreator(RandomAccessFile file, Path path, boolean created) {
    this.file = file;
    this.path = path;
    this.created = created;
  }

  /** Prepares the data file of {@code options} for the image at {@code image} (nothing without one). */
  static DataFileCreator prepare(Path image, Qcow2CreateOptions options, boolean syncs) throws BlockIOException {
    String name = options.dataFile();
    if (name == null) {
      return new DataFileCreator(null, null, false);
    }
    Path p = resolve(image, name);
    if (Files.isDirectory(p)) {
      throw new BlockIOException(BlockError.EINVAL, "Could not create '" + name + "': Is a directory");
    }
    Path dir = p.toAbsolutePath().getParent();
    if (dir != null && !Files.isDirectory(dir)) {
      throw new BlockIOException(BlockError.EINVAL, "Could not create '" + name + "': No such file or directory");
    }
    try {
      if (Files.exists(image) && Files.exists(p) && Files.isSameFile(image, p)) {
        throw new BlockIOException(BlockError.EINVAL, image + ": the data file " + name + " is the image itself");
      }
    } catch (IOException e) {
      throw BlockIOException.fromHost("Could not create '" + name + "'", e);
    }
    boolean created = !Files.exists(p);
    RandomAccessFile f = null;
    try {
      f = ImageLock.openFile(p, false);
      if (f.length() < options.size()) {
        f.setLength(options.size()); // a hole: nothing is written
      }
      if (syncs) {
        f.getChannel().force(true);
      }
      return new DataFileCreator(f, p, created);
    } catch (IOException | RuntimeException e) {
      if (f != null) {
        try {
          f.close();
        } catch (IOException suppressed) {
          e.addSuppressed(suppressed);
        }
      }
      if (created) {
        try {
          Files.deleteIfExists(p);
        } catch (IOException suppressed) {
          e.addSuppressed(suppressed);
        }
      }
      if (e instanceof BlockIOException b) {
        throw new BlockIOException(b.error(), "Could not open '" + name + "': " + b.getMessage(), b);
      }
      if (e instanceof IOException io) {
        throw BlockIOException.fromHost("Could not create '" + name + "'", io);
      }
      throw (RuntimeException) e;
    }
  }

  /** The data file's path: a relative name against the image's directory, as the opener resolves it. */
  static Path resolve(Path image, String name) throws BlockIOException {
    Path p;
    try {
      p = Paths.get(name);
    } catch (RuntimeException e) {
      throw new BlockIOException(BlockError.EINVAL, "data file name '" + name + "' is not a valid path");
    }
    if (!p.isAbsolute()) {
      Path dir = image.toAbsolutePath().getParent();
      p = dir == null ? p : dir.resolve(p);
    }
    return p;
  }

  /** The image was written: the data file stays, whatever happens next. */
  void keep() {
    kept = true;
  }

  @Override
  public void close() throws BlockIOException {
    if (file == null) {
      return;
    }
    try {
      file.close();
    } catch (IOException e) {
      if (kept) {
        throw BlockIOException.fromHost("cannot close " + path, e);
      }
    } finally {
      if (!kept && created) {
        try {
          Files.deleteIfExists(path);
        } catch (IOException ignored) {
          // the failure of the create is what the caller sees
        }
      }
    }
  }
}
