package dev.blockbackup.engine;

/**
 * Receives a job's QMP events. Called outside the job's lock, in event order, on whichever thread
 * caused the event; may call the job's verbs. Must not block for long: the job's own thread may be
 * the one delivering.
 */
@FunctionalInterface
public interface JobListener {
    void onEvent(JobEvent event);
}
