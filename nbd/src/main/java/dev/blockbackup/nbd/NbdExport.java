package dev.blockbackup.nbd;

import dev.blockbackup.engine.BlockNode;
import dev.blockbackup.formats.BlockDevice;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;

/**
 * One export of an {@link NbdServer}: a name clients ask for, the device behind it (typically a
 * {@code BlockNode}, so a backup job started on the node is seen by the export's clients), whether
 * clients may write, a description for {@code nbdinfo}, and the metadata contexts it offers beside
 * {@code base:allocation}: {@code qemu:dirty-bitmap:NAME} for each bitmap named, {@code
 * qemu:allocation-depth} if asked. Immutable; each {@code with...} returns a copy. The device stays
 * the caller's: the server never closes it.
 */
public final class NbdExport {

  /** The NBD spec's limit on strings such as export names. */
  static final int MAX_STRING = 4096;

  private final String name;
  private final BlockDevice device;
  private final boolean readOnly;
  private final String description;
  private final List<ExportedBitmap> bitmaps;
  private final boolean allocationDepth;

  /**
   * A dirty bitmap offered as {@code qemu:dirty-bitmap:NAME}: bitmap {@code name} of {@code node},
   * which need not be the exported device (a fleecing export serves a snapshot of the node whose
   * bitmap it offers), as QAPI's BlockDirtyBitmapOrStr names a node and a bitmap.
   */
  public record ExportedBitmap(BlockNode node, String name) {
    public ExportedBitmap {
      Objects.requireNonNull(node, "node");
      Objects.requireNonNull(name, "name");
    }

    /** The metadata context a client selects for it. */
    public String contextName() {
      return "qemu:dirty-bitmap:" + name;
    }
  }

  private NbdExport(String name, BlockDevice device, boolean readOnly, String description) {
    this(name, device, readOnly, description, List.of(), false);
  }

  private NbdExport(String name, BlockDevice device, boolean readOnly, String description,
      List<ExportedBitmap> bitmaps, boolean allocationDepth) {
    this.name = Objects.requireNonNull(name, "name");
    this.device = Objects.requireNonNull(device, "device");
    if (name.getBytes(StandardCharsets.UTF_8).length > MAX_STRING) {
      throw new IllegalArgumentException("export name is " + name.getBytes(StandardCharsets.UTF_8).length
          + " bytes long; the NBD limit is " + MAX_STRING);
    }
    if (description != null && description.getBytes(StandardCharsets.UTF_8).length > MAX_STRING) {
      throw new IllegalArgumentException("export description is longer than " + MAX_STRING + " bytes");
    }
    this.readOnly = readOnly;
    this.description = description;
    this.bitmaps = List.copyOf(bitmaps);
    this.allocationDepth = allocationDepth;
  }

  /** A writable export called {@code name} (may be empty: the default export) of {@code device}. */
  public static NbdExport of(String name, BlockDevice device) {
    return new NbdExport(name, device, false, null);
  }

  /** This export, read-only if {@code value} (a read-only device is always exported read-only). */
  public NbdExport withReadOnly(boolean value) {
    return new NbdExport(name, device, value, description, bitmaps, allocationDepth);
  }

  /** This export with a description (NBD_INFO_DESCRIPTION), or none if null. */
  public NbdExport withDescription(String value) {
    return new NbdExport(name, device, readOnly, value, bitmaps, allocationDepth);
  }

  /**
   * This export offering bitmap {@code bitmap} of {@code node} as {@code qemu:dirty-bitmap:BITMAP}.
   * The server marks it busy while it serves (no job may take it then) and refuses to start if it
   * is missing, busy or inconsistent.
   */
  public NbdExport withBitmap(BlockNode node, String bitmap) {
    ExportedBitmap b = new ExportedBitmap(node, bitmap);
    for (ExportedBitmap old : bitmaps) {
      if (old.name().equals(bitmap)) {
        throw new IllegalArgumentException("bitmap '" + bitmap + "' is exported twice by export '" + name + "'");
      }
    }
    List<ExportedBitmap> more = new ArrayList<>(bitmaps);
    more.add(b);
    return new NbdExport(name, device, readOnly, description, more, allocationDepth);
  }

  /** This export offering {@code qemu:allocation-depth} if {@code value} (QAPI's allocation-depth). */
  public NbdExport withAllocationDepth(boolean value) {
    return new NbdExport(name, device, readOnly, description, bitmaps, value);
  }

  public String name() {
    return name;
  }

  public BlockDevice device() {
    return device;
  }

  /** Read-only as asked, or because the device is. */
  public boolean isReadOnly() {
    return readOnly || device.isReadOnly();
  }

  /** The description, or null. */
  public String description() {
    return description;
  }

  /** The bitmaps offered as {@code qemu:dirty-bitmap:} contexts, in the order given. */
  public List<ExportedBitmap> bitmaps() {
    return bitmaps;
  }

  /** Whether {@code qemu:allocation-depth} is offered. */
  public boolean allocationDepth() {
    return allocationDepth;
  }

  @Override
  public String toString() {
    return "NbdExport[" + name + (isReadOnly() ? ", read-only" : "") + "]";
  }
}
