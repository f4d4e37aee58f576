#!/usr/bin/env bash
# What copy-before-write costs a guest writing through our NBD server, measured as QEMU's
# reference was (qemu-baselines.md section 2): fio's nbd engine over a Unix socket replays an iolog
# of 16384 4 KiB writes, each at a random 4 KiB slot of a distinct random 64 KiB cluster of the
# 2 GiB source (every write is the first to its cluster: CBW's worst case), at iodepth 16, padded
# with 32 reads because fio 3.33 drops the tail of a replayed log. For each format (raw, qcow2):
# no job, sync=none (fleecing target with the source as backing file) and sync=full (fresh qcow2,
# no speed limit), in alternating order, RUNS times, each after the settle step; prints the
# writer's IOPS medians and the ratios none/no-job and full/no-job.
#
# The server is dev.blockbackup.benchmarks.NbdCbwServerMain from benchmarks/target/benchmarks.jar
# (this script builds nothing: ./mvnw -B -ntp -DskipTests package first), on a fresh copy of the
# source per run, run with plain JVM defaults plus JAVA_OPTS. Before each measured replay it warms
# up for WARMUP seconds with fio random 4 KiB writes to a scratch export with its own sync=none job
# (see the main's Javadoc), then starts the measured job. The first run of each sync=full case checks
# that the target equals the source as it was before the writes (qemu-img compare).
#
# Environment: RUNS (default 3), FORMATS (default "raw qcow2"), BENCH_DIR (default
# /var/tmp/blockbackup-bench-cbw, where CbwGuestWriteBenchmark keeps cbw-src-2048m.{raw,qcow2}:
# random data in every cluster; made here the same way if missing), WARMUP (seconds, default 3),
# JAVA_OPTS, SETTLE_MIB (lib.sh). Run it under `flock /tmp/bench.lock` on a shared machine.
set -euo pipefail
root="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
runs="${RUNS:-3}"
formats="${FORMATS:-raw qcow2}"
dir="${BENCH_DIR:-/var/tmp/blockbackup-bench-cbw}"
warmup="${WARMUP:-3}"
jar="$root/benchmarks/target/benchmarks.jar"
# shellcheck source=lib.sh
source "$root/benchmarks/lib.sh"

for tool in fio qemu-img python3 java; do
  command -v "$tool" >/dev/null || { echo "cbw-nbd: $tool is needed (apt-get install -y fio qemu-utils)" >&2; exit 1; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "cbw-nbd: this fio has no nbd engine" >&2; exit 1; }
[ -f "$jar" ] || { echo "cbw-nbd: $jar is missing: run ./mvnw -B -ntp -DskipTests package first" >&2; exit 1; }
mkdir -p "$dir"
work="$dir/nbd-run"
mkdir -p "$work"
sock="$work/nbd.sock"

# The sources, made as CbwGuestWriteBenchmark makes them if it has not run here yet: seeded random
# data in every 1 MiB, through a temporary name.
for fmt in $formats; do
  src="$dir/cbw-src-2048m.$fmt"
  if [ ! -f "$src" ]; then
    echo "making $src (once)..."
    python3 - "$work/src.raw.tmp" <<'PY'
import random, sys
r = random.Random(1)
with open(sys.argv[1], "wb") as f:
    for _ in range(2048):
        f.write(r.randbytes(1 << 20))
PY
    if [ "$fmt" = qcow2 ]; then
      qemu-img convert -f raw -O qcow2 -o cluster_size=65536 "$work/src.raw.tmp" "$src.tmp"
      rm -f "$work/src.raw.tmp"
    else
      mv "$work/src.raw.tmp" "$src.tmp"
    fi
    mv "$src.tmp" "$src"
  fi
done

# The iolog (seed 1): 16384 distinct clusters of the 32768, a random 4 KiB slot in each; 32 reads pad it.
iolog="$work/iolog"
python3 - "$iolog" <<'PY'
import random, sys
r = random.Random(1)
clusters = r.sample(range((2048 << 20) // 65536), 16384)
with open(sys.argv[1], "w") as f:
    f.write("fio version 2 iolog\nnbd add\nnbd open\n")
    for c in clusters:
        f.write("nbd write %d 4096\n" % (c * 65536 + r.randrange(16) * 4096))
    for i in range(32):
        f.write("nbd read %d 4096\n" % (i * 4096))
    f.write("nbd close\n")
PY

server_pid=
cleanup() {
  exec 8>&- 2>/dev/null || true
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then kill "$server_pid"; fi
}
trap cleanup EXIT

wait_for() { # LINE LOG: wait up to 120 s for LINE in LOG while the server lives
  for _ in $(seq 1200); do
    grep -qx "$1" "$2" && return 0
    kill -0 "$server_pid" 2>/dev/null || { echo "cbw-nbd: the server died:" >&2; cat "$2" >&2; exit 1; }
    sleep 0.1
  done
  echo "cbw-nbd: no '$1' from the server in 120 s" >&2; exit 1
}

iops() { # fio JSON (after fio's "connected" line) -> write IOPS, clat mean us, clat p99 us, writes done
  python3 - "$1" <<'PY'
import json, sys
s = open(sys.argv[1]).read()
j = json.JSONDecoder().raw_decode(s[s.index("{"):])[0]["jobs"][0]["write"]
print("%.0f %.0f %.0f %d" % (j["iops"], j["clat_ns"]["mean"] / 1000, j["clat_ns"]["percentile"]["99.000000"] / 1000, j["total_ios"]))
PY
}

one() { # FORMAT SYNC RUN
  local fmt=$1 sync=$2 run=$3 src="$dir/cbw-src-2048m.$1" guest="$work/guest.$1" target="$work/target.qcow2"
  local args=() log="$work/server.log" out="$work/fio.json"
  rm -f "$guest" "$target" "$sock" "$work/ctl"
  if [ "$fmt" = qcow2 ]; then cp --sparse=never "$src" "$guest"; else cp "$src" "$guest"; fi
  [ "$sync" = nojob ] || args=("$target")
  if [ "$sync" = full ] && [ "$run" = 1 ]; then args+=("$src"); fi
  settle
  mkfifo "$work/ctl"
  # shellcheck disable=SC2086 # JAVA_OPTS is split on purpose
  java ${JAVA_OPTS:-} -cp "$jar" dev.blockbackup.benchmarks.NbdCbwServerMain "$fmt" "$guest" "$sock" "$sync" "${args[@]}" \
    < "$work/ctl" > "$log" 2>&1 &
  server_pid=$!
  exec 8> "$work/ctl"
  wait_for warmup "$log"
  if [ "$warmup" != 0 ]; then
    fio --name=warmup --ioengine=nbd --uri="nbd+unix:///warmup?socket=$sock" --rw=randwrite --bs=4k --iodepth=16 \
      --runtime="$warmup" --time_based --randrepeat=0 --output=/dev/null >/dev/null 2>&1
  fi
  echo go >&8
  wait_for ready "$log"
  fio --name=guest --ioengine=nbd --uri="nbd+unix:///export?socket=$sock" --read_iolog="$iolog" --replay_no_stall=1 \
    --iodepth=16 --output-format=json > "$out" 2> "$work/fio.err" || { cat "$work/fio.err" >&2; exit 1; }
  exec 8>&-
  local rc=0
  wait "$server_pid" || rc=$?
  server_pid=
  read -r w mean p99 n < <(iops "$out")
  printf '%-5s %-5s run %d: %6d writes/s  clat mean %5d us  p99 %6d us  (%d writes)  %s\n' "$fmt" "$sync" "$run" \
    "$w" "$mean" "$p99" "$n" "$(grep -E '^(job|check)' "$log" | tr '\n' ' ')"
  [ "$rc" = 0 ] || { echo "cbw-nbd: the server failed (exit $rc):" >&2; cat "$log" >&2; exit 1; }
  [ "$n" = 16384 ] || echo "cbw-nbd: warning: fio completed $n writes, not 16384" >&2
  echo "$w" >> "$work/$fmt.$sync"
  rm -f "$guest" "$target" "$work/ctl"
}

echo "cbw-nbd: $(date -u '+%F %T') UTC, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $(java -version 2>&1 | head -1), $(fio --version), RUNS=$runs, WARMUP=${warmup}s${JAVA_OPTS:+, JAVA_OPTS=$JAVA_OPTS}"
for fmt in $formats; do
  rm -f "$work/$fmt.nojob" "$work/$fmt.none" "$work/$fmt.full"
done
for run in $(seq "$runs"); do
  if [ $((run % 2)) = 1 ]; then order="nojob none full"; else order="full none nojob"; fi
  for fmt in $formats; do
    for sync in $order; do
      one "$fmt" "$sync" "$run"
    done
  done
done

echo
echo "medians of $runs runs, writer IOPS (fio nbd, 4k, iodepth 16, 16384 first writes to distinct clusters):"
printf '%-6s %8s %8s %8s %10s %10s\n' format "no job" none full none/nojob full/nojob
for fmt in $formats; do
  a=$(median < "$work/$fmt.nojob"); b=$(median < "$work/$fmt.none"); c=$(median < "$work/$fmt.full")
  printf '%-6s %8.0f %8.0f %8.0f %10s %10s\n' "$fmt" "$a" "$b" "$c" "$(ratio "$b" "$a")" "$(ratio "$c" "$a")"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
