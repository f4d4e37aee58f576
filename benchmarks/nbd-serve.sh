#!/usr/bin/env bash
# Our NBD server against qemu-nbd and nbdkit's file plugin, each a whole process serving the same
# raw file over a Unix socket, in one run: for each round the three servers take turns (the order
# rotates every round), each started fresh, settled, then measured on
#   read-extents  nbdcopy of the whole export to null: (block status, then the data)
#   read-bytes    the same with --no-extents (every byte over the wire)
#   write         nbdcopy of a local file of random data to the export
#   randread      fio's nbd engine, 4 KiB random reads at iodepth 16, RUNTIME seconds
#   randwrite     the same with random writes
# and prints the medians and the ratios ours/nbdkit and ours/qemu-nbd (higher is better for us:
# MiB/s and IOPS). Ours is `bin/blockbackup serve`, built by ./mvnw -B -ntp -DskipTests package.
# qemu-nbd gets -e 16 (as many connections as nbdcopy opens) and --cache=writeback --aio=threads,
# its defaults spelled out; nbdkit its defaults (16 threads). Each server runs the copies with
# multi-conn as it advertises it. Each server gets WARMUP untimed passes (a whole read and a whole
# write each) and a fio write before it is measured.
#
# Environment: RUNS (default 3), SIZE_MIB (default 2048), RUNTIME (fio seconds, default 10), WARMUP
# (passes, default 3),
# BENCH_DIR (default /var/tmp/blockbackup-bench-nbd), SERVERS (default "ours qemu-nbd nbdkit"),
# SETTLE_MIB (lib.sh). Run it under `flock /tmp/bench.lock` on a shared machine.
set -euo pipefail
root="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
runs="${RUNS:-3}"
size_mib="${SIZE_MIB:-2048}"
runtime="${RUNTIME:-10}"
warmup="${WARMUP:-3}"
dir="${BENCH_DIR:-/var/tmp/blockbackup-bench-nbd}"
servers="${SERVERS:-ours qemu-nbd nbdkit}"
# shellcheck source=lib.sh
source "$root/benchmarks/lib.sh"

for tool in nbdcopy fio qemu-nbd nbdkit python3; do
  command -v "$tool" >/dev/null || { echo "nbd-serve: $tool is needed (apt-get install -y libnbd-bin fio qemu-utils nbdkit)" >&2; exit 1; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "nbd-serve: this fio has no nbd engine" >&2; exit 1; }
[ -f "$root/cli/target/blockbackup.jar" ] || { echo "nbd-serve: run ./mvnw -B -ntp -DskipTests package first" >&2; exit 1; }
mkdir -p "$dir"
img="$dir/disk.raw"
src="$dir/src.raw"
sock="$dir/nbd.sock"
uri="nbd+unix:///disk?socket=$sock"
for f in "$img" "$src"; do
  if [ ! -f "$f" ] || [ "$(stat -c %s "$f")" != $((size_mib << 20)) ]; then
    echo "making $f ($size_mib MiB of random data, once)..."
    python3 - "$f.tmp" "$size_mib" "$f" <<'PY'
import random, sys
r = random.Random(sys.argv[3])
with open(sys.argv[1], "wb") as out:
    for _ in range(int(sys.argv[2])):
        out.write(r.randbytes(1 << 20))
PY
    mv "$f.tmp" "$f"
  fi
done

pid=
start_server() {
  rm -f "$sock"
  case "$1" in
    ours) "$root/bin/blockbackup" serve "$img" --nbd "unix:$sock" >"$dir/ours.log" 2>&1 & ;;
    qemu-nbd) qemu-nbd -f raw -x disk -k "$sock" -e 16 -t --cache=writeback --aio=threads "$img" >"$dir/qemu-nbd.log" 2>&1 & ;;
    nbdkit) nbdkit -f -U "$sock" file "$img" >"$dir/nbdkit.log" 2>&1 & ;;
  esac
  pid=$!
  for _ in $(seq 200); do
    if [ -S "$sock" ] && nbdinfo --size "$uri" >/dev/null 2>&1; then
      return
    fi
    sleep 0.05
  done
  echo "nbd-serve: $1 did not start; its log:" >&2
  cat "$dir/$1.log" >&2
  exit 1
}
stop_server() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
trap stop_server EXIT

mibps() { awk -v mib="$size_mib" -v s="$1" 'BEGIN {printf "%.1f", mib / s}'; }
timed() {
  local t0 t1
  t0=$(now)
  "$@" >/dev/null
  t1=$(now)
  elapsed "$t0" "$t1"
}
fio_iops() {
  fio --name=nbd --ioengine=nbd --uri="$uri" --rw="$1" --bs=4k --iodepth=16 --runtime="$runtime" \
    --time_based --randrepeat=0 --output-format=terse --terse-version=3 \
    | awk -F';' -v rw="$1" '$1 == "3" {print (rw == "randread") ? $8 : $49}'
}

metrics="read-extents read-bytes write randread randwrite"
results="$dir/results.txt"
: >"$results"
set -- $servers
for run in $(seq "$runs"); do
  # rotate who goes first
  order=("$@")
  shift_by=$(( (run - 1) % ${#order[@]} ))
  order=("${order[@]:shift_by}" "${order[@]:0:shift_by}")
  for s in "${order[@]}"; do
    start_server "$s"
    # untimed passes first, the same for every server: a long-running server is measured warm
    # (our JIT compiles its hot paths over the first few GiB; C servers need no warm-up)
    for _ in $(seq "$warmup"); do
      nbdcopy "$uri" null: >/dev/null
      nbdcopy "$src" "$uri" >/dev/null
    done
    fio_iops randwrite >/dev/null
    settle
    echo "$s read-extents $(mibps "$(timed nbdcopy "$uri" null:)")" >>"$results"
    echo "$s read-bytes $(mibps "$(timed nbdcopy --no-extents "$uri" null:)")" >>"$results"
    echo "$s write $(mibps "$(timed nbdcopy "$src" "$uri")")" >>"$results"
    echo "$s randread $(fio_iops randread)" >>"$results"
    echo "$s randwrite $(fio_iops randwrite)" >>"$results"
    stop_server
    echo "run $run: $s done"
  done
done

med() { awk -v s="$1" -v m="$2" '$1 == s && $2 == m {print $3}' "$results" | median; }
printf '\n%-13s %10s %10s %10s %12s %14s   (%s runs, %s MiB, MiB/s or IOPS)\n' metric ours qemu-nbd nbdkit \
  ours/nbdkit ours/qemu-nbd "$runs" "$size_mib"
for m in $metrics; do
  o=$(med ours "$m"); q=$(med qemu-nbd "$m"); k=$(med nbdkit "$m")
  printf '%-13s %10s %10s %10s %12s %14s\n' "$m" "$o" "$q" "$k" "$(ratio "$o" "$k")" "$(ratio "$o" "$q")"
done
