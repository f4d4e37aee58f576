package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * {@code blockbackup serve ARGS} as its own process, as a user runs it: the URIs it prints first,
 * then SIGTERM to stop it. Closing it kills what is left.
 */
final class ServeProcess implements AutoCloseable {

  private final Process process;
  private final BufferedReader out;

  private ServeProcess(Process process) {
    this.process = process;
    this.out = new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8));
  }

  /** Starts serve with {@code args} (stderr joins stdout, so a failure shows in the lines). */
  static ServeProcess start(Object... args) throws IOException {
    List<String> cmd = new ArrayList<>(List.of(ProcessHandle.current().info().command().orElse("java"), "-cp",
        System.getProperty("java.class.path"), Main.class.getName(), "serve"));
    for (Object a : args) {
      cmd.add(String.valueOf(a));
    }
    return new ServeProcess(new ProcessBuilder(cmd).redirectErrorStream(true).start());
  }

  /** The next line serve printed (a URI, once it serves), or null at its end. */
  String line() throws IOException {
    return out.readLine();
  }

  /** Sends SIGTERM and returns the exit code; serve must end within a minute. */
  int stop() throws InterruptedException {
    process.destroy();
    assertThat(process.waitFor(60, TimeUnit.SECONDS)).as("serve ends after SIGTERM").isTrue();
    return process.exitValue();
  }

  @Override
  public void close() throws IOException {
    process.destroyForcibly();
    out.close();
  }
}
