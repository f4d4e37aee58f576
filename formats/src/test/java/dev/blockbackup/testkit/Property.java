package dev.blockbackup.testkit;

import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.SplittableRandom;

/**
 * Our small property harness (we do not use jqwik: its maintainer asks AI agents not to). Each try
 * draws an operation list from a seeded {@link SplittableRandom}; the test runs it against the
 * system and a plain model and throws on a mismatch. A failing list is shrunk by deleting
 * operations while the <em>same</em> failure persists (same exception type, same message): a
 * shorter list that fails for another reason is a different bug, and taking it would report that
 * one and lose the first. The shrunk list is reported with the seed that reproduces the original.
 *
 * <p>{@code -Dprops.tries=N} overrides every property's number of tries (a soak run uses many);
 * {@code -Dprops.seed=S} makes the first try use seed S, so a reported failure replays with
 * {@code -Dprops.seed=S -Dprops.tries=1}. {@code -Dprops.shrinkRuns=N} bounds the re-runs spent
 * shrinking (fewer when each run is slow).
 */
public final class Property {

  /** Draws one operation list. */
  public interface Generator<O> {
    List<O> generate(SplittableRandom random);
  }

  /** Runs one operation list against fresh state; throws when the system and the model disagree. */
  public interface Run<O> {
    void run(List<O> ops) throws Exception;
  }

  /** How many re-runs shrinking may spend before it reports what it has ({@code -Dprops.shrinkRuns} overrides). */
  private static final int MAX_SHRINK_RUNS = 400;

  private Property() {}

  /** The number of tries: {@code -Dprops.tries} when set, else {@code defaultTries}. */
  public static int tries(int defaultTries) {
    return Integer.getInteger("props.tries", defaultTries);
  }

  /** Runs {@link #tries} tries of the property; returns how many ran. */
  public static <O> int check(String name, int defaultTries, Generator<O> generator, Run<O> run) {
    long base = Long.getLong("props.seed", new SplittableRandom().nextLong());
    return check(name, base, tries(defaultTries), generator, run);
  }

  /** Runs {@code tries} tries, the first with seed {@code base}: what {@code -Dprops.seed} selects. */
  static <O> int check(String name, long base, int tries, Generator<O> generator, Run<O> run) {
    for (int i = 0; i < tries; i++) {
      long seed = i == 0 ? base : new SplittableRandom(base + i).nextLong();
      List<O> ops = generator.generate(new SplittableRandom(seed));
      Throwable failure = failureOf(run, ops);
      if (failure != null) {
        Shrunk<O> shrunk = shrink(run, ops, failure);
        AssertionError e = new AssertionError(
            String.format(
                "property '%s' failed on try %d of %d, seed %d (replay: -Dprops.seed=%d -Dprops.tries=1)%n"
                    + "shrunk from %d to %d operations:%n  %s%nfailure: %s",
                name, i + 1, tries, seed, seed, ops.size(), shrunk.ops.size(),
                String.join("\n  ", shrunk.ops.stream().map(String::valueOf).toList()),
                shrunk.failure),
            shrunk.failure);
        throw e;
      }
    }
    return tries;
  }

  private record Shrunk<O>(List<O> ops, Throwable failure) {}

  /**
   * Deletes ever smaller runs of operations while the property keeps failing the same way (simple
   * delta debugging).
   */
  private static <O> Shrunk<O> shrink(Run<O> run, List<O> ops, Throwable failure) {
    List<O> current = new ArrayList<>(ops);
    Throwable currentFailure = failure;
    int budget = Integer.getInteger("props.shrinkRuns", MAX_SHRINK_RUNS);
    for (int chunk = Math.max(1, current.size() / 2); chunk >= 1 && budget > 0; chunk /= 2) {
      int start = 0;
      while (start < current.size() && budget > 0) {
        List<O> candidate = new ArrayList<>(current.subList(0, start));
        candidate.addAll(current.subList(Math.min(current.size(), start + chunk), current.size()));
        budget--;
        Throwable f = failureOf(run, candidate);
        if (f != null && sameFailure(failure, f)) {
          current = candidate;
          currentFailure = f;
        } else {
          start += chunk;
        }
      }
      if (chunk == 1) {
        break;
      }
    }
    return new Shrunk<>(current, currentFailure);
  }

  /**
   * Whether {@code candidate} is the failure being shrunk: the same exception class with the same
   * message. A message that carries values of the run (an offset, a byte) must stay the same too,
   * which keeps shrinking honest at the cost of shrinking less.
   */
  private static boolean sameFailure(Throwable original, Throwable candidate) {
    return original.getClass() == candidate.getClass()
        && Objects.equals(original.getMessage(), candidate.getMessage());
  }

  private static <O> Throwable failureOf(Run<O> run, List<O> ops) {
    try {
      run.run(ops);
      return null;
    } catch (Throwable t) {
      if (t instanceof VirtualMachineError && !(t instanceof OutOfMemoryError)) {
        throw (VirtualMachineError) t;
      }
      return t;
    }
  }
}
