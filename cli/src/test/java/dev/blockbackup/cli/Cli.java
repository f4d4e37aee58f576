package dev.blockbackup.cli;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;

/** Runs {@code blockbackup} in-process through {@link Main#run}, capturing what it prints. */
final class Cli {

  /** One command's exit status and output. */
  record Run(List<String> args, int exit, String out, String err) {
    @Override
    public String toString() {
      return "blockbackup " + String.join(" ", args) + " -> exit " + exit + "\nstdout: " + out + "\nstderr: " + err;
    }

    /** Fails with everything printed unless the command succeeded. */
    Run ok() {
      if (exit != 0) {
        throw new AssertionError("expected success: " + this);
      }
      return this;
    }
  }

  private Cli() {}

  static Run run(Object... args) {
    String[] a = Arrays.stream(args).map(o -> o instanceof Path p ? p.toString() : String.valueOf(o)).toArray(String[]::new);
    StringWriter out = new StringWriter();
    StringWriter err = new StringWriter();
    int exit = Main.run(new PrintWriter(out, true), new PrintWriter(err, true), a);
    return new Run(List.of(a), exit, out.toString(), err.toString());
  }
}
