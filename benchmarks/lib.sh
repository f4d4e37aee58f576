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
