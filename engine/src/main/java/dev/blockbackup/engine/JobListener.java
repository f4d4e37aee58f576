package dev.blockbackup.engine;

/**
 * Receives a job's QMP events. Called outside the job's lock, one event at a time and in order, on
 * whichever thread caused the event. May call the job's verbs (none of them blocks); the events
 * that causes are delivered after every listener has seen the current one. Must not block for
 * long: the job's own thread may be the one delivering.
 */
@FunctionalInterface
public interface JobListener {
  void onEvent(JobEvent event);
}
