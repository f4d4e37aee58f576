package dev.blockbackup.cli;

import java.math.BigDecimal;
import java.math.BigInteger;
import java.math.MathContext;

/**
 * Sizes as qemu-img reads and prints them: {@code 64M}, {@code 1.5G}, {@code 0x10000}, {@code +5M};
 * binary suffixes of either case (qemu_strtosz), and {@code "64 MiB"} on output (size_to_str).
 *
 * <p>The grammar is qemu_strtosz's: optional leading white space and a '+', then either a decimal
 * number with an optional fraction and an optional suffix b, k, M, G, T, P or E (a fraction needs a
 * suffix other than b, and is rounded to the nearest byte, so {@code 0.1k} is 102 bytes), or
 * {@code 0x} and hex digits, taken as bytes. Nothing may follow, not even white space. Refused as
 * qemu-img refuses them: a sign '-', exponents ({@code 1e3}), a fraction of a hex number, octal
 * prefixes are not special ({@code 010} is ten), and anything above 2^63 - 1 bytes. A suffix after a
 * hex number, which qemu-img 7.2 takes with a deprecation warning and 8.1 refuses, is refused.
 */
final class Sizes {

  private static final String[] PREFIXES = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
  private static final String SUFFIXES = "use bytes or a k, M, G, T, P or E suffix, e.g. 64M";
  private static final BigInteger MAX = BigInteger.valueOf(Long.MAX_VALUE);
  private static final BigInteger TWO_64 = BigInteger.ONE.shiftLeft(64);

  private Sizes() {}

  /**
   * Parses {@code text} as a byte count, 0 to {@link Long#MAX_VALUE}; {@code what} names it in the
   * error ("image size"), which quotes {@code text} as the user typed it.
   */
  static long parse(String what, String text) {
    int i = 0;
    int n = text.length();
    while (i < n && isSpace(text.charAt(i))) {
      i++;
    }
    if (i < n && text.charAt(i) == '+') {
      i++;
    } else if (i < n && text.charAt(i) == '-') {
      throw invalid(what, text, "a size cannot be negative");
    }
    int digits = i;
    while (i < n && isDigit(text.charAt(i))) {
      i++;
    }
    if (i == digits) {
      throw invalid(what, text, SUFFIXES);
    }
    BigInteger whole;
    BigInteger fraction = BigInteger.ZERO; // in units of 2^-64
    boolean hex = false;
    if (i - digits == 1 && text.charAt(digits) == '0' && i < n && (text.charAt(i) == 'x' || text.charAt(i) == 'X')) {
      int hexDigits = ++i;
      while (i < n && Character.digit(text.charAt(i), 16) >= 0) {
        i++;
      }
      if (i == hexDigits) {
        throw invalid(what, text, SUFFIXES);
      }
      if (i < n && text.charAt(i) == '.') {
        throw invalid(what, text, "a hex size cannot have a fraction");
      }
      whole = new BigInteger(text.substring(hexDigits, i), 16);
      hex = true;
    } else {
      whole = new BigInteger(text.substring(digits, i));
      if (i < n && text.charAt(i) == '.') {
        int point = i++;
        while (i < n && isDigit(text.charAt(i))) {
          i++;
        }
        if (i < n && (text.charAt(i) == 'e' || text.charAt(i) == 'E') && exponentFollows(text, i + 1)) {
          throw invalid(what, text, "exponents are not taken, " + SUFFIXES);
        }
        // qemu_strtosz reads the fraction as a C double and keeps it as 64-bit fixed point: the
        // same here, so that every size comes out as the very bytes qemu-img makes of it.
        if (i - point > 1) {
          fraction = new BigDecimal(Double.parseDouble("0" + text.substring(point, i)))
              .multiply(new BigDecimal(TWO_64)).toBigInteger().min(TWO_64.subtract(BigInteger.ONE));
        }
      }
    }
    int shift = -1;
    if (i < n) {
      shift = shiftOf(text.charAt(i));
      if (shift < 0) {
        throw invalid(what, text, SUFFIXES);
      }
      i++;
    }
    if (i != n) {
      throw invalid(what, text, SUFFIXES);
    }
    if (hex && shift >= 0) {
      throw invalid(what, text, "a suffix on a hex number is deprecated by qemu-img; give the bytes in hex, or a decimal number with the suffix");
    }
    if (fraction.signum() != 0 && shift <= 0) {
      throw invalid(what, text, "a fraction needs a k, M, G, T, P or E suffix");
    }
    BigInteger multiplier = BigInteger.ONE.shiftLeft(Math.max(shift, 0));
    // The fraction's bytes rounded to the nearest, a half up, as qemu_strtosz rounds them.
    BigInteger bytes = whole.multiply(multiplier)
        .add(fraction.multiply(multiplier).add(BigInteger.ONE.shiftLeft(63)).shiftRight(64));
    if (bytes.compareTo(MAX) > 0) {
      throw invalid(what, text, "larger than " + Long.MAX_VALUE + " bytes");
    }
    return bytes.longValueExact();
  }

  private static UserError invalid(String what, String text, String why) {
    return new UserError("invalid " + what + " '" + text + "': " + why);
  }

  /** The power of two a suffix stands for, or -1 if {@code c} is none. */
  private static int shiftOf(char c) {
    return switch (c) {
      case 'b', 'B' -> 0;
      case 'k', 'K' -> 10;
      case 'm', 'M' -> 20;
      case 'g', 'G' -> 30;
      case 't', 'T' -> 40;
      case 'p', 'P' -> 50;
      case 'e', 'E' -> 60;
      default -> -1;
    };
  }

  /** Whether an exponent (as strtod reads one: an optional sign, then a digit) starts at {@code i}. */
  private static boolean exponentFollows(String text, int i) {
    if (i < text.length() && (text.charAt(i) == '+' || text.charAt(i) == '-')) {
      i++;
    }
    return i < text.length() && isDigit(text.charAt(i));
  }

  private static boolean isDigit(char c) {
    return c >= '0' && c <= '9';
  }

  /** C's isspace in the C locale. */
  private static boolean isSpace(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == 0x0b;
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
