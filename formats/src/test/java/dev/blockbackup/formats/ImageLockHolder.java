package dev.blockbackup.formats;

import java.nio.file.Path;

/**
 * A second JVM for {@link ImageLockTest}: opens an image as raw read-write, prints "held", and
 * keeps it open until its standard input ends. A refused open prints the error and exits 2.
 */
final class ImageLockHolder {

  private ImageLockHolder() {}

  public static void main(String[] args) throws Exception {
    RawImage image;
    try {
      image = RawImage.open(Path.of(args[0]), false);
    } catch (BlockIOException e) {
      System.out.println(e.error() + " " + e.getMessage());
      System.exit(2);
      return;
    }
    try (image) {
      System.out.println("held");
      System.out.flush();
      System.in.readAllBytes();
    }
  }
}
