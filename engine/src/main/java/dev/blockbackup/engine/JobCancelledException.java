package dev.blockbackup.engine;

/**
 * Thrown by {@link Job#pausePoint()} when the job was cancelled, so that the job body unwinds to
 * the abort path (QEMU's job_is_cancelled check after a pause point, result -ECANCELED).
 */
public final class JobCancelledException extends RuntimeException {

  private static final long serialVersionUID = 1L;

  JobCancelledException(String id) {
    super("Job '" + id + "' was cancelled");
  }
}
