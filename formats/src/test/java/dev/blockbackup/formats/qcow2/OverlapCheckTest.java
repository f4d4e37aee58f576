package dev.blockbackup.formats.qcow2;

import static org.assertj.core.api.Assertions.assertThat;

import dev.blockbackup.formats.qcow2.OverlapCheck.Hit;
import dev.blockbackup.formats.qcow2.OverlapCheck.Kind;
import org.junit.jupiter.api.Test;

class OverlapCheckTest {

  private static final int CS = 65536;

  private final OverlapCheck check = new OverlapCheck("img", CS);

  @Test
  void aWriteTouchingAnyByteOfARegionHitsIt() {
    check.add(Kind.ACTIVE_L2, 4 * CS, CS);
    assertThat(check.find(4 * CS + CS - 1, 1, null)).isEqualTo(new Hit(Kind.ACTIVE_L2, 4 * CS, 5 * CS));
    assertThat(check.find(3 * CS, CS + 1, null)).isNotNull();
    assertThat(check.find(3 * CS, CS, null)).isNull();
    assertThat(check.find(5 * CS, 16 * CS, null)).isNull();
    assertThat(check.find(0, 16 * CS, null)).isNotNull();
  }

  @Test
  void theWritersOwnKindIsIgnoredButNoOther() {
    check.add(Kind.ACTIVE_L2, 4 * CS, CS);
    check.add(Kind.REFCOUNT_BLOCK, 4 * CS, CS); // a broken image may put both in one cluster
    assertThat(check.find(4 * CS, 8, Kind.ACTIVE_L2).kind()).isEqualTo(Kind.REFCOUNT_BLOCK);
    assertThat(check.find(4 * CS, 8, Kind.REFCOUNT_BLOCK).kind()).isEqualTo(Kind.ACTIVE_L2);
  }

  @Test
  void largeRegionsAreFoundFromAnyOfTheirClusters() {
    check.add(Kind.REFCOUNT_TABLE, CS, 128L * CS);
    check.add(Kind.ACTIVE_L1, 200L * CS, 8);
    assertThat(check.find(100L * CS, 512, null).kind()).isEqualTo(Kind.REFCOUNT_TABLE);
    assertThat(check.find(100L * CS, 512, Kind.REFCOUNT_TABLE)).isNull();
    assertThat(check.find(200L * CS + 8, 8, null)).isNull();
    assertThat(check.find(200L * CS + 4, 8, null).kind()).isEqualTo(Kind.ACTIVE_L1);
  }

  @Test
  void aRemovedRegionIsFreeAgainUnlessAnotherTableStillClaimsIt() {
    check.add(Kind.ACTIVE_L2, 4 * CS, CS);
    check.add(Kind.ACTIVE_L2, 4 * CS, CS);
    check.remove(Kind.ACTIVE_L2, 4 * CS, CS);
    assertThat(check.find(4 * CS, CS, null)).isNotNull();
    check.remove(Kind.ACTIVE_L2, 4 * CS, CS);
    assertThat(check.find(4 * CS, CS, null)).isNull();
  }

  @Test
  void offsetZeroMeansNoTableExceptForTheHeader() {
    check.add(Kind.ACTIVE_L2, 0, CS); // an unused L1 entry
    assertThat(check.find(0, 512, null)).isNull();
    check.add(Kind.HEADER, 0, CS);
    assertThat(check.find(0, 512, null).kind()).isEqualTo(Kind.HEADER);
    assertThat(check.message(check.find(0, 512, null), 0, 512))
        .isEqualTo("img: Preventing invalid write on metadata (overlaps with qcow2_header [0x0, 0x10000)):"
            + " write of 512 bytes at 0x0; image marked as corrupt");
  }
}
