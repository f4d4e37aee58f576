package dev.blockbackup.cli;

import java.util.Locale;

/**
 * What {@code backup} prints about a running job, kept apart from the job so the text can be tested
 * with fixed numbers. On a terminal it redraws one line ({@code \r}) with a bar, the percentage,
 * bytes done and total, the rate and the time left; elsewhere (a log, a pipe) it prints a plain line
 * each time another tenth of the work is done, so a log gets at most eleven lines, not one per chunk.
 */
final class BackupProgress {

  /** How progress is shown. */
  enum Mode {
    /** One line redrawn in place: for a person watching a terminal. */
    TERMINAL,
    /** A line per tenth of the work: for logs and pipes. */
    PLAIN,
    /** Nothing but the summary ({@code -q}). */
    QUIET
  }

  /** Characters between the brackets of the bar. */
  static final int BAR_WIDTH = 30;

  private final Mode mode;
  private final String jobId;
  /** PLAIN: the last tenth printed, -1 before the first line. */
  private int lastTenth = -1;
  /** TERMINAL: the length of the line drawn last, so a shorter one can blank its tail. */
  private int lastLength;

  BackupProgress(Mode mode, String jobId) {
    this.mode = mode;
    this.jobId = jobId;
  }

  /**
   * The text to print now for {@code done} of {@code total} bytes after {@code elapsedNanos}: a
   * redrawn line (TERMINAL), a plain line when a new tenth is reached (PLAIN), or "".
   */
  String update(long done, long total, long elapsedNanos) {
    switch (mode) {
      case TERMINAL -> {
        String line = bar(done, total, elapsedNanos);
        String pad = " ".repeat(Math.max(0, lastLength - line.length()));
        lastLength = line.length();
        return "\r" + line + pad;
      }
      case PLAIN -> {
        int tenth = (int) (fraction(done, total) * 10);
        if (tenth == lastTenth) {
          return "";
        }
        lastTenth = tenth;
        return plain(done, total, elapsedNanos) + System.lineSeparator();
      }
      default -> {
        return "";
      }
    }
  }

  /**
   * What ends the progress display once the job has stopped: the last redraw and its newline on a
   * terminal (so the summary or an error starts a line of its own), the 100% line if it is missing
   * in plain mode, else "".
   */
  String finish(long done, long total, long elapsedNanos) {
    return switch (mode) {
      case TERMINAL -> update(done, total, elapsedNanos) + System.lineSeparator();
      case PLAIN -> done >= total && lastTenth < 10 ? update(done, total, elapsedNanos) : "";
      case QUIET -> "";
    };
  }

  /** {@code [#########---------------------]  30.0%  12 MiB / 40 MiB  5.0 MiB/s  ETA 0:06}. */
  static String bar(long done, long total, long elapsedNanos) {
    double f = fraction(done, total);
    int filled = (int) (f * BAR_WIDTH);
    return String.format(Locale.ROOT, "[%s%s] %5.1f%%  %s / %s  %s  ETA %s",
        "#".repeat(filled), "-".repeat(BAR_WIDTH - filled), f * 100, Sizes.human(done), Sizes.human(total),
        rate(done, elapsedNanos), eta(done, total, elapsedNanos));
  }

  /** {@code backup 'drive0': 30% (12 MiB of 40 MiB), 5.0 MiB/s, ETA 0:06}. */
  String plain(long done, long total, long elapsedNanos) {
    return String.format(Locale.ROOT, "backup '%s': %d%% (%s of %s), %s, ETA %s", jobId,
        (int) (fraction(done, total) * 100), Sizes.human(done), Sizes.human(total), rate(done, elapsedNanos),
        eta(done, total, elapsedNanos));
  }

  /** The one line that ends a successful backup. */
  static String summary(String jobId, long copied, long elapsedNanos, String target, String format) {
    return String.format(Locale.ROOT, "backup '%s': %s copied in %.2f s (%s), target %s (%s)", jobId,
        Sizes.human(copied), elapsedNanos / 1e9, rate(copied, elapsedNanos), target, format);
  }

  /** The average rate so far in MiB/s, one decimal: {@code 5.0 MiB/s}. */
  static String rate(long done, long elapsedNanos) {
    if (elapsedNanos <= 0) {
      return "-.- MiB/s";
    }
    return String.format(Locale.ROOT, "%.1f MiB/s", done / 1048576.0 / (elapsedNanos / 1e9));
  }

  /**
   * The time left at the average rate so far: {@code m:ss}, {@code h:mm:ss} from an hour on, and
   * {@code --:--} while nothing has been copied to measure by.
   */
  static String eta(long done, long total, long elapsedNanos) {
    if (done >= total) {
      return "0:00";
    }
    if (done <= 0 || elapsedNanos <= 0) {
      return "--:--";
    }
    long seconds = (long) Math.ceil((double) (total - done) * elapsedNanos / done / 1e9);
    long h = seconds / 3600;
    long m = seconds / 60 % 60;
    long s = seconds % 60;
    return h > 0 ? String.format(Locale.ROOT, "%d:%02d:%02d", h, m, s) : String.format(Locale.ROOT, "%d:%02d", m, s);
  }

  /** done / total within [0, 1]; an empty job is complete. */
  static double fraction(long done, long total) {
    if (total <= 0) {
      return 1;
    }
    return Math.min(1, Math.max(0, (double) done / total));
  }
}
