package dev.blockbackup.engine;

import java.util.Locale;

/**
 * A job's status, named as QAPI's {@code JobStatus} names it. {@link #undefined} is the internal
 * state a job has before it is registered; query-jobs never shows it.
 */
public enum JobStatus {
  undefined,
  created,
  running,
  paused,
  ready,
  standby,
  waiting,
  pending,
  aborting,
  concluded,
  /** QAPI's {@code null}: the job is gone (dismissed). */
  null_("null");

  private final String qapiName;

  JobStatus() {
    this.qapiName = name();
  }

  JobStatus(String qapiName) {
    this.qapiName = qapiName;
  }

  /** The lowercase QAPI string, as JOB_STATUS_CHANGE and query-jobs spell it. */
  public String qapiName() {
    return qapiName;
  }

  /** The status whose QAPI name is {@code name}. */
  public static JobStatus fromQapiName(String name) {
    for (JobStatus s : values()) {
      if (s.qapiName.equals(name.toLowerCase(Locale.ROOT))) {
        return s;
      }
    }
    throw new IllegalArgumentException("unknown job status '" + name + "'");
  }

  @Override
  public String toString() {
    return qapiName;
  }
}
