package dev.blockbackup.formats;

import dev.blockbackup.formats.qcow2.Qcow2Image;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;

/** The image formats we read and write, by the names qemu-img gives them. */
public enum ImageFormat {
  RAW("raw"),
  QCOW2("qcow2");

  private final String qemuName;

  ImageFormat(String qemuName) {
    this.qemuName = qemuName;
  }

  /** The name qemu-img uses: {@code raw}, {@code qcow2}. */
  public String qemuName() {
    return qemuName;
  }

  /**
   * The format called {@code name} exactly as qemu-img calls it (its names are case-sensitive:
   * "QCOW2" is no format); EINVAL for any other name.
   */
  public static ImageFormat parse(String name) throws BlockIOException {
    for (ImageFormat f : values()) {
      if (f.qemuName.equals(name)) {
        return f;
      }
    }
    throw new BlockIOException(BlockError.EINVAL, "unknown image format '" + name + "' (known: raw, qcow2)");
  }

  /** qcow2 when the file starts with the qcow2 magic, raw otherwise (qemu-img's probe, for our two formats). */
  public static ImageFormat probe(Path path) throws BlockIOException {
    try (InputStream in = Files.newInputStream(path)) {
      byte[] magic = in.readNBytes(4);
      return magic.length == 4 && (magic[0] & 0xff) == 'Q' && (magic[1] & 0xff) == 'F' && (magic[2] & 0xff) == 'I'
              && (magic[3] & 0xff) == 0xFB
          ? QCOW2
          : RAW;
    } catch (IOException e) {
      throw new BlockIOException(BlockError.EINVAL, "cannot open " + path + ": " + e.getMessage(), e);
    }
  }

  /** Opens {@code path} in this format. */
  public BlockDevice open(Path path, boolean readOnly) throws BlockIOException {
    return open(path, readOnly, CacheMode.WRITEBACK);
  }

  /** Opens {@code path} in this format with the given cache mode. */
  public BlockDevice open(Path path, boolean readOnly, CacheMode cacheMode) throws BlockIOException {
    return switch (this) {
      case RAW -> RawImage.open(path, readOnly, cacheMode);
      case QCOW2 -> Qcow2Image.open(path, readOnly, cacheMode);
    };
  }
}
