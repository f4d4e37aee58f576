package dev.blockbackup.cli;

import java.math.BigDecimal;
import java.math.MathContext;
import java.util.Locale;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Sizes as qemu-img reads and prints them: {@code 64M}, {@code 1.5G}, {@code 65536}; binary
 * suffixes of either case (qemu_strtosz), and {@code "64 MiB"} on output (size_to_str).
 */
final class Sizes {

  private static final Pattern SIZE = Pattern.compile("(\\d+(?:\\.\\d+)?)\\s*([bkmgtpe]?)", Pattern.CASE_INSENSITIVE);
  private static final String[] PREFIXES = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};

  private Sizes() {}

  /**
   * Parses {@code text} as a byte count; {@code what} names it in the error ("image size").
   * Fractions are allowed only where they come out as whole bytes, as in qemu-img.
   */
  static long parse(String what, String text) {
    Matcher m = SIZE.matcher(text.trim());
    if (!m.matches()) {
      throw new UserError("invalid " + what + " '" + text + "' (use bytes or a K, M, G, T, P or E suffix, e.g. 64M)");
    }
    int shift = switch (m.group(2).toLowerCase(Locale.ROOT)) {
      case "", "b" -> 0;
      case "k" -> 10;
      case "m" -> 20;
      case "g" -> 30;
      case "t" -> 40;
      case "p" -> 50;
      default -> 60; // "e"
    };
    BigDecimal bytes = new BigDecimal(m.group(1)).multiply(BigDecimal.valueOf(2).pow(shift));
    if (bytes.compareTo(BigDecimal.valueOf(Long.MAX_VALUE)) > 0) {
      throw new UserError("invalid " + what + " '" + text + "': larger than " + Long.MAX_VALUE + " bytes");
    }
    try {
      return bytes.longValueExact();
    } catch (ArithmeticException e) {
      throw new UserError("invalid " + what + " '" + text + "': not a whole number of bytes");
    }
  }

  /** qemu's size_to_str: three significant digits and a binary prefix, "64 MiB", "1.5 GiB", "196 KiB". */
  static String human(long bytes) {
    // As qemu does: switch to the next prefix once the figure would reach 1000, so "0.98 GiB", not "1000 MiB".
    int i = 0;
    double scaled = bytes;
    while (i < PREFIXES.length - 1 && scaled >= 1000) {
      scaled /= 1024;
      i++;
    }
    BigDecimal v = new BigDecimal(scaled).round(new MathContext(3)).stripTrailingZeros();
    return v.toPlainString() + " " + PREFIXES[i] + "B";
  }

  /** Rounds up to whole 512-byte sectors: QEMU counts image sizes in sectors. */
  static long roundUpToSector(long bytes) {
    return (bytes + 511) & ~511L;
  }
}
