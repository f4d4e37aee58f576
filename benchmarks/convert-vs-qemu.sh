#!/usr/bin/env bash
# Times `qemu-img convert -f raw -O qcow2` against `blockbackup convert -f raw -O qcow2` on the same
# 2 GiB raw image with a seeded layout (qemu-baselines.md "Test images"), alternating the two, with
# the page-cache settle step before every timed run. Prints medians and the ratio ours/qemu
# (target: <= 0.8). About 15% of the image is holes, which neither tool reads: both see them
# through lseek SEEK_DATA/SEEK_HOLE (ours through JNA, RawImage's SparseFile). Ours runs through bin/blockbackup, the launcher users run, so JVM start-up
# (with the launcher's options and class data sharing archive) counts in our time; the copy alone
# is printed beside it.
#
# Environment: RUNS (default 5), BENCH_DIR (default /var/tmp/blockbackup-bench: not /tmp, which may
# be a tmpfs), LAYOUT_SEED (default 1), SETTLE_MIB (default 3072, written to /dev/shm and deleted).
set -euo pipefail
root="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
runs="${RUNS:-5}"
dir="${BENCH_DIR:-/var/tmp/blockbackup-bench}"
seed="${LAYOUT_SEED:-1}"
jar="$root/cli/target/blockbackup.jar"
ours="$root/bin/blockbackup"

command -v qemu-img >/dev/null || { echo "convert-vs-qemu: qemu-img is needed (apt-get install qemu-utils)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "convert-vs-qemu: python3 is needed to make the test image" >&2; exit 1; }
if [ ! -f "$jar" ]; then
  (cd "$root" && ./mvnw -B -q -DskipTests package)
fi
mkdir -p "$dir"
src="$dir/src-seed$seed.raw"

# The test image is made once and kept: 2 GiB in regions of 64 KiB to 2 MiB, ~74.5% random data
# (unique bytes), ~10.4% zeros written as data (allocated: only a content scan finds them), the
# rest never written (holes).
if [ ! -f "$src" ]; then
  echo "making $src (once)..."
  python3 "$root/benchmarks/make-layout.py" "$src.tmp" "$seed"
  mv "$src.tmp" "$src"
fi

# shellcheck source=lib.sh
source "$root/benchmarks/lib.sh"

qemu_out="$dir/qemu.qcow2"
ours_out="$dir/ours.qcow2"
: > "$dir/qemu.times"
: > "$dir/ours.times"
: > "$dir/ours.copy"

run_qemu() {
  rm -f "$qemu_out"; settle
  local t0 t1; t0=$(now)
  qemu-img convert -f raw -O qcow2 "$src" "$qemu_out"
  t1=$(now)
  elapsed "$t0" "$t1" >> "$dir/qemu.times"
}
run_ours() {
  rm -f "$ours_out"; settle
  local t0 t1; t0=$(now)
  "$ours" convert --timing -f raw -O qcow2 "$src" "$ours_out" 2> "$dir/ours.err"
  t1=$(now)
  elapsed "$t0" "$t1" >> "$dir/ours.times"
  # "convert: 0.512 s (copy 0.501 s) for ...": the whole command inside the JVM, and the copy.
  sed -n 's/^convert: \([0-9.]*\) s .*/\1/p' "$dir/ours.err" >> "$dir/ours.copy"
}

# Untimed: the first run after a build writes the launcher's class data sharing archive.
rm -f "$ours_out"
"$ours" convert -f raw -O qcow2 "$src" "$ours_out"

for i in $(seq 1 "$runs"); do
  # Alternate who goes first, so neither always meets the other's leftovers.
  if [ $((i % 2)) -eq 1 ]; then run_qemu; run_ours; else run_ours; run_qemu; fi
  printf 'run %d/%d: qemu-img %.3f s, blockbackup %.3f s (in JVM %.3f s)\n' "$i" "$runs" \
    "$(tail -1 "$dir/qemu.times")" "$(tail -1 "$dir/ours.times")" "$(tail -1 "$dir/ours.copy")"
done

check_outputs raw "$src" "$qemu_out" "$ours_out"

startup=$(startup_median "$ours")
q=$(median < "$dir/qemu.times")
o=$(median < "$dir/ours.times")
c=$(median < "$dir/ours.copy")
printf '\n%-44s %s\n' "median of $runs runs (2 GiB raw -> qcow2)" "seconds"
printf '%-44s %.3f\n' "qemu-img convert" "$q"
printf '%-44s %.3f\n' "blockbackup convert (whole process)" "$o"
printf '%-44s %.3f\n' "blockbackup convert (inside the JVM)" "$c"
printf '%-44s %.3f\n' "JVM start-up (bin/blockbackup --version)" "$startup"
printf '%-44s %s  (target <= 0.8)\n' "ratio ours/qemu (whole process)" "$(ratio "$o" "$q")"
printf '%-44s %s\n' "ratio ours/qemu (inside the JVM)" "$(ratio "$c" "$q")"
printf '%-44s qemu %s, ours %s\n' "output file sizes" "$(du -h --apparent-size "$qemu_out" | cut -f1)" \
  "$(du -h --apparent-size "$ours_out" | cut -f1)"
