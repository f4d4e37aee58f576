package dev.blockbackup.testkit;

import static org.assertj.core.api.Assertions.assertThat;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

/**
 * Runs QEMU's own tools (qemu-img, qemu-io) as the judges of our images. They must be installed:
 * CI installs them (.ci/run), and an interop test that cannot find them fails rather than skips.
 */
public final class QemuImg {

  private static final ObjectMapper JSON = new ObjectMapper();
  private static final long TIMEOUT_SECONDS = 300;

  private QemuImg() {}

  /** What a tool printed and how it exited. */
  public record Result(List<String> command, int exit, String out, String err) {
    public Result assertExit(int expected) {
      assertThat(exit).as("exit of %s%nstdout: %s%nstderr: %s", command, out, err).isEqualTo(expected);
      return this;
    }

    public JsonNode json() {
      try {
        return JSON.readTree(out);
      } catch (IOException e) {
        throw new AssertionError("not JSON from " + command + ": " + out, e);
      }
    }
  }

  /** One extent of {@code qemu-img map --output=json}. */
  public record MapEntry(long start, long length, int depth, boolean present, boolean zero, boolean data, Long offset) {}

  public static Result run(String tool, Object... args) {
    List<String> cmd = new ArrayList<>();
    cmd.add(tool);
    for (Object a : args) {
      cmd.add(String.valueOf(a));
    }
    try {
      Process p = new ProcessBuilder(cmd).start();
      p.getOutputStream().close();
      CompletableFuture<String> out = drain(p.getInputStream());
      CompletableFuture<String> err = drain(p.getErrorStream());
      if (!p.waitFor(TIMEOUT_SECONDS, TimeUnit.SECONDS)) {
        p.destroyForcibly();
        throw new AssertionError(cmd + " did not finish in " + TIMEOUT_SECONDS + " s");
      }
      return new Result(cmd, p.exitValue(), out.join(), err.join());
    } catch (IOException e) {
      throw new AssertionError("cannot run " + cmd + " (is qemu-utils installed? .ci/run installs it)", e);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new AssertionError("interrupted running " + cmd, e);
    }
  }

  private static CompletableFuture<String> drain(java.io.InputStream in) {
    return CompletableFuture.supplyAsync(() -> {
      try (in) {
        return new String(in.readAllBytes(), StandardCharsets.UTF_8);
      } catch (IOException e) {
        return "<" + e + ">";
      }
    });
  }

  /** {@code qemu-img ARGS}. */
  public static Result img(Object... args) {
    return run("qemu-img", args);
  }

  /** {@code qemu-io ARGS}. */
  public static Result io(Object... args) {
    return run("qemu-io", args);
  }

  /** Asserts that {@code qemu-img check} finds neither corruptions nor leaks. */
  public static void assertCheckClean(Path qcow2) {
    Result r = img("check", "--output=json", "-f", "qcow2", qcow2);
    r.assertExit(0);
    JsonNode j = r.json();
    assertThat(j.path("corruptions").asLong(0)).as("corruptions in %s: %s", qcow2, r.out()).isZero();
    assertThat(j.path("leaks").asLong(0)).as("leaks in %s: %s", qcow2, r.out()).isZero();
    assertThat(j.path("check-errors").asLong(0)).as("check errors in %s: %s", qcow2, r.out()).isZero();
  }

  /** Asserts that {@code qemu-img compare} finds the guest-visible contents identical. */
  public static void assertIdentical(Path a, String formatA, Path b, String formatB) {
    img("compare", "-f", formatA, "-F", formatB, a, b).assertExit(0);
  }

  /** {@code qemu-img map --output=json}. */
  public static List<MapEntry> map(Path image, String format) {
    JsonNode j = img("map", "--output=json", "-f", format, image).assertExit(0).json();
    List<MapEntry> out = new ArrayList<>();
    for (JsonNode e : j) {
      out.add(new MapEntry(
          e.get("start").asLong(), e.get("length").asLong(), e.path("depth").asInt(),
          e.path("present").asBoolean(), e.path("zero").asBoolean(), e.path("data").asBoolean(),
          e.has("offset") ? e.get("offset").asLong() : null));
    }
    return out;
  }

  /** {@code qemu-img info --output=json}. */
  public static JsonNode info(Path image) {
    return img("info", "--output=json", image).assertExit(0).json();
  }

  /** One line of {@code nbdinfo --map}: a run of bytes and the context's flags (or depth) for it. */
  public record NbdExtent(long offset, long length, long type) {}

  /**
   * {@code nbdinfo --map=CONTEXT} of {@code target} (a URI, or {@code [ server args ]} that nbdinfo
   * starts itself), with neighbours of the same type merged: servers may split a run anywhere.
   */
  public static List<NbdExtent> nbdMap(String context, String... target) {
    List<Object> args = new ArrayList<>(List.of("--map=" + context, "--"));
    args.addAll(List.of(target));
    Result r = run("nbdinfo", args.toArray()).assertExit(0);
    List<NbdExtent> out = new ArrayList<>();
    for (String line : r.out().split("\n")) {
      String[] f = line.trim().split("\\s+");
      if (f.length < 3) {
        continue;
      }
      append(out, new NbdExtent(Long.parseLong(f[0]), Long.parseLong(f[1]), Long.parseLong(f[2])));
    }
    return out;
  }

  /** Adds {@code e} to {@code out}, joined to the last extent when it continues it with the same type. */
  public static void append(List<NbdExtent> out, NbdExtent e) {
    NbdExtent last = out.isEmpty() ? null : out.get(out.size() - 1);
    if (last != null && last.type() == e.type() && last.offset() + last.length() == e.offset()) {
      out.set(out.size() - 1, new NbdExtent(last.offset(), last.length() + e.length(), e.type()));
    } else {
      out.add(e);
    }
  }

  /**
   * QEMU's own view of a persistent bitmap's bits: its dirty ranges (start -> length) as qemu-nbd
   * exports them in the qemu:dirty-bitmap context, read by nbdinfo --map.
   */
  public static java.util.Map<Long, Long> dirtyRanges(Path image, String bitmap) {
    return dirtyRangesOf(bitmap, "[", "qemu-nbd", "-r", "-f", "qcow2", "-B", bitmap, image.toString(), "]");
  }

  /** The dirty ranges (start -> length) an NBD server at {@code uri} offers as qemu:dirty-bitmap:BITMAP. */
  public static java.util.Map<Long, Long> dirtyRanges(String uri, String bitmap) {
    return dirtyRangesOf(bitmap, uri);
  }

  private static java.util.Map<Long, Long> dirtyRangesOf(String bitmap, String... target) {
    java.util.Map<Long, Long> out = new java.util.LinkedHashMap<>();
    for (NbdExtent e : nbdMap("qemu:dirty-bitmap:" + bitmap, target)) {
      if (e.type() == 1) {
        out.put(e.offset(), e.length());
      }
    }
    return out;
  }

}
