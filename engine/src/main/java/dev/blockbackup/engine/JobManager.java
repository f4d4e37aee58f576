package dev.blockbackup.engine;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;
import java.util.concurrent.CopyOnWriteArrayList;

/**
 * QEMU's global job list: jobs by id, in creation order (the order query-jobs answers in). A job
 * stays listed, and its id taken, until it reaches NULL, so a CONCLUDED job that waits for
 * job-dismiss still blocks its id.
 */
public final class JobManager {

  /** Registered jobs by id, in registration order; guarded by itself. */
  private final Map<String, Job> jobs = new LinkedHashMap<>();
  /** Listeners that receive the events of every job of this manager. */
  private final CopyOnWriteArrayList<JobListener> listeners = new CopyOnWriteArrayList<>();

  /**
   * Registers a new job (job_create): its id must not be used by any job still listed. The job
   * moves from UNDEFINED to CREATED, which every listener sees.
   */
  public <J extends Job> J register(J job) {
    Objects.requireNonNull(job, "job");
    synchronized (jobs) {
      if (jobs.containsKey(job.id())) {
        throw new JobException("Job ID '" + job.id() + "' already in use");
      }
      jobs.put(job.id(), job);
    }
    try {
      job.attach(this);
    } catch (RuntimeException e) {
      synchronized (jobs) {
        jobs.remove(job.id(), job);
      }
      throw e;
    }
    return job;
  }

  /** The job with this id, if it is still listed (not yet NULL). */
  public Optional<Job> get(String id) {
    synchronized (jobs) {
      return Optional.ofNullable(jobs.get(id));
    }
  }

  /** query-jobs: every listed job, in creation order. */
  public List<Job> list() {
    synchronized (jobs) {
      return List.copyOf(new ArrayList<>(jobs.values()));
    }
  }

  public void addListener(JobListener listener) {
    listeners.add(Objects.requireNonNull(listener, "listener"));
  }

  public void removeListener(JobListener listener) {
    listeners.remove(listener);
  }

  List<JobListener> listeners() {
    return listeners;
  }

  /** Called by a job reaching NULL. */
  void remove(Job job) {
    synchronized (jobs) {
      jobs.remove(job.id(), job);
    }
  }
}
