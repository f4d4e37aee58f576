package dev.blockbackup.engine;

import dev.blockbackup.engine.JobEvent.ErrorAction;
import dev.blockbackup.formats.BlockError;

/** QAPI's BlockdevOnError: what a background copy error does to a backup job. */
public enum BlockdevOnError {
  /** The job fails with the error (the default). */
  report,
  /** The error is reported with BLOCK_JOB_ERROR and the copy retried, forever if it persists. */
  ignore,
  /** The job pauses with the error until job-resume, which retries. */
  stop,
  /** stop on ENOSPC, report otherwise. */
  enospc,
  /** As enospc for a job (QEMU maps auto to enospc outside guest devices). */
  auto;

  /** block_job_error_action: the action for an error of kind {@code error}. */
  ErrorAction actionFor(BlockError error) {
    return switch (this) {
      case report -> ErrorAction.report;
      case ignore -> ErrorAction.ignore;
      case stop -> ErrorAction.stop;
      case enospc, auto -> error == BlockError.ENOSPC ? ErrorAction.stop : ErrorAction.report;
    };
  }

  public static BlockdevOnError parse(String s) {
    for (BlockdevOnError m : values()) {
      if (m.name().equals(s)) {
        return m;
      }
    }
    throw new IllegalArgumentException("an error policy must be report, ignore, stop, enospc or auto, not '" + s + "'");
  }
}
