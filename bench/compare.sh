#!/usr/bin/env bash
# Side-by-side lock-cycle throughput on one PostgreSQL server, in one run:
#   original  bench/baselines/original_protocol_pg.pgbench under pgbench (the protocol to beat)
#   library   bench/library_protocol.pgbench under pgbench (distrlock's own two statements: the ceiling)
#   distrlock distrlock-bench --scenario cycle (the library itself, through its public API)
#   floor     with FLOOR=1 only: bench/floor_two_updates.pgbench, two bare single-row UPDATE transactions
#             per cycle: what any acquire-transaction + release-transaction protocol cannot beat here
# each at 1 client (pgbench -c 1) and at 8 clients (pgbench -c 8 -j 2), then the ratios
# distrlock / original (target >= 2.00) and distrlock / library (target >= 0.90).
#
# Noise: on a small machine shared with other work (compilers, test servers calling fsync) throughput swings
# several-fold within seconds, so contiguous 10-second runs one after the other compare different weather.
# Each contender's SECONDS_PER_RUN is therefore cut into slices of SLICE seconds, run interleaved
# (original, library, distrlock, then the reverse order, ...), and its throughput is its total cycles over
# its total measured time. That is one round; ROUNDS rounds are run, each is printed, and the verdict per
# client count is the median of the per-round ratios. SLICE=SECONDS_PER_RUN gives plain -T 10 runs.
#
# Usage: bench/compare.sh URL
#   URL: postgresql://... of a database this script may write to (it creates "original_locks" and, through
#   distrlock-bench's migrate(), "distributed_locks"). Use a database of its own, e.g. .../bench.
# Environment (all optional):
#   SECONDS_PER_RUN=10  SLICE=2  ROUNDS=3  CLIENTS="1 8"  KEYS=100000
#   FLOOR=0             1 adds the floor contender and its columns in the second table
#   PREPOPULATE=1       create every key of every client up front, so all three measure the steady state of
#                       a lock table (rows reused, never new); 0 leaves first use of a key to the run itself
#   DISTRLOCK_BENCH     path to distrlock-bench (default: build/default/bench/distrlock-bench)
#   BASELINE            path to original_protocol_pg.pgbench (default: bench/baselines/original_protocol_pg.pgbench)
#   OUT_DIR             where raw outputs go (default: a new directory under ${TMPDIR:-/tmp})
#   COMMIT              what to print as the commit (default: git rev-parse --short HEAD of this checkout,
#                       plus a note of uncommitted changes); set it when DISTRLOCK_BENCH was built elsewhere
# Exit: 0 when every ratio meets its target, 1 when some does not, 2 on a failed run, 64 on bad usage.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

usage() {
  echo "usage: bench/compare.sh URL   (see the header of this script for the environment it reads)" >&2
  exit 64
}
[[ $# -eq 1 && -n $1 && $1 != -* ]] || usage
url=$1

seconds=${SECONDS_PER_RUN:-10}
slice=${SLICE:-2}
rounds=${ROUNDS:-3}
clients_list=${CLIENTS:-"1 8"}
keys=${KEYS:-100000}
prepopulate=${PREPOPULATE:-1}
floor=${FLOOR:-0}
dl_bench=${DISTRLOCK_BENCH:-$root/build/default/bench/distrlock-bench}
baseline=${BASELINE:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/baselines/original_protocol_pg.pgbench}
library_script=$here/library_protocol.pgbench
floor_script=$here/floor_two_updates.pgbench
bindir=$(pg_config --bindir)
pgbench=$bindir/pgbench
psql=$bindir/psql

die() {
  echo "compare.sh: $*" >&2
  exit 2
}
for v in seconds slice rounds keys; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: ${v^^} must be a positive integer" >&2; exit 64; }
done
((seconds % slice == 0)) || { echo "compare.sh: SECONDS_PER_RUN must be a multiple of SLICE" >&2; exit 64; }
slices=$((seconds / slice))
if [[ $floor == 1 && $prepopulate != 1 ]]; then
  echo "compare.sh: FLOOR=1 needs PREPOPULATE=1 (the floor updates existing rows only)" >&2
  exit 64
fi
max_clients=0
for c in $clients_list; do
  [[ $c =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: CLIENTS must list positive integers" >&2; exit 64; }
  if ((c > max_clients)); then max_clients=$c; fi
done
[[ -x $dl_bench ]] || die "no distrlock-bench at $dl_bench (build with -DDISTRLOCK_BUILD_BENCH=ON, or set DISTRLOCK_BENCH)"
[[ -x $pgbench ]] || die "no pgbench at $pgbench"
[[ -r $baseline ]] || die "cannot read the baseline $baseline"
if ((keys != 100000)); then
  echo "compare.sh: note: both pgbench scripts use 100000 keys; KEYS=$keys only changes distrlock-bench" >&2
fi
out_dir=${OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/distrlock-compare.XXXXXX")}
mkdir -p "$out_dir"

sql() { "$psql" -X -q -v ON_ERROR_STOP=1 -At "$url" "$@"; }

# ---- the machine, the server, the code --------------------------------------------------------------------
{
  echo "date:       $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine:    $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')," \
    "$(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
  echo "server:     PostgreSQL $(sql -c 'SHOW server_version'), fsync=$(sql -c 'SHOW fsync')," \
    "synchronous_commit=$(sql -c 'SHOW synchronous_commit'), wal_sync_method=$(sql -c 'SHOW wal_sync_method')"
  if [[ -n ${COMMIT:-} ]]; then
    echo "commit:     $COMMIT"
  elif git -C "$root" rev-parse --short HEAD >/dev/null 2>&1; then
    commit=$(git -C "$root" rev-parse --short HEAD)
    if [[ -n $(git -C "$root" status --porcelain -- src include CMakeLists.txt) ]]; then
      commit+=" + uncommitted library changes"
    fi
    if [[ -n $(git -C "$root" status --porcelain -- bench) ]]; then commit+=" + uncommitted bench"; fi
    echo "commit:     $commit"
  fi
  echo "settings:   ${seconds}s per contender per round as ${slices} interleaved slices of ${slice}s," \
    "rounds=$rounds, clients=[$clients_list], keys=$keys, prepopulate=$prepopulate"
  echo "load:       $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) before the runs"
  echo "raw output: $out_dir"
} | tee "$out_dir/summary.txt"

# ---- schema and key space ---------------------------------------------------------------------------------
# The baseline's own table, as its header gives it; the library's table comes from distrlock-bench's migrate().
sql -c 'CREATE TABLE IF NOT EXISTS "original_locks" (lock_key varchar(40) PRIMARY KEY, token uuid, expire_at timestamp)'
"$dl_bench" --db "$url" --scenario cycle --clients 1 --seconds 1 --keys "$keys" --json >"$out_dir/warmup.json" \
  2>"$out_dir/warmup.err" || die "distrlock-bench warm-up failed: $(tail -n1 "$out_dir/warmup.err")"
if [[ $prepopulate == 1 ]]; then
  # Free rows, shaped as a release leaves them, for every key any client of any run can pick.
  sql -c "INSERT INTO \"original_locks\" (lock_key) SELECT 'k' || i FROM generate_series(1, 100000) i
          ON CONFLICT DO NOTHING" \
    -c "INSERT INTO \"distributed_locks\" (key, token, fence, expires, owner)
          SELECT convert_to(k, 'UTF8'), NULL, 0, clock_timestamp(), NULL
          FROM generate_series(0, $max_clients - 1) c, generate_series(0, 99999) i,
               LATERAL (VALUES ((c * 1000000 + i)::text)) AS v(k)
          ON CONFLICT DO NOTHING" \
    -c "INSERT INTO \"distributed_locks\" (key, token, fence, expires, owner)
          SELECT convert_to('bench/' || c || '/' || i, 'UTF8'), NULL, 0, clock_timestamp(), NULL
          FROM generate_series(0, $max_clients - 1) c, generate_series(0, $keys - 1) i
          ON CONFLICT DO NOTHING" \
    -c 'VACUUM ANALYZE "original_locks"' -c 'VACUUM ANALYZE "distributed_locks"'
fi
sql -c 'CHECKPOINT' # so that no run starts with a checkpoint's worth of dirty pages owed

# ---- the runs ---------------------------------------------------------------------------------------------
# result[round,clients,who] = "cycles seconds": summed over the slices of that round.
declare -A result
# Other work shows up as pressure stall time: the share of the last 10 s in which some task waited for I/O.
# Its highest value seen during a round is printed beside it, so that noisy rounds stand out.
io_pressure() {
  if [[ -r /proc/pressure/io ]]; then awk '/^some/ {split($2, a, "="); print a[2]}' /proc/pressure/io; else echo 0; fi
}
note_pressure() { # round clients
  local p
  p=$(io_pressure)
  result[$1,$2,psi]=$(awk -v a="${result[$1,$2,psi]:-0}" -v b="$p" 'BEGIN { print (b > a ? b : a) }')
}
add_result() { # round clients who cycles seconds
  result[$1,$2,$3]=$(awk -v prev="${result[$1,$2,$3]:-0 0}" -v n="$4" -v s="$5" \
    'BEGIN { split(prev, p, " "); printf "%d %.6f", p[1] + n, p[2] + s }')
}
run_pgbench() { # who script clients round slice
  local who=$1 script=$2 c=$3 r=$4 s=$5
  local log="$out_dir/r$r-c$c-s$s-$who.txt"
  local -a args=(-n -M prepared -T "$slice" -c "$c" -j "$((c < 2 ? 1 : 2))" -f "$script")
  if [[ $who == library ]]; then args+=(-D owner=pgbench); fi
  if ! "$pgbench" "${args[@]}" "$url" >"$log" 2>&1; then die "pgbench $who -c $c failed: see $log"; fi
  local failed tps n
  failed=$(awk -F': ' '/number of failed transactions/ {split($2, a, " "); print a[1]}' "$log")
  [[ -z $failed || $failed == 0 ]] || die "pgbench $who -c $c had $failed failed transactions: see $log"
  tps=$(awk '/^tps = / {print $3}' "$log")
  n=$(awk -F': ' '/number of transactions actually processed/ {split($2, a, "/"); print a[1]}' "$log")
  [[ -n $tps && -n $n ]] || die "no tps in $log"
  # pgbench's tps excludes connection set-up, so n / tps is the measured time.
  add_result "$r" "$c" "$who" "$n" "$(awk -v n="$n" -v t="$tps" 'BEGIN { print (t > 0 ? n / t : 0) }')"
}
run_distrlock() { # clients round slice
  local c=$1 r=$2 s=$3
  local log="$out_dir/r$r-c$c-s$s-distrlock.json"
  if ! "$dl_bench" --db "$url" --scenario cycle --clients "$c" --seconds "$slice" --keys "$keys" --json \
    >"$log" 2>"$log.err"; then
    die "distrlock-bench -c $c failed: $(tail -n1 "$log.err")"
  fi
  local line n t
  line=$(tail -n1 "$log")
  n=$(grep -o '"ops":[0-9]*' <<<"$line" | cut -d: -f2)
  t=$(grep -o '"elapsed_s":[0-9.]*' <<<"$line" | cut -d: -f2)
  [[ -n $n && -n $t ]] || die "no ops or elapsed_s in $log"
  add_result "$r" "$c" distrlock "$n" "$t"
}

for ((r = 1; r <= rounds; ++r)); do
  for c in $clients_list; do
    echo "round $r, $c client(s): $slices x ${slice}s each, interleaved ..." >&2
    for ((s = 1; s <= slices; ++s)); do
      # Alternate the order, so that no contender always runs right after (or before) the same neighbour.
      if (((r + s) % 2 == 0)); then order="original library distrlock"; else order="distrlock library original"; fi
      if [[ $floor == 1 ]]; then order+=" floor"; fi
      for who in $order; do
        case $who in
          original) run_pgbench original "$baseline" "$c" "$r" "$s" ;;
          library) run_pgbench library "$library_script" "$c" "$r" "$s" ;;
          floor) run_pgbench floor "$floor_script" "$c" "$r" "$s" ;;
          distrlock) run_distrlock "$c" "$r" "$s" ;;
        esac
        note_pressure "$r" "$c"
      done
    done
  done
done

# ---- the table --------------------------------------------------------------------------------------------
rate() { awk -v x="$1" 'BEGIN { split(x, p, " "); printf "%.1f", (p[2] > 0 ? p[1] / p[2] : 0) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
meets() { awk -v x="$1" -v t="$2" 'BEGIN { exit !(x >= t) }'; }
verdict() { if meets "$1" "$2"; then echo ok; else echo MISS; fi; }
median() {
  printf '%s\n' "$@" | sort -g |
    awk '{ v[NR] = $1 } END { printf "%.2f", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
mean() { printf '%s\n' "$@" | awk '{ s += $1 } END { printf "%.1f", s / NR }'; }
row() { printf '%-7s %-8s %12s %12s %12s %9s %-4s %9s %-4s %7s\n' "$@"; }
all_met=1
{ # a group, not a pipeline: all_met must survive it
  echo "load:       $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) after the runs"
  echo
  row round clients original/s library/s distrlock/s "dl/orig" "" "dl/lib" "" "io-psi"
  row "" "" "(pgbench)" "(pgbench)" "(bench)" "(>=2.00)" "" "(>=0.90)" "" "(max %)"
  for c in $clients_list; do
    os=() ls=() ds=() ros=() rls=()
    for ((r = 1; r <= rounds; ++r)); do
      o=$(rate "${result[$r,$c,original]}") l=$(rate "${result[$r,$c,library]}") d=$(rate "${result[$r,$c,distrlock]}")
      ro=$(ratio "$d" "$o") rl=$(ratio "$d" "$l")
      os+=("$o") ls+=("$l") ds+=("$d") ros+=("$ro") rls+=("$rl")
      row "$r" "$c" "$o" "$l" "$d" "$ro" "$(verdict "$ro" 2.00)" "$rl" "$(verdict "$rl" 0.90)" "${result[$r,$c,psi]}"
    done
    # The verdict per client count is on the median of the per-round ratios: one noisy round cannot decide it.
    ro=$(median "${ros[@]}") rl=$(median "${rls[@]}")
    mo=$(verdict "$ro" 2.00) ml=$(verdict "$rl" 0.90)
    if [[ $mo != ok || $ml != ok ]]; then all_met=0; fi
    row mean "$c" "$(mean "${os[@]}")" "$(mean "${ls[@]}")" "$(mean "${ds[@]}")" "" "" "" "" ""
    row median "$c" "" "" "" "$ro" "$mo" "$rl" "$ml" ""
  done
  echo
  # Where the protocol itself stands, whatever the client: the library's statements and the floor, both
  # under pgbench, against the original.
  row2() { printf '%-7s %-8s %16s %12s %14s\n' "$@"; }
  row2 round clients "library/original" "floor/s" "floor/original"
  row2 "" "" "(both pgbench)" "(pgbench)" "(ceiling for 2x)"
  for c in $clients_list; do
    lo_all=() fo_all=()
    for ((r = 1; r <= rounds; ++r)); do
      o=$(rate "${result[$r,$c,original]}") l=$(rate "${result[$r,$c,library]}")
      lo=$(ratio "$l" "$o") f=- fo=-
      if [[ $floor == 1 ]]; then
        f=$(rate "${result[$r,$c,floor]}") fo=$(ratio "$f" "$o")
        fo_all+=("$fo")
      fi
      lo_all+=("$lo")
      row2 "$r" "$c" "$lo" "$f" "$fo"
    done
    fo=-
    if [[ $floor == 1 ]]; then fo=$(median "${fo_all[@]}"); fi
    row2 median "$c" "$(median "${lo_all[@]}")" "" "$fo"
  done
  echo
  if ((all_met)); then
    echo "targets: all met (median of per-round ratios)"
  else
    echo "targets: NOT all met (MISS above; median of per-round ratios)"
  fi
} >"$out_dir/table.txt"
tee -a "$out_dir/summary.txt" <"$out_dir/table.txt"
((all_met)) || exit 1
