package dev.blockbackup.engine;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.time.Duration;
import org.junit.jupiter.api.Test;

class JobManagerTest {

  private static final Duration TIMEOUT = Duration.ofSeconds(10);

  @Test
  void anIdInUseByARunningJobIsRefused() {
    JobManager manager = new JobManager();
    TestJob first = manager.register(new TestJob("job0"));
    try {
      first.start();
      assertThatThrownBy(() -> manager.register(new TestJob("job0")))
          .isInstanceOf(JobException.class)
          .hasMessage("Job ID 'job0' already in use");
      assertThat(manager.list()).containsExactly(first);
    } finally {
      first.cancel();
    }
  }

  @Test
  void aConcludedJobKeepsItsIdUntilDismissed() throws Exception {
    JobManager manager = new JobManager();
    TestJob first = manager.register(new TestJob("job0", true, false, false));
    first.start();
    first.finish.countDown();
    assertThat(first.awaitConcluded(TIMEOUT)).as("concluded within %s", TIMEOUT).isTrue();

    assertThatThrownBy(() -> manager.register(new TestJob("job0")))
        .isInstanceOf(JobException.class)
        .hasMessage("Job ID 'job0' already in use");
    first.dismiss();
    TestJob second = manager.register(new TestJob("job0"));
    assertThat(manager.get("job0")).contains(second);
  }

  @Test
  void aJobLeavesTheManagerWhenItReachesNull() throws Exception {
    JobManager manager = new JobManager();
    TestJob job = manager.register(new TestJob("job0"));
    assertThat(manager.get("job0")).contains(job);
    job.start();
    job.finish.countDown();
    assertThat(job.awaitStatus(TIMEOUT, JobStatus.null_)).as("null within %s", TIMEOUT).isTrue();
    assertThat(manager.get("job0")).isEmpty();
    assertThat(manager.list()).isEmpty();
  }

  @Test
  void listIsInCreationOrder() {
    JobManager manager = new JobManager();
    TestJob b = manager.register(new TestJob("b"));
    TestJob a = manager.register(new TestJob("a"));
    TestJob c = manager.register(new TestJob("c"));
    assertThat(manager.list()).containsExactly(b, a, c);
    a.cancel();
    assertThat(manager.list()).containsExactly(b, c);
  }

  @Test
  void aJobCannotBeRegisteredTwice() {
    JobManager one = new JobManager();
    TestJob job = one.register(new TestJob("job0"));
    JobManager other = new JobManager();
    assertThatThrownBy(() -> other.register(job)).isInstanceOf(IllegalStateException.class);
    assertThat(other.list()).isEmpty();
  }

  @Test
  void malformedIdsAreRefused() {
    assertThatThrownBy(() -> new TestJob("0abc")).isInstanceOf(JobException.class)
        .hasMessage("Invalid job ID '0abc'");
    assertThatThrownBy(() -> new TestJob("a b")).isInstanceOf(JobException.class)
        .hasMessage("Invalid job ID 'a b'");
  }

  @Test
  void startingAnUnregisteredJobIsABug() {
    assertThatThrownBy(() -> new TestJob("job0").start()).isInstanceOf(IllegalStateException.class);
  }
}
