package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.formats.ImageFormatException;
import java.nio.ByteBuffer;
import java.util.List;
import java.util.function.Consumer;
import org.junit.jupiter.api.Test;

/** The bitmap directory and the bitmaps extension: encoding, and every check QEMU makes at open. */
class BitmapDirectoryTest {

  private static final int CS = 65536;
  private static final long SIZE = 1L << 30;

  private static BitmapDirectory.Entry entry(String name) {
    return new BitmapDirectory.Entry(3L * CS, 1, BitmapDirectory.FLAG_AUTO, 16, name);
  }

  private static List<BitmapDirectory.Entry> parse(ByteBuffer dir, long nb) throws ImageFormatException {
    return BitmapDirectory.parse(dir, nb, CS, SIZE, "img", 0x50000);
  }

  /** One encoded entry "bm", changed by {@code edit}, must be refused with {@code message}. */
  private static void refused(Consumer<ByteBuffer> edit, String message) {
    ByteBuffer d = BitmapDirectory.encode(List.of(entry("bm")));
    edit.accept(d);
    assertThatThrownBy(() -> parse(d, 1)).isInstanceOf(ImageFormatException.class)
        .hasMessageContaining("img: bitmap directory entry 0 at 0x50000").hasMessageContaining(message);
  }

  @Test
  void entriesRoundTripEightByteAligned() throws Exception {
    List<BitmapDirectory.Entry> in = List.of(entry("a"), entry("a-longer-name-of-17"),
        new BitmapDirectory.Entry(7L * CS, 1, BitmapDirectory.FLAG_IN_USE, 9 + 7, "é"));
    ByteBuffer d = BitmapDirectory.encode(in);
    assertThat(d.remaining()).isEqualTo(32 + 48 + 32).isEqualTo((int) BitmapDirectory.sizeOf(in));
    assertThat(parse(d, 3)).isEqualTo(in);
  }

  @Test
  void everyFieldIsCheckedWithWhatAndWhere() {
    refused(d -> d.putInt(8, 0), "bitmap_table_size 0");
    refused(d -> d.putInt(8, 0x8000001), "bitmap_table_size 134217729");
    refused(d -> d.putLong(0, 0), "bitmap_table_offset 0x0");
    refused(d -> d.putLong(0, CS + 512), "bitmap_table_offset 0x10200");
    refused(d -> d.put(17, (byte) 8), "granularity_bits 8");
    refused(d -> d.put(17, (byte) 32), "granularity_bits 32");
    refused(d -> d.putInt(12, 4), "reserved flags 0x4"); // extra_data_compatible: reserved to QEMU
    refused(d -> d.putInt(12, 0x80000002), "reserved flags 0x80000000");
    refused(d -> d.put(16, (byte) 2), "type 2");
    refused(d -> d.putShort(18, (short) 0), "name_size 0");
    refused(d -> d.putShort(18, (short) 1024), "overruns the directory");
    refused(d -> d.putInt(20, 8), "overruns the directory");
    refused(d -> d.putInt(8, 0x2001), "above QEMU's limit of 536870912");
    // 1 GiB at 64 KiB granules needs 16 Ki bits: one cluster covers it, but not at 512 bytes
    refused(d -> d.put(17, (byte) 9), "covers less than the image");
  }

  @Test
  void anInUseBitmapMayHaveAStaleSizeAsInQemu() throws Exception {
    ByteBuffer d = BitmapDirectory.encode(List.of(
        new BitmapDirectory.Entry(3L * CS, 1, BitmapDirectory.FLAG_IN_USE, 9, "stale")));
    assertThat(parse(d, 1)).hasSize(1);
  }

  @Test
  void nameSizeAboveTheLimitIsRefusedEvenWhenItFits() {
    String name = "n".repeat(1024);
    ByteBuffer d = BitmapDirectory.encode(List.of(entry(name)));
    assertThatThrownBy(() -> parse(d, 1)).hasMessageContaining("name_size 1024 is outside 1..1023");
  }

  @Test
  void extraDataIsRefusedAsQemuSupportsNone() {
    ByteBuffer d = ByteBuffer.allocate(40);
    d.put(0, BitmapDirectory.encode(List.of(entry("x"))).array(), 0, 32);
    d.putInt(20, 8).putShort(18, (short) 1);
    d.put(32, (byte) 'x');
    assertThatThrownBy(() -> parse(d, 1)).hasMessageContaining("extra data (8 bytes) is not supported");
  }

  @Test
  void countsAndNamesMustAgree() {
    ByteBuffer two = BitmapDirectory.encode(List.of(entry("a"), entry("b")));
    assertThatThrownBy(() -> parse(two.duplicate(), 1)).hasMessageContaining("more bitmaps in the directory than the 1");
    assertThatThrownBy(() -> parse(two.duplicate(), 3)).hasMessageContaining("holds 2 bitmaps, fewer than the 3");
    ByteBuffer dup = BitmapDirectory.encode(List.of(entry("a"), entry("a")));
    assertThatThrownBy(() -> parse(dup, 2)).hasMessageContaining("the name is used twice");
    ByteBuffer cut = ByteBuffer.allocate(40);
    cut.put(0, BitmapDirectory.encode(List.of(entry("a"))).array(), 0, 32);
    assertThatThrownBy(() -> parse(cut, 2)).hasMessageContaining("entry 1 at 0x50020: the entry overruns");
  }

  private static void badExtension(Consumer<ByteBuffer> edit, long len, String message) {
    ByteBuffer c0 = ByteBuffer.allocate(64);
    c0.putInt(8, 1).putLong(16, 512).putLong(24, 3L * CS);
    edit.accept(c0);
    assertThatThrownBy(() -> BitmapDirectory.parseExtension(c0, 8, len, CS, "img"))
        .isInstanceOf(ImageFormatException.class).hasMessageStartingWith("img: ").hasMessageContaining(message);
  }

  @Test
  void theExtensionIsCheckedAsQemuChecksIt() throws Exception {
    ByteBuffer ok = ByteBuffer.allocate(64);
    ok.putInt(8, 2).putLong(16, 512).putLong(24, 3L * CS);
    assertThat(BitmapDirectory.parseExtension(ok, 8, 24, CS, "img"))
        .isEqualTo(new BitmapDirectory.Extension(2, 512, 3L * CS));
    badExtension(c -> { }, 16, "has 16 bytes, not 24");
    badExtension(c -> c.putInt(12, 1), 24, "reserved field is 0x1");
    badExtension(c -> c.putInt(8, 0), 24, "gives zero bitmaps");
    badExtension(c -> c.putInt(8, 65536), 24, "65536 bitmaps, above QEMU's limit of 65535");
    badExtension(c -> c.putLong(24, CS + 8), 24, "bitmap_directory_offset 0x10008");
    badExtension(c -> c.putLong(16, 0), 24, "bitmap_directory_size 0");
    badExtension(c -> c.putLong(16, 1024L * 65535 + 1), 24, "bitmap_directory_size 67107841");
    badExtension(c -> c.putLong(16, -1), 24, "bitmap_directory_size 18446744073709551615");
  }
}
