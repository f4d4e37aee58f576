package dev.blockbackup.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.ValueSource;

class CliSizesTest {

  @ParameterizedTest
  @CsvSource({
    "0, 0", "512, 512", "65536, 65536", "1k, 1024", "1K, 1024", "64M, 67108864", "64m, 67108864",
    "2G, 2147483648", "1t, 1099511627776", "1.5M, 1572864", "10b, 10", "0.5k, 512", "1E, 1152921504606846976"
  })
  void sizesAreParsedWithBinarySuffixesOfEitherCase(String text, long bytes) {
    assertThat(Sizes.parse("image size", text)).isEqualTo(bytes);
  }

  @ParameterizedTest
  @ValueSource(strings = {"", "abc", "12Q", "-5", "1.5", "0.1k", "16E", "1 2M", "M"})
  void badSizesAreRejectedNamingTheValue(String text) {
    assertThatThrownBy(() -> Sizes.parse("image size", text))
        .isInstanceOf(UserError.class)
        .hasMessageContaining("'" + text + "'");
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
