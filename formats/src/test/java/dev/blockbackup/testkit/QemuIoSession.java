package dev.blockbackup.testkit;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * An interactive {@code qemu-io} that keeps an image open (and locked, as QEMU locks it) until
 * closed: it reads its commands from a pipe we hold open. Opening returns once qemu-io shows its
 * first prompt, which it prints only after the image is open.
 */
public final class QemuIoSession implements AutoCloseable {

  private static final String PROMPT = "qemu-io> ";

  private final Process process;
  private final List<String> command;

  private QemuIoSession(Process process, List<String> command) {
    this.process = process;
    this.command = command;
  }

  /** {@code qemu-io ARGS IMAGE}, e.g. {@code open(img, "-f", "qcow2")} or with {@code "-r"} for read-only. */
  public static QemuIoSession open(Path image, String... args) throws IOException {
    List<String> cmd = new ArrayList<>(List.of("qemu-io"));
    cmd.addAll(List.of(args));
    cmd.add(image.toString());
    Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
    QemuIoSession s = new QemuIoSession(p, cmd);
    String seen = s.untilPrompt();
    if (!seen.endsWith(PROMPT)) {
      s.close();
      throw new AssertionError(cmd + " did not open the image: " + seen);
    }
    return s;
  }

  /** Reads what qemu-io prints until its prompt, or until it exits (then without the prompt). */
  private String untilPrompt() throws IOException {
    InputStream in = process.getInputStream();
    ByteArrayOutputStream seen = new ByteArrayOutputStream();
    int b;
    while ((b = in.read()) >= 0) {
      seen.write(b);
      if (seen.toString(StandardCharsets.UTF_8).endsWith(PROMPT)) {
        break;
      }
    }
    return seen.toString(StandardCharsets.UTF_8);
  }

  /** Runs one qemu-io command (e.g. {@code "read 0 512"}) and returns what it printed. */
  public String run(String qemuIoCommand) throws IOException {
    process.getOutputStream().write((qemuIoCommand + "\n").getBytes(StandardCharsets.UTF_8));
    process.getOutputStream().flush();
    return untilPrompt();
  }

  /** Ends qemu-io by closing its input, as "quit" would, and waits for it to release the image. */
  @Override
  public void close() throws IOException {
    process.getOutputStream().close();
    try {
      if (!process.waitFor(60, TimeUnit.SECONDS)) {
        process.destroyForcibly();
        throw new AssertionError(command + " did not exit after its input closed");
      }
    } catch (InterruptedException e) {
      process.destroyForcibly();
      Thread.currentThread().interrupt();
    }
  }
}
