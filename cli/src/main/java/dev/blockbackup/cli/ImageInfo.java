package dev.blockbackup.cli;

import com.fasterxml.jackson.core.util.DefaultIndenter;
import com.fasterxml.jackson.core.util.DefaultPrettyPrinter;
import com.fasterxml.jackson.core.util.Separators;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.ImageFormat;
import dev.blockbackup.formats.qcow2.Qcow2Bitmap;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.formats.qcow2.Qcow2Info;
import dev.blockbackup.formats.qcow2.Qcow2Snapshot;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.time.ZoneId;
import java.time.format.DateTimeFormatter;
import java.util.List;
import java.util.Locale;

/**
 * What qemu-img info says about an image, held as its JSON. Kept apart from {@link InfoCommand}
 * so that picocli's reflection over the command does not load Jackson at every start-up.
 */
final class ImageInfo {

  private static final ObjectMapper MAPPER = new ObjectMapper();
  private static final long NANOS = 1_000_000_000L;
  private static final DateTimeFormatter DATE = DateTimeFormatter.ofPattern("yyyy-MM-dd HH:mm:ss", Locale.ROOT);

  private final ObjectNode j;

  private ImageInfo(ObjectNode j) {
    this.j = j;
  }

  /**
   * The image's description as qemu-img info's JSON, fields in the order qemu-img 7.2 prints them
   * (so that the two outputs can be read side by side).
   */
  static ImageInfo of(Path file, ImageFormat fmt) throws BlockIOException {
    ObjectNode j = MAPPER.createObjectNode();
    long fileLength = fileLength(file);
    if (fmt == ImageFormat.QCOW2) {
      // Like qemu-img info, read the header without opening the backing chain, which may be missing.
      Qcow2Info i = Images.inspectQcow2(file);
      if (i.backingFormat() != null) {
        j.put("backing-filename-format", i.backingFormat());
      }
      List<Qcow2Snapshot> snapshots = Images.snapshots(file);
      if (!snapshots.isEmpty()) {
        ArrayNode list = j.putArray("snapshots");
        for (Qcow2Snapshot sn : snapshots) {
          // QAPI SnapshotInfo, its fields in the order qemu-img prints them; icount only if recorded.
          ObjectNode o = list.addObject();
          sn.icount().ifPresent(c -> o.put("icount", c));
          o.put("vm-clock-nsec", sn.vmClockNsec() % NANOS);
          o.put("name", sn.name());
          o.put("date-sec", sn.dateSec());
          o.put("date-nsec", sn.dateNsec());
          o.put("vm-clock-sec", sn.vmClockNsec() / NANOS);
          o.put("id", sn.id());
          o.put("vm-state-size", sn.vmStateSize());
        }
      }
      j.put("virtual-size", i.virtualSize());
      j.put("filename", file.toString());
      j.put("cluster-size", i.clusterSize());
      j.put("format", "qcow2");
      j.put("actual-size", Math.min(fileLength, i.hostClustersInUse() * i.clusterSize()));
      ObjectNode spec = j.putObject("format-specific");
      spec.put("type", "qcow2");
      ObjectNode data = spec.putObject("data");
      // qcow2_get_specific_info: v2 images have no feature bits, so QEMU shows only these.
      data.put("compat", i.version() >= 3 ? "1.1" : "0.10");
      data.put("compression-type", i.compressionType());
      if (i.version() >= 3) {
        data.put("lazy-refcounts", i.lazyRefcounts());
      }
      List<Qcow2Bitmap> bitmaps = Images.bitmaps(file);
      if (!bitmaps.isEmpty()) {
        // Qcow2BitmapInfo: flags as the directory holds them, in QEMU's order
        ArrayNode list = data.putArray("bitmaps");
        for (Qcow2Bitmap b : bitmaps) {
          ObjectNode o = list.addObject();
          ArrayNode flags = o.putArray("flags");
          if (b.inconsistent()) {
            flags.add("in-use");
          }
          if (b.enabled()) {
            flags.add("auto");
          }
          o.put("name", b.name());
          o.put("granularity", b.granularity());
        }
      }
      data.put("refcount-bits", i.refcountBits());
      if (i.dataFile() != null) {
        data.put("data-file", i.dataFile());
        data.put("data-file-raw", i.dataFileRaw());
      }
      if (i.version() >= 3) {
        data.put("corrupt", i.corrupt());
        data.put("extended-l2", i.extendedL2());
      }
      if (i.backingFile() != null) {
        j.put("full-backing-filename", Images.backingPath(file, i.backingFile()));
        j.put("backing-filename", i.backingFile());
      }
      j.put("dirty-flag", i.dirty());
    } else {
      try (BlockDevice dev = Images.open(file, fmt, true)) {
        // The raw driver counts whole sectors: a 1000-byte file is a 1024-byte disk to qemu-img.
        j.put("virtual-size", Sizes.roundUpToSector(dev.size()));
        j.put("filename", file.toString());
        j.put("format", "raw");
        j.put("actual-size", fileLength);
        j.put("dirty-flag", false);
      }
    }
    return new ImageInfo(j);
  }

  /** qemu-img info's human form (bdrv_image_info_dump in QEMU 7.2). */
  String human() {
    StringBuilder s = new StringBuilder();
    long virtual = j.get("virtual-size").asLong();
    s.append("image: ").append(j.get("filename").asText()).append('\n');
    s.append("file format: ").append(j.get("format").asText()).append('\n');
    s.append("virtual size: ").append(Sizes.human(virtual)).append(" (").append(virtual).append(" bytes)\n");
    s.append("disk size: ").append(Sizes.human(j.get("actual-size").asLong())).append('\n');
    if (j.has("cluster-size")) {
      s.append("cluster_size: ").append(j.get("cluster-size").asLong()).append('\n');
    }
    if (j.path("dirty-flag").asBoolean()) {
      s.append("cleanly shut down: no\n");
    }
    if (j.has("backing-filename")) {
      String backing = j.get("backing-filename").asText();
      String full = j.get("full-backing-filename").asText();
      s.append("backing file: ").append(backing);
      if (!backing.equals(full)) {
        s.append(" (actual path: ").append(full).append(')');
      }
      s.append('\n');
      if (j.has("backing-filename-format")) {
        s.append("backing file format: ").append(j.get("backing-filename-format").asText()).append('\n');
      }
    }
    if (j.has("snapshots")) {
      s.append("Snapshot list:\n");
      s.append(snapshotTable());
    }
    if (j.has("format-specific")) {
      s.append("Format specific information:\n");
      dump(s, j.get("format-specific").get("data"), 4);
    }
    return s.toString();
  }

  /**
   * QEMU's dump of format-specific information (dump_qdict / dump_qlist): a key's value on its
   * line, or, for a list or an object, on the lines below, indented by four more; list items as
   * {@code [i]:}.
   */
  private static void dump(StringBuilder s, JsonNode node, int indent) {
    String pad = " ".repeat(indent);
    if (node.isArray()) {
      for (int i = 0; i < node.size(); i++) {
        JsonNode v = node.get(i);
        s.append(pad).append('[').append(i).append("]:");
        dumpValue(s, v, indent);
      }
    } else {
      node.fields().forEachRemaining(e -> {
        s.append(pad).append(e.getKey().replace('-', ' ')).append(':');
        dumpValue(s, e.getValue(), indent);
      });
    }
  }

  private static void dumpValue(StringBuilder s, JsonNode v, int indent) {
    if (v.isContainerNode()) {
      s.append('\n');
      dump(s, v, indent + 4);
    } else {
      s.append(' ').append(v.asText()).append('\n');
    }
  }

  /**
   * The "Snapshot list:" table of bdrv_snapshot_dump (QEMU 7.2): ID and TAG left-aligned, the rest
   * right-aligned, widths counted in bytes as C's printf counts them; the date in local time.
   */
  private String snapshotTable() {
    StringBuilder t = new StringBuilder();
    t.append(left("ID", 10)).append(left("TAG", 17)).append(right("VM SIZE", 8)).append(right("DATE", 20))
        .append(right("VM CLOCK", 13)).append(right("ICOUNT", 11)).append('\n');
    for (JsonNode sn : j.get("snapshots")) {
      long clockSec = sn.get("vm-clock-sec").asLong();
      String clock = String.format(Locale.ROOT, "%02d:%02d:%02d.%03d", clockSec / 3600, clockSec / 60 % 60,
          clockSec % 60, sn.get("vm-clock-nsec").asLong() / 1_000_000);
      String date = DATE.format(Instant.ofEpochSecond(sn.get("date-sec").asLong()).atZone(ZoneId.systemDefault()));
      t.append(left(sn.get("id").asText(), 9)).append(' ').append(left(sn.get("name").asText(), 16)).append(' ')
          .append(right(Sizes.human(sn.get("vm-state-size").asLong()), 8)).append(right(date, 20))
          .append(right(clock, 13)).append(right(sn.has("icount") ? sn.get("icount").asText() : "", 11)).append('\n');
    }
    return t.toString();
  }

  private static String left(String s, int width) {
    return s + " ".repeat(Math.max(0, width - s.getBytes(StandardCharsets.UTF_8).length));
  }

  private static String right(String s, int width) {
    return " ".repeat(Math.max(0, width - s.getBytes(StandardCharsets.UTF_8).length)) + s;
  }

  /** JSON indented with four spaces and {@code "key": value}, as qemu-img prints it. */
  String json() {
    DefaultPrettyPrinter pp = new DefaultPrettyPrinter(
            Separators.createDefaultInstance().withObjectFieldValueSpacing(Separators.Spacing.AFTER))
        .withObjectIndenter(new DefaultIndenter("    ", "\n"))
        .withArrayIndenter(new DefaultIndenter("    ", "\n"));
    try {
      return MAPPER.writer(pp).writeValueAsString(j);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  private static long fileLength(Path file) {
    try {
      return Files.size(file);
    } catch (IOException e) {
      throw new UserError("cannot open '" + file + "': " + e.getMessage(), e);
    }
  }
}
