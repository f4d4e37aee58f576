package dev.blockbackup.testkit;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.catchThrowableOfType;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

/** The harness itself: what it shrinks, what it reports, and that a reported seed replays. */
class PropertyTest {

  private static final Pattern SEED = Pattern.compile("seed (-?\\d+) \\(replay: -Dprops\\.seed=(-?\\d+) ");

  /** Lists of 20 to 40 digits with at least one 7 somewhere, so every try fails. */
  private static List<Integer> digitsWithASeven(SplittableRandom random) {
    int n = random.nextInt(20, 41);
    List<Integer> ops = new ArrayList<>(n);
    for (int i = 0; i < n; i++) {
      ops.add(random.nextInt(10));
    }
    ops.set(random.nextInt(n), 7);
    return ops;
  }

  /**
   * A property with two causes of failure: the bug under test (a 7 anywhere) and an unrelated one
   * that every list shorter than two operations hits. Shrinking that took any failure would end at
   * the empty list with the unrelated one.
   */
  private static void twoCauses(List<Integer> ops) {
    if (ops.size() < 2) {
      throw new IllegalStateException("fewer than two operations");
    }
    if (ops.contains(7)) {
      throw new AssertionError("saw a 7");
    }
  }

  @Test
  void shrinkingKeepsTheFailureItStartedWithAndReportsItsSeed() {
    AssertionError report = catchThrowableOfType(AssertionError.class,
        () -> Property.check("two causes", 1234L, 3, PropertyTest::digitsWithASeven, PropertyTest::twoCauses));

    assertThat(report.getCause()).isExactlyInstanceOf(AssertionError.class).hasMessage("saw a 7");
    assertThat(report.getMessage())
        .contains("property 'two causes' failed on try 1 of 3, seed 1234 (replay: -Dprops.seed=1234 -Dprops.tries=1)")
        .containsPattern("shrunk from \\d+ to 2 operations")
        .contains("failure: java.lang.AssertionError: saw a 7")
        .doesNotContain("fewer than two operations");
    // The two operations left are the 7 and one other: the smallest list that fails the same way.
    String ops = report.getMessage().split("operations:\\R")[1].split("\\Rfailure:")[0];
    assertThat(ops.lines().map(String::trim).toList()).hasSize(2).contains("7");
  }

  @Test
  void replayingTheReportedSeedReproducesTheSameShrunkFailure() {
    // Two lists in three lose their 7; base 99's first try passes, so the failure is found on a
    // later try, whose seed is derived from the base and is the one the report must name.
    Property.Generator<Integer> sometimes = random -> {
      List<Integer> ops = digitsWithASeven(random);
      if (random.nextInt(3) != 0) {
        ops.replaceAll(d -> d == 7 ? 8 : d);
      }
      return ops;
    };
    AssertionError first = catchThrowableOfType(AssertionError.class,
        () -> Property.check("sometimes", 99L, 1000, sometimes, PropertyTest::twoCauses));
    Matcher m = SEED.matcher(first.getMessage());
    assertThat(m.find()).as(first.getMessage()).isTrue();
    long seed = Long.parseLong(m.group(1));
    assertThat(m.group(2)).isEqualTo(m.group(1));
    assertThat(first.getMessage()).doesNotContain("failed on try 1 of").doesNotContain("seed 99 ");

    AssertionError replay = catchThrowableOfType(AssertionError.class,
        () -> Property.check("sometimes", seed, 1, sometimes, PropertyTest::twoCauses));

    assertThat(replay.getCause()).isExactlyInstanceOf(AssertionError.class).hasMessage("saw a 7");
    // Same seed, same operations, same shrinking: the report differs only in which try it was.
    assertThat(replay.getMessage())
        .contains("failed on try 1 of 1, seed " + seed + " ")
        .isEqualTo(first.getMessage().replaceFirst("failed on try \\d+ of 1000", "failed on try 1 of 1"));
  }

  @Test
  void aPassingPropertyRunsEveryTry() {
    AtomicInteger runs = new AtomicInteger();
    int ran = Property.check("no sevens", 5L, 17, random -> List.of(random.nextInt(7)), ops -> {
      runs.incrementAndGet();
      assertThat(ops.get(0)).isLessThan(7);
    });
    assertThat(ran).isEqualTo(17);
    assertThat(runs).hasValue(17);
  }
}
