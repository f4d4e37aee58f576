package dev.blockbackup.formats;

/**
 * An image file is malformed or uses a feature we refuse: says what is wrong and where. At open
 * the image is refused; met during a request, the request fails with EIO and nothing is written.
 */
public final class ImageFormatException extends BlockIOException {

  public ImageFormatException(String message) {
    super(BlockError.EIO, message);
  }

  public ImageFormatException(String message, Throwable cause) {
    super(BlockError.EIO, message, cause);
  }
}
