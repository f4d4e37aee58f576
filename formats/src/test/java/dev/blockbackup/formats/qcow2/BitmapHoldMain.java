package dev.blockbackup.formats.qcow2;

import java.nio.ByteBuffer;
import java.nio.file.Path;

/**
 * Opens an image read-write (its bitmaps go in use), writes {@code length} bytes at {@code offset},
 * prints READY and waits for its stdin to close: a test kills it with SIGKILL meanwhile, as a crash.
 * With a fourth argument {@code close} it closes at once (its bitmaps are stored), for a test that
 * kills it at a system call instead.
 */
public final class BitmapHoldMain {

  private BitmapHoldMain() {}

  public static void main(String[] args) throws Exception {
    Qcow2Image img = Qcow2Image.open(Path.of(args[0]), false);
    img.write(Long.parseLong(args[1]), ByteBuffer.allocate(Integer.parseInt(args[2])));
    img.flush();
    if (args.length > 3 && args[3].equals("close")) {
      img.close();
      return;
    }
    System.out.println("READY");
    System.out.flush();
    while (System.in.read() >= 0) {
      // hold the image open until killed
    }
    img.close();
  }
}
