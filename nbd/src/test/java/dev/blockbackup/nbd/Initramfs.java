package dev.blockbackup.nbd;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * A minimal initramfs in the kernel's "newc" cpio format, built in memory so a test needs no cpio
 * tool: directories, regular files and their modes, then the trailer. The kernel accepts it
 * uncompressed.
 */
final class Initramfs {

  private final ByteArrayOutputStream out = new ByteArrayOutputStream();
  private int ino = 1;

  Initramfs dir(String name) {
    entry(name, 0040755, new byte[0]);
    return this;
  }

  Initramfs file(String name, int mode, byte[] data) {
    entry(name, 0100000 | mode, data);
    return this;
  }

  Initramfs file(String name, int mode, Path from) throws IOException {
    return file(name, mode, Files.readAllBytes(from));
  }

  void writeTo(Path path) throws IOException {
    entry("TRAILER!!!", 0, new byte[0]);
    Files.write(path, out.toByteArray());
  }

  private void entry(String name, int mode, byte[] data) {
    byte[] n = (name + "\0").getBytes(StandardCharsets.US_ASCII);
    // magic, then 13 eight-digit hex fields: ino, mode, uid, gid, nlink, mtime, filesize,
    // devmajor, devminor, rdevmajor, rdevminor, namesize, check
    StringBuilder h = new StringBuilder("070701");
    long[] fields = {ino++, mode, 0, 0, (mode & 0040000) != 0 ? 2 : 1, 0, data.length, 0, 0, 0, 0, n.length, 0};
    for (long f : fields) {
      h.append(String.format("%08x", f));
    }
    out.writeBytes(h.toString().getBytes(StandardCharsets.US_ASCII));
    out.writeBytes(n);
    pad();
    out.writeBytes(data);
    pad();
  }

  /** Header plus name, and the data, each end on a 4-byte boundary. */
  private void pad() {
    while (out.size() % 4 != 0) {
      out.write(0);
    }
  }
}
