package dev.blockbackup.engine;

/** A command a user may send to a job, named as QAPI's {@code JobVerb} names it. */
public enum JobVerb {
  cancel("cancel"),
  pause("pause"),
  resume("resume"),
  set_speed("set-speed"),
  /** job-change / block-job-change (QEMU 8.2+). */
  change("change"),
  complete("complete"),
  finalize("finalize"),
  dismiss("dismiss");

  private final String qapiName;

  JobVerb(String qapiName) {
    this.qapiName = qapiName;
  }

  /** The QAPI string, as it appears in "cannot accept command verb '...'". */
  public String qapiName() {
    return qapiName;
  }

  @Override
  public String toString() {
    return qapiName;
  }
}
