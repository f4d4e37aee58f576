package dev.blockbackup.cli;

import dev.blockbackup.formats.RawImage;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.Callable;
import java.util.function.Supplier;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.ParseResult;
import picocli.CommandLine.ScopeType;
import picocli.CommandLine.Spec;

/**
 * The {@code blockbackup} command. Mistakes of the user's print one line, {@code blockbackup: ...},
 * and exit 1; picocli's own usage errors exit 2 with a usage hint; {@code --debug} adds the stack
 * trace to any failure.
 */
@Command(
    name = "blockbackup",
    mixinStandardHelpOptions = true,
    version = "blockbackup 0.1.0",
    description = "Block backup engine: create, inspect and convert raw and qcow2 images the way qemu-img does,"
        + " and back them up with QEMU's backup job.")
// The subcommands are added by commandLine(), not named here.
public final class Main implements Callable<Integer> {

  /** Exit status of a failed command, as qemu-img's. */
  static final int EXIT_FAILURE = 1;

  @Option(names = "--debug", scope = ScopeType.INHERIT, description = "Print the stack trace of a failure.")
  boolean debug;

  @Spec CommandSpec spec;

  /**
   * The subcommands by name, in the order the usage lists them. Picocli builds a command's model by
   * reflection over its annotations, which is a good part of a short run's start-up; so a command line
   * that names one of these gets only that one built (see {@link #commandLine}).
   */
  private static final Map<String, Supplier<Object>> SUBCOMMANDS = new LinkedHashMap<>();

  static {
    SUBCOMMANDS.put("create", CreateCommand::new);
    SUBCOMMANDS.put("info", InfoCommand::new);
    SUBCOMMANDS.put("convert", ConvertCommand::new);
    SUBCOMMANDS.put("backup", BackupCommand::new);
    SUBCOMMANDS.put("bitmap", BitmapCommand::new);
    SUBCOMMANDS.put("serve", ServeCommand::new);
    SUBCOMMANDS.put("help", CommandLine.HelpCommand::new);
  }

  public static void main(String[] args) {
    // JNA's start-up overlaps picocli's instead of coming after it, at the first raw image's open
    RawImage.preloadNativeAccess();
    PrintWriter out = new PrintWriter(System.out, true, StandardCharsets.UTF_8);
    PrintWriter err = new PrintWriter(System.err, true, StandardCharsets.UTF_8);
    int exit = run(out, err, args);
    out.flush();
    err.flush();
    System.exit(exit);
  }

  /** Runs one command line, printing to {@code out} and {@code err}; returns the exit status. */
  public static int run(PrintWriter out, PrintWriter err, String... args) {
    CommandLine cmd = commandLine(args);
    cmd.setOut(out);
    cmd.setErr(err);
    cmd.setExecutionExceptionHandler((e, line, parseResult) -> {
      err.println("blockbackup: " + oneLine(describe(e)));
      if (debugAsked(parseResult)) {
        e.printStackTrace(err);
      }
      err.flush();
      return EXIT_FAILURE;
    });
    try {
      return cmd.execute(args);
    } finally {
      out.flush();
      err.flush();
    }
  }

  /**
   * The top command with its subcommands: only the one named if the first argument that is not an
   * option names one (the main command's options take no values, so that argument is the subcommand),
   * else all of them, so that usage, "help" and picocli's suggestions for a mistyped name see them all.
   * "help" itself needs them all too.
   */
  static CommandLine commandLine(String... args) {
    CommandLine cmd = new CommandLine(new Main());
    String named = null;
    for (String a : args) {
      if (!a.startsWith("-")) {
        named = a;
        break;
      }
    }
    Supplier<Object> only = "help".equals(named) ? null : SUBCOMMANDS.get(named);
    if (only != null) {
      cmd.addSubcommand(only.get());
    } else {
      SUBCOMMANDS.values().forEach(s -> cmd.addSubcommand(s.get()));
    }
    return cmd;
  }

  @Override
  public Integer call() {
    // "blockbackup" alone: say what there is, as picocli does for a missing subcommand.
    throw new CommandLine.ParameterException(spec.commandLine(), "Missing required subcommand");
  }

  /** What to tell the user: the message of a mistake; the kind and message of anything else. */
  private static String describe(Throwable e) {
    if (e instanceof UserError) {
      return e.getMessage();
    }
    if (e instanceof java.io.IOException && e.getMessage() != null) {
      return e.getMessage();
    }
    // A bug of ours, not the user's: still one line, with --debug for the trace.
    return "internal error: " + e + " (run with --debug for the stack trace)";
  }

  private static String oneLine(String s) {
    return String.valueOf(s).strip().replaceAll("\\s*\\R\\s*", "; ");
  }

  private static boolean debugAsked(ParseResult r) {
    for (ParseResult p = r; p != null; p = p.subcommand()) {
      if (p.hasMatchedOption("--debug")) {
        return true;
      }
    }
    return false;
  }
}
