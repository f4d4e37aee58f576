package dev.blockbackup.engine;

/**
 * A job refused a command: the verb is not allowed in the job's status, or its argument is bad.
 * The message is QEMU's, word for word, so a QMP client sees what QEMU would say.
 *
 * <p>Unchecked: like QEMU's {@code Error **}, it is reported to whoever sent the command (the
 * control socket, the CLI) and there is nothing a caller in between can do to recover.
 */
public final class JobException extends RuntimeException {

  private static final long serialVersionUID = 1L;

  JobException(String message) {
    super(message);
  }

  static JobException verbRefused(String id, JobStatus status, JobVerb verb) {
    return new JobException("Job '" + id + "' in state '" + status.qapiName()
        + "' cannot accept command verb '" + verb.qapiName() + "'");
  }
}
