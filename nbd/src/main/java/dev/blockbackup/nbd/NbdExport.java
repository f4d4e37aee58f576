package dev.blockbackup.nbd;

import dev.blockbackup.formats.BlockDevice;
import java.nio.charset.StandardCharsets;
import java.util.Objects;

/**
 * One export of an {@link NbdServer}: a name clients ask for, the device behind it (typically a
 * {@code BlockNode}, so a backup job started on the node is seen by the export's clients), whether
 * clients may write, and a description for {@code nbdinfo}. Immutable; each {@code with...}
 * returns a copy. The device stays the caller's: the server never closes it.
 */
public final class NbdExport {

  /** The NBD spec's limit on strings such as export names. */
  static final int MAX_STRING = 4096;

  private final String name;
  private final BlockDevice device;
  private final boolean readOnly;
  private final String description;

  private NbdExport(String name, BlockDevice device, boolean readOnly, String description) {
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
  }

  /** A writable export called {@code name} (may be empty: the default export) of {@code device}. */
  public static NbdExport of(String name, BlockDevice device) {
    return new NbdExport(name, device, false, null);
  }

  /** This export, read-only if {@code value} (a read-only device is always exported read-only). */
  public NbdExport withReadOnly(boolean value) {
    return new NbdExport(name, device, value, description);
  }

  /** This export with a description (NBD_INFO_DESCRIPTION), or none if null. */
  public NbdExport withDescription(String value) {
    return new NbdExport(name, device, readOnly, value);
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

  @Override
  public String toString() {
    return "NbdExport[" + name + (isReadOnly() ? ", read-only" : "") + "]";
  }
}
