#!/usr/bin/env bash
# Cost in proportion to the data, not the virtual size: times `qemu-img convert -f qcow2 -O qcow2`
# against `blockbackup convert` and `blockbackup backup --sync full` (both into a new qcow2) of
#   - an empty 8 TiB qcow2 with 4 KiB clusters (4 Mi L1 entries, nothing allocated), and
#   - a 2 PiB qcow2 with 64 KiB clusters (qcow2's largest at that cluster size) holding 1 MiB of
#     data in two places,
# alternating the three, with the page-cache settle step before every timed run. Whole process
# against whole process: ours runs through bin/blockbackup, so JVM start-up counts. Prints the
# medians and the ratios ours/qemu-img (target: <= 2.0), checks every output with qemu-img compare
# and qemu-img check, and prints the outputs' sizes on disk (they must stay sparse). A command that
# refuses an image says so instead of a time.
#
# Environment: RUNS (default 3), BENCH_DIR (default /var/tmp/blockbackup-bench: not /tmp, which may
# be a tmpfs), SETTLE_MIB (default 3072, written to /dev/shm and deleted), IMAGES (default
# "empty-8t big-2p": which of the two to run).
set -euo pipefail
root="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
runs="${RUNS:-3}"
dir="${BENCH_DIR:-/var/tmp/blockbackup-bench}"
images="${IMAGES:-empty-8t big-2p}"
jar="$root/cli/target/blockbackup.jar"
ours="$root/bin/blockbackup"

for tool in qemu-img qemu-io; do
  command -v "$tool" >/dev/null || { echo "scale-vs-qemu: $tool is needed (apt-get install qemu-utils)" >&2; exit 1; }
done
if [ ! -f "$jar" ]; then
  (cd "$root" && ./mvnw -B -q -DskipTests package)
fi
mkdir -p "$dir"

# shellcheck source=lib.sh
source "$root/benchmarks/lib.sh"

make_image() {
  local name="$1" src="$dir/$1.qcow2"
  if [ -f "$src" ]; then
    return
  fi
  echo "making $src (once)..."
  case "$name" in
    empty-8t) qemu-img create -q -f qcow2 -o cluster_size=4096 "$src.tmp" 8T ;;
    big-2p)
      qemu-img create -q -f qcow2 -o cluster_size=65536 "$src.tmp" 2P
      qemu-io -f qcow2 -c "write -P 0x5a 1T 512k" -c "write -P 0xa5 1P 512k" "$src.tmp" >/dev/null ;;
    *) echo "scale-vs-qemu: unknown image '$name'" >&2; exit 1 ;;
  esac
  mv "$src.tmp" "$src"
}

# timed WHO NAME COMMAND...: runs COMMAND after the settle step; appends its seconds to
# $dir/NAME.WHO.times, or "refused" and its first stderr line to $dir/NAME.WHO.refused.
timed() {
  local who="$1" name="$2"; shift 2
  settle
  local t0 t1 rc=0; t0=$(now)
  "$@" > "$dir/$name.$who.out" 2> "$dir/$name.$who.err" || rc=$?
  t1=$(now)
  if [ "$rc" -eq 0 ]; then
    elapsed "$t0" "$t1" >> "$dir/$name.$who.times"
  else
    printf 'exit %d after %.3f s: %s\n' "$rc" "$(elapsed "$t0" "$t1")" "$(head -1 "$dir/$name.$who.err")" \
      > "$dir/$name.$who.refused"
  fi
}

run_qemu() { rm -f "$dir/$1.qemu.qcow2"; timed qemu "$1" qemu-img convert -f qcow2 -O qcow2 "$dir/$1.qcow2" "$dir/$1.qemu.qcow2"; }
run_convert() { rm -f "$dir/$1.convert.qcow2"; timed convert "$1" "$ours" convert -f qcow2 -O qcow2 "$dir/$1.qcow2" "$dir/$1.convert.qcow2"; }
run_backup() {
  rm -f "$dir/$1.backup.qcow2"
  timed backup "$1" "$ours" backup --sync full -t unsafe -q -f qcow2 "$dir/$1.qcow2" "$dir/$1.backup.qcow2"
}

result() {
  local name="$1" who="$2"
  if [ -s "$dir/$name.$who.refused" ]; then
    echo "refused ($(cat "$dir/$name.$who.refused"))"
  else
    median < "$dir/$name.$who.times"
  fi
}

# Untimed: the first run after a build writes the launcher's class data sharing archive.
"$ours" --version > /dev/null

for name in $images; do
  make_image "$name"
  for who in qemu convert backup; do
    : > "$dir/$name.$who.times"
    rm -f "$dir/$name.$who.refused"
  done
  for i in $(seq 1 "$runs"); do
    # Rotate who goes first, so no one always meets the others' leftovers.
    case $((i % 3)) in
      1) run_qemu "$name"; run_convert "$name"; run_backup "$name" ;;
      2) run_convert "$name"; run_backup "$name"; run_qemu "$name" ;;
      0) run_backup "$name"; run_qemu "$name"; run_convert "$name" ;;
    esac
    printf '%s run %d/%d: qemu-img %s s, convert %s s, backup %s s\n' "$name" "$i" "$runs" \
      "$(tail -1 "$dir/$name.qemu.times" 2>/dev/null || true)" "$(tail -1 "$dir/$name.convert.times" 2>/dev/null || true)" \
      "$(tail -1 "$dir/$name.backup.times" 2>/dev/null || true)"
  done
  echo "checking the outputs of $name..."
  for who in convert backup; do
    out="$dir/$name.$who.qcow2"
    if [ -s "$dir/$name.$who.refused" ] || [ ! -f "$out" ]; then
      continue
    fi
    qemu-img compare -q -f qcow2 -F qcow2 "$dir/$name.qcow2" "$out" || { echo "$who output differs from the source" >&2; exit 1; }
    qemu-img check -q "$out" || { echo "$who output is NOT clean (qemu-img check)" >&2; exit 1; }
  done
done

startup=$(startup_median "$ours")
for name in $images; do
  q=$(result "$name" qemu)
  printf '\n%-48s %s\n' "$name: median of $runs runs" "seconds"
  printf '%-48s %s\n' "qemu-img convert -O qcow2" "$q"
  for who in convert backup; do
    o=$(result "$name" "$who")
    label="blockbackup $who"; [ "$who" = backup ] && label="blockbackup backup --sync full"
    if [[ "$o" == refused* ]] || [[ "$q" == refused* ]]; then
      printf '%-48s %s\n' "$label (whole process)" "$o"
    else
      printf '%-48s %s  (ratio %s, target <= 2.0)\n' "$label (whole process)" "$o" "$(ratio "$o" "$q")"
    fi
  done
  printf '%-48s' "output sizes on disk"
  for who in qemu convert backup; do
    f="$dir/$name.$who.qcow2"
    [ -f "$f" ] && printf ' %s %s (apparent %s);' "$who" "$(du -h "$f" | cut -f1)" "$(du -h --apparent-size "$f" | cut -f1)"
  done
  echo
done
printf '\n%-48s %.3f\n' "JVM start-up (bin/blockbackup --version)" "$startup"
