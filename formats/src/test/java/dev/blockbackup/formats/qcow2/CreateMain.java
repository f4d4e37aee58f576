package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.BlockIOException;
import java.nio.file.Path;

/**
 * {@code qemu-img create -f qcow2 FILE SIZE} through our create, as a process of its own, so that a
 * test can kill it at any system call (strace's fault injection) and judge what it left.
 */
public final class CreateMain {

  private CreateMain() {}

  public static void main(String[] args) {
    try {
      Qcow2Image.create(Path.of(args[0]), Qcow2CreateOptions.of(Long.parseLong(args[1]))).close();
    } catch (BlockIOException e) {
      System.err.println("create: " + e.getMessage());
      System.exit(1);
    }
  }
}
