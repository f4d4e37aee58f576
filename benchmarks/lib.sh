# Shared by the comparison scripts in this directory: page-cache settling, timing and medians.
# Source it; it defines functions only.

settle() {
  # This VM hands freed memory back to its host: fill and free page cache before timing, then idle.
  sync
  sleep 3
  dd if=/dev/zero of=/dev/shm/bb-settle bs=1M count="${SETTLE_MIB:-3072}" status=none
  rm -f /dev/shm/bb-settle
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.6f\n", b - a}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) print "nan"; else print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# check_outputs SRC_FMT SRC QEMU_OUT OURS_OUT: both qcow2 outputs equal the source and each other,
# and ours passes qemu-img check; exits the script otherwise.
check_outputs() {
  echo "checking the outputs..."
  qemu-img compare -f "$1" -F qcow2 "$2" "$4"
  qemu-img compare -f qcow2 -F qcow2 "$3" "$4"
  if qemu-img check -q "$4"; then
    echo "qemu-img check: clean"
  else
    echo "qemu-img check: our output is NOT clean" >&2
    exit 1
  fi
}

# startup_median LAUNCHER: median of 5 runs of "LAUNCHER --version", in seconds.
startup_median() {
  for _ in 1 2 3 4 5; do
    local t0 t1
    t0=$(now)
    "$1" --version >/dev/null 2>&1 || true
    t1=$(now)
    elapsed "$t0" "$t1"
  done | median
}
