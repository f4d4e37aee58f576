#!/usr/bin/env bash
# Times a full backup (blockdev-backup sync=full into a new qcow2) of a 2 GiB, 75%-full qcow2
# against `qemu-img convert -f qcow2 -O qcow2` of the same image, alternating the two, with the
# page-cache settle step before every timed run. Prints medians and the ratio ours/qemu-img
# (target: <= 1.0: a full backup takes no longer than qemu-img convert). JVM start-up counts in
# our whole-process time; the time inside the JVM is printed beside it.
#
# Ours is `bin/blockbackup backup SRC TARGET --sync full` once the CLI has that command, else
# dev.blockbackup.benchmarks.FullBackupMain from the benchmarks jar (the same job, in-JVM time on
# stderr). BACKUP_CMD=main forces the latter.
#
# Environment: RUNS (default 5), BENCH_DIR (default /var/tmp/blockbackup-bench: not /tmp, which may
# be a tmpfs), LAYOUT_SEED (default 1), SETTLE_MIB (default 3072, written to /dev/shm and deleted),
# MAX_WORKERS (FullBackupMain only: x-perf.max-workers, default the job's), JAVA_OPTS (JVM options
# for our side, e.g. -XX:TieredStopAtLevel=1: C2's compiler threads take a fifth of the CPU samples
# of a one-second copy on two cores).
set -euo pipefail
root="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
runs="${RUNS:-5}"
dir="${BENCH_DIR:-/var/tmp/blockbackup-bench}"
seed="${LAYOUT_SEED:-1}"
cli_jar="$root/cli/target/blockbackup.jar"
bench_jar="$root/benchmarks/target/benchmarks.jar"

for tool in qemu-img qemu-io python3; do
  command -v "$tool" >/dev/null || { echo "backup-vs-convert: $tool is needed (qemu-utils, python3)" >&2; exit 1; }
done
if [ ! -f "$cli_jar" ] || [ ! -f "$bench_jar" ]; then
  (cd "$root" && ./mvnw -B -q -DskipTests package)
fi
mkdir -p "$dir"
raw="$dir/src-seed$seed.raw"
src="$dir/src-seed$seed.qcow2"

# The test image is made once and kept (qemu-baselines.md "Test images"): the seeded raw layout of
# convert-vs-qemu.sh (regions of 64 KiB to 2 MiB: ~74.5% random data, ~10.4% zeros written as
# data, the rest never written), converted to qcow2 by qemu-img, which drops the zero-data
# regions; qemu-io then writes those again as data, so the qcow2 allocates them as the raw does.
if [ ! -f "$src" ]; then
  echo "making $src (once)..."
  python3 "$root/benchmarks/make-layout.py" "$raw.tmp" "$seed" "$dir/zero-regions-seed$seed"
  mv "$raw.tmp" "$raw"
  qemu-img convert -f raw -O qcow2 "$raw" "$src.tmp"
  args=()
  while IFS= read -r c; do args+=(-c "$c"); done < "$dir/zero-regions-seed$seed"
  qemu-io -f qcow2 "${args[@]}" "$src.tmp"
  qemu-img compare -q -f raw -F qcow2 "$raw" "$src.tmp"
  mv "$src.tmp" "$src"
  rm -f "$raw"
fi

# `backup --help` alone is no test: without the command, picocli prints the top-level help, exit 0.
if [ "${BACKUP_CMD:-}" != main ] && [ -f "$cli_jar" ] \
    && java -jar "$cli_jar" backup --help 2>&1 | grep '^Usage: blockbackup backup' >/dev/null; then
  # What users run: the launcher (its JVM options and class data sharing archive), with the target
  # unsynced as qemu-img convert's is (-t unsafe), and only the summary line printed.
  ours_kind="bin/blockbackup backup --sync full -t unsafe"
  ours=(env BLOCKBACKUP_JAVA_OPTS="${JAVA_OPTS:-}" "$root/bin/blockbackup" backup --sync full -t unsafe -q)
else
  ours_kind="FullBackupMain (the CLI has no backup command yet)"
  ours=(java ${JAVA_OPTS:-} -cp "$bench_jar" dev.blockbackup.benchmarks.FullBackupMain)
fi
echo "ours: $ours_kind${JAVA_OPTS:+ (JAVA_OPTS=$JAVA_OPTS)}"

# shellcheck source=lib.sh
source "$root/benchmarks/lib.sh"

qemu_out="$dir/convert.qcow2"
ours_out="$dir/backup.qcow2"
: > "$dir/qemu.times"
: > "$dir/ours.times"
: > "$dir/ours.jvm"
: > "$dir/ours.job"
: > "$dir/qemu.cpu"
: > "$dir/ours.cpu"

# CPU seconds (user + sys) of each run too (a command, not a shell function: /usr/bin/time runs it): on a shared machine they move less than elapsed time.
cpu() {
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f '%U %S' -o "$dir/cpu.tmp" "$@"
    awk '{printf "%.2f\n", $1 + $2}' "$dir/cpu.tmp" >> "$dir/$who.cpu"
  else
    "$@"
  fi
}

run_qemu() {
  rm -f "$qemu_out"; settle
  local t0 t1 who=qemu; t0=$(now)
  cpu qemu-img convert -f qcow2 -O qcow2 "$src" "$qemu_out"
  t1=$(now)
  elapsed "$t0" "$t1" >> "$dir/qemu.times"
}
run_ours() {
  rm -f "$ours_out"; settle
  local t0 t1 who=ours; t0=$(now)
  cpu "${ours[@]}" "$src" "$ours_out" ${MAX_WORKERS:+"$MAX_WORKERS"} > "$dir/ours.err" 2>&1
  t1=$(now)
  elapsed "$t0" "$t1" >> "$dir/ours.times"
  # FullBackupMain: "backup: 0.912 s (job 0.850 s) for 2048 MiB, ...": open to close, and the job.
  sed -n 's/^backup: \([0-9.]*\) s .*/\1/p' "$dir/ours.err" >> "$dir/ours.jvm"
  sed -n 's/^backup: .*(job \([0-9.]*\) s).*/\1/p' "$dir/ours.err" >> "$dir/ours.job"
  # The CLI's summary: "backup 'drive0': 2.0 GiB copied in 0.512 s (...)": the job, start to end.
  sed -n "s/^backup '[^']*': .* copied in \([0-9.]*\) s .*/\1/p" "$dir/ours.err" >> "$dir/ours.job"
}

# Untimed: the first run after a build writes the launcher's class data sharing archive.
rm -f "$ours_out"
"${ours[@]}" "$src" "$ours_out" > /dev/null 2>&1 || true

for i in $(seq 1 "$runs"); do
  # Alternate who goes first, so neither always meets the other's leftovers.
  if [ $((i % 2)) -eq 1 ]; then run_qemu; run_ours; else run_ours; run_qemu; fi
  printf 'run %d/%d: qemu-img convert %.3f s (cpu %s s), backup %.3f s (in JVM %s s, cpu %s s)\n' "$i" "$runs" \
    "$(tail -1 "$dir/qemu.times")" "$(tail -1 "$dir/qemu.cpu")" "$(tail -1 "$dir/ours.times")" \
    "$(tail -1 "$dir/ours.jvm")" "$(tail -1 "$dir/ours.cpu")"
done

check_outputs qcow2 "$src" "$qemu_out" "$ours_out"

startup=$(startup_median "$root/bin/blockbackup")
q=$(median < "$dir/qemu.times")
o=$(median < "$dir/ours.times")
j=$(median < "$dir/ours.jvm")
b=$(median < "$dir/ours.job")
printf '\n%-44s %s\n' "median of $runs runs (2 GiB qcow2 -> qcow2)" "seconds"
printf '%-44s %.3f\n' "qemu-img convert" "$q"
printf '%-44s %.3f\n' "backup sync=full (whole process)" "$o"
if [ "$j" != nan ]; then
  printf '%-44s %.3f\n' "backup sync=full (inside the JVM)" "$j"
fi
if [ "$b" != nan ]; then
  printf '%-44s %.3f\n' "backup sync=full (the job alone)" "$b"
fi
if [ -s "$dir/ours.cpu" ]; then
  qc=$(median < "$dir/qemu.cpu"); oc=$(median < "$dir/ours.cpu")
  printf '%-44s qemu-img %.2f, ours %.2f (ratio %s)\n' "CPU seconds, user + sys" "$qc" "$oc" "$(ratio "$oc" "$qc")"
fi
printf '%-44s %.3f\n' "JVM start-up (bin/blockbackup --version)" "$startup"
printf '%-44s %s  (target <= 1.0)\n' "ratio ours/qemu-img (whole process)" "$(ratio "$o" "$q")"
if [ "$j" != nan ]; then
  printf '%-44s %s\n' "ratio ours/qemu-img (inside the JVM)" "$(ratio "$j" "$q")"
fi
if [ "$b" != nan ]; then
  printf '%-44s %s\n' "ratio ours/qemu-img (the job alone)" "$(ratio "$b" "$q")"
fi
printf '%-44s qemu-img %s, ours %s (on disk: %s, %s)\n' "output file sizes" \
  "$(du -h --apparent-size "$qemu_out" | cut -f1)" "$(du -h --apparent-size "$ours_out" | cut -f1)" \
  "$(du -h "$qemu_out" | cut -f1)" "$(du -h "$ours_out" | cut -f1)"
