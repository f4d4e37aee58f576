package dev.blockbackup.engine;

import static dev.blockbackup.engine.JobStatus.*;

import java.util.EnumMap;
import java.util.EnumSet;
import java.util.Map;
import java.util.Set;

/**
 * QEMU's two job tables (job.c's JobSTT and JobVerbTable, reference §3) in one place: which
 * status may follow which, and which verbs each status accepts.
 */
final class JobTables {

  /** Allowed transitions: from status to the statuses it may move to. */
  private static final Map<JobStatus, Set<JobStatus>> TRANSITIONS = new EnumMap<>(JobStatus.class);

  /** Verbs permitted per status. */
  private static final Map<JobVerb, Set<JobStatus>> VERBS = new EnumMap<>(JobVerb.class);

  static {
    TRANSITIONS.put(undefined, EnumSet.of(created));
    TRANSITIONS.put(created, EnumSet.of(running, aborting, null_));
    TRANSITIONS.put(running, EnumSet.of(paused, ready, waiting, aborting));
    TRANSITIONS.put(paused, EnumSet.of(running));
    TRANSITIONS.put(ready, EnumSet.of(standby, waiting, aborting));
    TRANSITIONS.put(standby, EnumSet.of(ready));
    TRANSITIONS.put(waiting, EnumSet.of(pending, aborting));
    TRANSITIONS.put(pending, EnumSet.of(aborting, concluded));
    TRANSITIONS.put(aborting, EnumSet.of(aborting, concluded));
    TRANSITIONS.put(concluded, EnumSet.of(null_));
    TRANSITIONS.put(null_, EnumSet.noneOf(JobStatus.class));

    Set<JobStatus> createdToStandby = EnumSet.of(created, running, paused, ready, standby);
    VERBS.put(JobVerb.cancel, EnumSet.of(created, running, paused, ready, standby, waiting, pending));
    VERBS.put(JobVerb.pause, createdToStandby);
    VERBS.put(JobVerb.resume, createdToStandby);
    VERBS.put(JobVerb.set_speed, createdToStandby);
    VERBS.put(JobVerb.change, createdToStandby);
    VERBS.put(JobVerb.complete, EnumSet.of(ready, standby));
    VERBS.put(JobVerb.finalize, EnumSet.of(pending));
    VERBS.put(JobVerb.dismiss, EnumSet.of(concluded));
  }

  private JobTables() {}

  static boolean transitionAllowed(JobStatus from, JobStatus to) {
    return TRANSITIONS.get(from).contains(to);
  }

  static boolean verbAllowed(JobVerb verb, JobStatus status) {
    return VERBS.get(verb).contains(status);
  }
}
