package dev.blockbackup.cli;

import dev.blockbackup.formats.ImageFormat;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The {@code -o key=value[,key=value...]} options of create and convert, checked against the keys
 * the target format takes, as qemu-img does ("Invalid parameter 'foo'"). {@code -o} may be given
 * several times; later values win.
 */
final class FormatOptions {

  /** qcow2 creation options we implement, with qemu-img's names. */
  static final List<String> QCOW2_CREATE = List.of("size", "backing_file", "backing_fmt", "cluster_size",
      "data_file", "data_file_raw");
  /** convert makes a fresh image from a source; only the layout is the user's to choose. */
  static final List<String> QCOW2_CONVERT = List.of("cluster_size");

  private final Map<String, String> values;

  private FormatOptions(Map<String, String> values) {
    this.values = values;
  }

  /** Parses the {@code -o} arguments for {@code format}, which accepts the keys {@code known}. */
  static FormatOptions parse(ImageFormat format, List<String> args, List<String> known) {
    Map<String, String> values = new LinkedHashMap<>();
    for (String arg : args == null ? List.<String>of() : args) {
      for (String item : arg.split(",", -1)) {
        if (item.isEmpty()) {
          continue;
        }
        int eq = item.indexOf('=');
        if (eq <= 0 || eq == item.length() - 1) {
          throw new UserError("invalid option '" + item + "' in -o (expected key=value)");
        }
        String key = item.substring(0, eq);
        if (!known.contains(key)) {
          throw new UserError("invalid option '" + key + "' for format " + format.qemuName()
              + (known.isEmpty() ? " (it takes no -o options)" : " (known: " + String.join(", ", known) + ")"));
        }
        values.put(key, item.substring(eq + 1));
      }
    }
    return new FormatOptions(values);
  }

  /** Whether the user asked for {@code -o help}, which lists the options instead of acting. */
  static boolean isHelp(List<String> args) {
    return args != null && args.stream().anyMatch(a -> a.equals("help") || a.equals("?"));
  }

  /** The text of {@code -o help} for {@code format}. */
  static String help(ImageFormat format, List<String> known) {
    List<String> lines = new ArrayList<>();
    lines.add("Supported options for " + format.qemuName() + ":");
    for (String k : known) {
      lines.add("  " + k + "=" + switch (k) {
        case "size" -> "<size>       virtual disk size";
        case "backing_file" -> "<file>  file name of a base image";
        case "backing_fmt" -> "<fmt>    format of the base image (raw, qcow2)";
        case "cluster_size" -> "<size> qcow2 cluster size, 512 to 2M, power of two (default 64k)";
        case "data_file" -> "<file>     file name of an external data file (kept, never overwritten)";
        case "data_file_raw" -> "<on|off> the external data file is a raw image of the disk (default off)";
        default -> "";
      });
    }
    if (known.isEmpty()) {
      lines.add("  (none)");
    }
    return String.join(System.lineSeparator(), lines);
  }

  String get(String key) {
    return values.get(key);
  }

  /** A boolean option as QEMU's option parser reads it (on/off, yes/no, true/false); false when absent. */
  boolean flag(String key) {
    String v = values.get(key);
    if (v == null) {
      return false;
    }
    return switch (v) {
      case "on", "yes", "true" -> true;
      case "off", "no", "false" -> false;
      default -> throw new UserError("Parameter '" + key + "' expects 'on' or 'off'");
    };
  }

  /** The cluster size asked for, or the qcow2 default. */
  int clusterSize(int defaultSize) {
    String v = values.get("cluster_size");
    if (v == null) {
      return defaultSize;
    }
    long c = Sizes.parse("cluster_size", v);
    if (c < 512 || c > 2 * 1024 * 1024 || Long.bitCount(c) != 1) {
      throw new UserError("invalid cluster_size '" + v + "': must be a power of two from 512 to 2M");
    }
    return (int) c;
  }
}
