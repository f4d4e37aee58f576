package dev.blockbackup.engine;

import java.util.Objects;

/**
 * The QMP events a job emits, with QEMU's names and fields. {@code device} is the job id, as QEMU
 * reports it for jobs started by blockdev-backup.
 */
public sealed interface JobEvent {

  /** The QMP event name, e.g. {@code JOB_STATUS_CHANGE}. */
  String name();

  /** JOB_STATUS_CHANGE: every status change of a job. */
  record JobStatusChange(String id, JobStatus status) implements JobEvent {
    public JobStatusChange {
      Objects.requireNonNull(id, "id");
      Objects.requireNonNull(status, "status");
    }

    @Override
    public String name() {
      return "JOB_STATUS_CHANGE";
    }
  }

  /** BLOCK_JOB_PENDING: only with auto-finalize=false, when the job waits for job-finalize. */
  record BlockJobPending(String type, String id) implements JobEvent {
    @Override
    public String name() {
      return "BLOCK_JOB_PENDING";
    }
  }

  /**
   * BLOCK_JOB_COMPLETED: at finalization of a job that was not cancelled; {@code error} is null
   * on success (then offset == len).
   */
  record BlockJobCompleted(String type, String device, long len, long offset, long speed, String error)
      implements JobEvent {
    @Override
    public String name() {
      return "BLOCK_JOB_COMPLETED";
    }
  }

  /** BLOCK_JOB_CANCELLED: at finalization of a cancelled job. */
  record BlockJobCancelled(String type, String device, long len, long offset, long speed) implements JobEvent {
    @Override
    public String name() {
      return "BLOCK_JOB_CANCELLED";
    }
  }

  /** BLOCK_JOB_READY: a job that can be completed reached READY (never emitted by backup). */
  record BlockJobReady(String type, String device, long len, long offset, long speed) implements JobEvent {
    @Override
    public String name() {
      return "BLOCK_JOB_READY";
    }
  }

  /** BLOCK_JOB_ERROR: every background I/O error, whatever the action taken. */
  record BlockJobError(String device, IoOperation operation, ErrorAction action) implements JobEvent {
    public BlockJobError {
      Objects.requireNonNull(operation, "operation");
      Objects.requireNonNull(action, "action");
    }

    @Override
    public String name() {
      return "BLOCK_JOB_ERROR";
    }
  }

  /** QAPI's IoOperationType. */
  enum IoOperation {
    read,
    write
  }

  /** QAPI's BlockErrorAction: what the job did about an error. */
  enum ErrorAction {
    ignore,
    report,
    stop
  }
}
