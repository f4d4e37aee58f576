package dev.blockbackup.nbd;

import static dev.blockbackup.nbd.NbdConstants.BASE_ALLOCATION;
import static dev.blockbackup.nbd.NbdConstants.BASE_ALLOCATION_ID;

import dev.blockbackup.nbd.NbdExport.ExportedBitmap;
import java.util.ArrayList;
import java.util.List;

/**
 * The metadata contexts a client chose for one export with NBD_OPT_SET_META_CONTEXT (or would be
 * shown by NBD_OPT_LIST_META_CONTEXT): {@code base:allocation}, {@code qemu:allocation-depth} if
 * the export offers it, and {@code qemu:dirty-bitmap:NAME} for the bitmaps it offers. The ids are
 * fixed per export, so a client that selects again gets the same id for the same context.
 *
 * <p>Queries follow QEMU's server: a namespace alone ({@code base:}, {@code qemu:}, {@code
 * qemu:dirty-bitmap:}) or no query at all lists every context it covers, but only for LIST; SET
 * selects by full name. A query for a context that does not exist matches nothing and is not an
 * error, since the spec lets a client probe.
 */
final class MetaContexts {

  static final String ALLOCATION_DEPTH = "qemu:allocation-depth";
  static final int ALLOCATION_DEPTH_ID = BASE_ALLOCATION_ID + 1;
  /** The id of the export's first bitmap; the i-th has this plus i. */
  static final int FIRST_BITMAP_ID = ALLOCATION_DEPTH_ID + 1;
  private static final String DIRTY_BITMAP = "qemu:dirty-bitmap:";

  /** One chosen context: its id on the wire and its name. */
  record Context(int id, String name) {}

  private final NbdExport export;
  private boolean baseAllocation;
  private boolean allocationDepth;
  private final boolean[] bitmaps;

  private MetaContexts(NbdExport export) {
    this.export = export;
    this.bitmaps = new boolean[export.bitmaps().size()];
  }

  /** The contexts of {@code export} that {@code queries} name; {@code list} for LIST's wider matching. */
  static MetaContexts match(NbdExport export, List<String> queries, boolean list) {
    MetaContexts m = new MetaContexts(export);
    if (list && queries.isEmpty()) {
      m.baseAllocation = true;
      m.allocationDepth = export.allocationDepth();
      java.util.Arrays.fill(m.bitmaps, true);
    }
    for (String q : queries) {
      m.query(q, list);
    }
    return m;
  }

  private void query(String q, boolean list) {
    if (q.equals(BASE_ALLOCATION) || (list && q.equals("base:"))) {
      baseAllocation = true;
    } else if (q.equals(ALLOCATION_DEPTH) || (list && q.equals("qemu:"))) {
      allocationDepth = export.allocationDepth();
      if (list && q.equals("qemu:")) {
        java.util.Arrays.fill(bitmaps, true);
      }
    } else if (q.startsWith(DIRTY_BITMAP)) {
      String name = q.substring(DIRTY_BITMAP.length());
      List<ExportedBitmap> offered = export.bitmaps();
      for (int i = 0; i < offered.size(); i++) {
        if ((list && name.isEmpty()) || offered.get(i).name().equals(name)) {
          bitmaps[i] = true;
        }
      }
    }
  }

  NbdExport export() {
    return export;
  }

  boolean baseAllocation() {
    return baseAllocation;
  }

  boolean allocationDepth() {
    return allocationDepth;
  }

  /** Whether the export's {@code i}-th bitmap was chosen. */
  boolean bitmap(int i) {
    return bitmaps[i];
  }

  /** How many contexts were chosen: the chunks of each block status reply. */
  int count() {
    int n = (baseAllocation ? 1 : 0) + (allocationDepth ? 1 : 0);
    for (boolean b : bitmaps) {
      n += b ? 1 : 0;
    }
    return n;
  }

  /** The chosen contexts in id order, as the option replies name them. */
  List<Context> chosen() {
    List<Context> out = new ArrayList<>();
    if (baseAllocation) {
      out.add(new Context(BASE_ALLOCATION_ID, BASE_ALLOCATION));
    }
    if (allocationDepth) {
      out.add(new Context(ALLOCATION_DEPTH_ID, ALLOCATION_DEPTH));
    }
    for (int i = 0; i < bitmaps.length; i++) {
      if (bitmaps[i]) {
        out.add(new Context(FIRST_BITMAP_ID + i, export.bitmaps().get(i).contextName()));
      }
    }
    return out;
  }
}
