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
# up for WARMUP seconds with fio random 4 KiB writes to a scratch export with a sync=full and then a
# sync=none job of its own (see the main's Javadoc), settles, then starts the measured job. The first run of each sync=full case checks
# that the target equals the source as it was before the writes (qemu-img compare).
#
# With qemu-storage-daemon installed (Debian qemu-system-x86) QEMU 7.2 runs beside ours, alternating
# who goes first, set up as in qemu-baselines.md section 2 (see one_qemu); QEMU=0 skips it.
#
# Environment: RUNS (default 3), FORMATS (default "raw qcow2"), BENCH_DIR (default
# /var/tmp/blockbackup-bench-cbw, where CbwGuestWriteBenchmark keeps cbw-src-2048m.{raw,qcow2}:
# random data in every cluster; made here the same way if missing), WARMUP (seconds, default 10:
# with 3 s the C2 compiler still took a quarter of the CPU samples of the measured replay),
# JAVA_OPTS, SETTLE_MIB (lib.sh). Run it under `flock /tmp/bench.lock` on a shared machine.
set -euo pipefail
root="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
runs="${RUNS:-3}"
formats="${FORMATS:-raw qcow2}"
dir="${BENCH_DIR:-/var/tmp/blockbackup-bench-cbw}"
warmup="${WARMUP:-10}"
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
  if [ -f "$work/qsd.pid" ]; then kill "$(cat "$work/qsd.pid")" 2>/dev/null || true; fi
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
  # settle after the warm-up, right before the measured writes, as QEMU's runs get it: settled
  # before a 10 s warm-up, the freed memory went back to the host meanwhile and the target's fresh
  # page cache paid host page faults (sync=none ran at a third of its rate, with 15-30 ms p99)
  settle
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

# QEMU beside ours (QEMU=0 skips it): qemu-storage-daemon set up as qemu-baselines.md section 2,
# export first, then blockdev-backup, so its filter goes above the node the export uses. No
# warm-up (native code), default cache options (writeback), as the reference.
qemu="${QEMU:-1}"
if [ "$qemu" = 1 ] && ! command -v qemu-storage-daemon >/dev/null; then
  echo "cbw-nbd: qemu-storage-daemon not found (Debian qemu-system-x86): QEMU's side is skipped" >&2
  qemu=0
fi
qmp="$work/qmp.py"
cat > "$qmp" <<'PY'
# qmp.py SOCKET ARG...: each ARG is a QMP command as JSON (its "return" is checked), or "wait-jobs"
# (poll query-jobs until no job is left), or "cancel-wait" (block-job-cancel j0, then wait-jobs).
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX)
for _ in range(200):
    try:
        s.connect(sys.argv[1]); break
    except OSError:
        time.sleep(0.05)
f = s.makefile("rw")
def cmd(c):
    f.write(json.dumps(c) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r: return r["return"]
        if "error" in r: sys.exit("qmp: %s: %s" % (c, r["error"]))
json.loads(f.readline())
cmd({"execute": "qmp_capabilities"})
def wait_jobs():
    t0 = time.time()
    while cmd({"execute": "query-jobs"}):
        if time.time() - t0 > 600: sys.exit("qmp: jobs still there after 600 s")
        time.sleep(0.05)
for a in sys.argv[2:]:
    if a == "wait-jobs": wait_jobs()
    elif a == "cancel-wait":
        cmd({"execute": "block-job-cancel", "arguments": {"device": "j0"}}); wait_jobs()
    else: cmd(json.loads(a))
PY

one_qemu() { # FORMAT SYNC RUN
  local fmt=$1 sync=$2 run=$3 src="$dir/cbw-src-2048m.$1" guest="$work/guest.$1" target="$work/target.qcow2"
  local out="$work/fio.json" qsock="$work/qmp.sock" pidf="$work/qsd.pid" t0 t1 jobinfo=""
  rm -f "$guest" "$target" "$sock" "$qsock" "$pidf"
  if [ "$fmt" = qcow2 ]; then cp --sparse=never "$src" "$guest"; else cp "$src" "$guest"; fi
  [ "$sync" = nojob ] || qemu-img create -q -f qcow2 "$target" 2147483648
  settle
  qemu-storage-daemon --chardev socket,id=m0,path="$qsock",server=on,wait=off --monitor chardev=m0 \
    --nbd-server addr.type=unix,addr.path="$sock" --daemonize --pidfile "$pidf"
  local add_dst='{"execute":"blockdev-add","arguments":{"node-name":"dst","driver":"qcow2","file":{"driver":"file","filename":"'"$target"'"}}}'
  # sync=none: the target's backing is the source node (fleecing), as ours
  [ "$sync" = none ] && add_dst='{"execute":"blockdev-add","arguments":{"node-name":"dst","driver":"qcow2","backing":"src","file":{"driver":"file","filename":"'"$target"'"}}}'
  python3 "$qmp" "$qsock" \
    '{"execute":"blockdev-add","arguments":{"node-name":"src","driver":"'"$fmt"'","file":{"driver":"file","filename":"'"$guest"'"}}}' \
    '{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","node-name":"src","name":"export","writable":true}}'
  if [ "$sync" != nojob ]; then
    t0=$(now)
    python3 "$qmp" "$qsock" "$add_dst" \
      '{"execute":"blockdev-backup","arguments":{"job-id":"j0","device":"src","target":"dst","sync":"'"$sync"'"}}'
  fi
  fio --name=guest --ioengine=nbd --uri="nbd+unix:///export?socket=$sock" --read_iolog="$iolog" --replay_no_stall=1 \
    --iodepth=16 --output-format=json > "$out" 2> "$work/fio.err" || { cat "$work/fio.err" >&2; exit 1; }
  case "$sync" in
    none) python3 "$qmp" "$qsock" cancel-wait ;;
    full) python3 "$qmp" "$qsock" wait-jobs; t1=$(now); jobinfo="job sync=full: $(elapsed "$t0" "$t1") s (start to gone, QMP polled)" ;;
  esac
  python3 "$qmp" "$qsock" '{"execute":"quit"}' 2>/dev/null || true
  for _ in $(seq 100); do [ -f "$pidf" ] || break; sleep 0.1; done
  if [ "$sync" = full ] && [ "$run" = 1 ]; then
    if qemu-img compare -q -f qcow2 -F "$fmt" "$target" "$src"; then
      jobinfo="$jobinfo check: sync=full target equals the source as it was before the writes"
    else
      echo "cbw-nbd: QEMU's sync=full target differs from the source" >&2; exit 1
    fi
  fi
  read -r w mean p99 n < <(iops "$out")
  printf '%-5s %-5s run %d: %6d writes/s  clat mean %5d us  p99 %6d us  (%d writes)  QEMU %s\n' "$fmt" "$sync" "$run" \
    "$w" "$mean" "$p99" "$n" "$jobinfo"
  echo "$w" >> "$work/qemu.$fmt.$sync"
  rm -f "$guest" "$target"
}

echo "cbw-nbd: $(date -u '+%F %T') UTC, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $(java -version 2>&1 | head -1), $(fio --version), RUNS=$runs, WARMUP=${warmup}s${JAVA_OPTS:+, JAVA_OPTS=$JAVA_OPTS}"
for fmt in $formats; do
  rm -f "$work/$fmt".{nojob,none,full} "$work/qemu.$fmt".{nojob,none,full}
done
for run in $(seq "$runs"); do
  if [ $((run % 2)) = 1 ]; then order="nojob none full"; else order="full none nojob"; fi
  for fmt in $formats; do
    for sync in $order; do
      # ours and QEMU's one after the other, who goes first alternating with the run
      if [ "$qemu" = 1 ] && [ $((run % 2)) = 0 ]; then one_qemu "$fmt" "$sync" "$run"; fi
      one "$fmt" "$sync" "$run"
      if [ "$qemu" = 1 ] && [ $((run % 2)) = 1 ]; then one_qemu "$fmt" "$sync" "$run"; fi
    done
  done
done

echo
echo "medians of $runs runs, writer IOPS (fio nbd, 4k, iodepth 16, 16384 first writes to distinct clusters):"
printf '%-14s %8s %8s %8s %10s %10s\n' server/format "no job" none full none/nojob full/nojob
for fmt in $formats; do
  for who in ours qemu; do
    p="$work/$fmt"; [ "$who" = qemu ] && p="$work/qemu.$fmt"
    [ -f "$p.nojob" ] || continue
    a=$(median < "$p.nojob"); b=$(median < "$p.none"); c=$(median < "$p.full")
    printf '%-14s %8.0f %8.0f %8.0f %10s %10s\n' "$who $fmt" "$a" "$b" "$c" "$(ratio "$b" "$a")" "$(ratio "$c" "$a")"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
