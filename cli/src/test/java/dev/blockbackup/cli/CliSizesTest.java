package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.blockbackup.testkit.QemuImg;
import java.nio.file.Path;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.ValueSource;

class CliSizesTest {

  @ParameterizedTest
  @CsvSource({
    "0, 0", "512, 512", "65536, 65536", "1k, 1024", "1K, 1024", "64M, 67108864", "64m, 67108864",
    "2G, 2147483648", "1t, 1099511627776", "1.5M, 1572864", "10b, 10", "0.5k, 512", "1E, 1152921504606846976",
    "0x100, 256", "0X10, 16", "0x1E, 30", "+5M, 5242880", "+0x10, 16", "0.1k, 102", "1.k, 1024", "1.0, 1",
    "08, 8", "010, 10", "1B, 1", "7E, 8070450532247928832", "9223372036854775807, 9223372036854775807",
    "0x7fffffffffffffff, 9223372036854775807", "0.0000001E, 115292150461", "12.345M, 12944671"
  })
  void sizesAreParsedWithBinarySuffixesOfEitherCase(String text, long bytes) {
    assertThat(Sizes.parse("image size", text)).isEqualTo(bytes);
  }

  @ParameterizedTest
  @ValueSource(strings = {
    "", "abc", "12Q", "-5", "-0", "1.5", "16E", "8E", "8192P", "1 2M", "M", "5M ", ".5k", "1.5b", "1e3",
    "1.5e3", "0x", "0x1.5M", "0x-5", "00x10", "0x10M", "+-5", "5KB", "1KiB", "9223372036854775808",
    "0xfffffffffffffffff", "99999999999999999999999"
  })
  void badSizesAreRejectedNamingTheValue(String text) {
    assertThatThrownBy(() -> Sizes.parse("image size", text))
        .isInstanceOf(UserError.class)
        .hasMessageContaining("'" + text + "'");
  }

  @Test
  void leadingWhiteSpaceIsSkippedAsStrtoullSkipsIt() {
    assertThat(Sizes.parse("image size", " \t5M")).isEqualTo(5L << 20);
  }

  @Test
  void refusalsSayWhy() {
    assertThatThrownBy(() -> Sizes.parse("image size", "16E")).hasMessage(
        "invalid image size '16E': larger than 9223372036854775807 bytes");
    assertThatThrownBy(() -> Sizes.parse("image size", "1.5")).hasMessageContaining("a fraction needs a k, M, G");
    assertThatThrownBy(() -> Sizes.parse("image size", "-5")).hasMessageContaining("cannot be negative");
    assertThatThrownBy(() -> Sizes.parse("image size", "0x1.5M")).hasMessageContaining("hex size cannot have a fraction");
  }

  /**
   * qemu-img create judges each size: what it takes we take as the same number of bytes, what it
   * refuses we refuse. A suffix on a hex number is left out: qemu-img 7.2 takes it with a
   * deprecation warning, 8.1 and later refuse it, and so do we.
   */
  @Tag("interop")
  @ParameterizedTest(name = "qemu-img create ... {0}")
  @ValueSource(strings = {
    "0", "512", "64M", "64m", "1.5M", "0.1k", "1.k", "1.0", "10b", "0x100", "0X10", "0x1E", "+5M", "+0x10", "08",
    "010", " 5M", "1E", "7E", "9223372036854775807", "0x7fffffffffffffff", "0.0000001E", "12.345M", "0.3333k",
    "abc", "12Q", "-5", "-0", "1.5", "16E", "8E", "8192P", "1 2M", "M", "5M ", ".5k", "1.5b", "1e3", "1.5e3", "0x",
    "0x1.5M", "0x-5", "00x10", "+-5", "5KB", "1KiB", "9223372036854775808", "0xfffffffffffffffff", ""
  })
  void sizesParseAsQemuImgCreateParsesThem(String text, @TempDir Path dir) {
    // "--" so that "-5" is a size to qemu-img, not an option.
    QemuImg.Result q = QemuImg.img("create", "-f", "raw", dir.resolve("q.raw"), "--", text);
    Matcher formatted = Pattern.compile("size=(\\d+)").matcher(q.out());
    if (formatted.find()) {
      // qemu-img took the size (it may still fail to make a file that large).
      assertThat(Sizes.parse("image size", text)).as("qemu-img: %s", q.out()).isEqualTo(Long.parseLong(formatted.group(1)));
    } else {
      assertThat(q.err()).contains("Invalid image size specified");
      assertThatThrownBy(() -> Sizes.parse("image size", text)).isInstanceOf(UserError.class)
          .hasMessageContaining("'" + text + "'");
    }
  }

  @ParameterizedTest
  @CsvSource({
    "0, 0 B", "999, 999 B", "1000, 0.977 KiB", "4096, 4 KiB", "200704, 196 KiB", "67108864, 64 MiB",
    "1572864, 1.5 MiB", "2147483648, 2 GiB", "1073741824000, 0.977 TiB", "1048576000, 0.977 GiB"
  })
  void humanSizesReadLikeQemuImgs(long bytes, String text) {
    assertThat(Sizes.human(bytes)).isEqualTo(text);
  }

  @Test
  void sizesRoundUpToWholeSectors() {
    assertThat(Sizes.roundUpToSector(1000)).isEqualTo(1024);
    assertThat(Sizes.roundUpToSector(1024)).isEqualTo(1024);
    assertThat(Sizes.roundUpToSector(0)).isZero();
  }
}
