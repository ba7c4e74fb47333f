#!/usr/bin/env bash
# What a grant costs when the standby is asynchronous, synchronous (synchronous_commit=on) or remote_apply,
# measured side by side on one PostgreSQL primary + streaming standby pair (scripts/services postgres-pair), in
# one run. Per replication mode:
#   cycle   distrlock-bench --scenario cycle: try_acquire(30s) + release through the public API
#   extend  distrlock-bench --scenario extend: one extend(30s) of a held key
#   pgbench bench/library_protocol.pgbench under pgbench: the library's own acquire + release statements,
#           in sessions that take the server's synchronous_commit default
# The library opens its sessions with synchronous_commit=on whatever the server default is (a grant must be
# durable), and its release relaxes that to off for its own transaction. So under remote_apply, distrlock-bench
# still waits for the standby's flush only (as under on): the pgbench column is the one that shows remote_apply.
#
# Modes are interleaved (async, on, remote_apply, then again) for ROUNDS rounds, because the machine's weather
# changes within seconds; each figure is the median over the rounds, and the ratios are to async.
# fsync is turned on on both servers for the run (the pair runs with it off for speed) and restored at exit, as
# are synchronous_standby_names and synchronous_commit.
#
# Usage: bench/replication.sh
#   With DISTRLOCK_TEST_PG_PRIMARY and DISTRLOCK_TEST_PG_STANDBY set (eval "$(scripts/services start
#   postgres-pair)"), that pair is used; otherwise a private pair is started and removed at exit.
#   The runs write to a database of their own, distrlock_bench, created on the primary if missing.
# Environment (all optional):
#   SECONDS_PER_RUN=5  ROUNDS=3  CLIENTS=1
#   DISTRLOCK_BENCH    path to distrlock-bench (default: build/default/bench/distrlock-bench)
#   COMMIT             what to print as the commit (default: git rev-parse --short HEAD, plus a note of changes)
# Exit: 0 when every run succeeded, 2 on a failed run or setup, 64 on bad usage.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
services=$root/scripts/services

die() {
  echo "replication.sh: $*" >&2
  exit 2
}
[[ $# -eq 0 ]] || { echo "usage: bench/replication.sh   (see its header for the environment it reads)" >&2; exit 64; }
seconds=${SECONDS_PER_RUN:-5}
rounds=${ROUNDS:-3}
clients=${CLIENTS:-1}
for v in seconds rounds clients; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "replication.sh: ${v^^} must be a positive integer" >&2; exit 64; }
done
dl_bench=${DISTRLOCK_BENCH:-$root/build/default/bench/distrlock-bench}
[[ -x $dl_bench ]] || die "no distrlock-bench at $dl_bench (build the default preset, or set DISTRLOCK_BENCH)"
bindir=$(pg_config --bindir)
psql=$bindir/psql
pgbench=$bindir/pgbench
[[ -x $pgbench ]] || die "no pgbench at $pgbench"
commit=${COMMIT:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)}
if [[ -z ${COMMIT:-} ]] && ! git -C "$root" diff --quiet HEAD 2>/dev/null; then commit="$commit (with uncommitted changes)"; fi

out_dir=$(mktemp -d "${TMPDIR:-/tmp}/distrlock-replication.XXXXXX")
own_services=""
primary_admin=""
standby_admin=""
restore() {
  local rc=$?
  if [[ -n $primary_admin ]]; then
    "$psql" -X -q -d "$primary_admin" -c "ALTER SYSTEM RESET synchronous_standby_names" \
      -c "ALTER SYSTEM RESET synchronous_commit" -c "ALTER SYSTEM RESET fsync" -c "SELECT pg_reload_conf()" \
      >/dev/null 2>&1 || echo "replication.sh: could not restore the primary's settings" >&2
  fi
  if [[ -n $standby_admin ]]; then
    "$psql" -X -q -d "$standby_admin" -c "ALTER SYSTEM RESET fsync" -c "SELECT pg_reload_conf()" >/dev/null 2>&1 ||
      echo "replication.sh: could not restore the standby's settings" >&2
  fi
  if [[ -n $own_services ]]; then
    DISTRLOCK_SERVICES_DIR=$own_services "$services" stop postgres-pair >/dev/null 2>&1 || true
    rm -rf -- "$own_services"
  fi
  exit "$rc"
}
trap restore EXIT

if [[ -z ${DISTRLOCK_TEST_PG_PRIMARY:-} || -z ${DISTRLOCK_TEST_PG_STANDBY:-} ]]; then
  own_services=$(mktemp -d "${TMPDIR:-/tmp}/distrlock-replication-services.XXXXXX")
  chmod 755 "$own_services"
  line=$(DISTRLOCK_SERVICES_DIR=$own_services "$services" start postgres-pair) || die "could not start a pair"
  eval "$line"
fi
primary_admin=${DISTRLOCK_TEST_PG_PRIMARY%/*}/postgres
standby_admin=${DISTRLOCK_TEST_PG_STANDBY%/*}/postgres
bench_url=${DISTRLOCK_TEST_PG_PRIMARY%/*}/distrlock_bench

q() { "$psql" -X -A -t -q -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
[[ $(q "$standby_admin" 'SELECT pg_is_in_recovery()') == t ]] || die "$DISTRLOCK_TEST_PG_STANDBY is not a standby"
[[ $(q "$primary_admin" "SELECT count(*) FROM pg_database WHERE datname = 'distrlock_bench'") == 1 ]] ||
  q "$primary_admin" 'CREATE DATABASE distrlock_bench' >/dev/null
for url in "$primary_admin" "$standby_admin"; do
  q "$url" 'ALTER SYSTEM SET fsync = on' >/dev/null
  q "$url" 'SELECT pg_reload_conf()' >/dev/null
done

# set_mode MODE: configure the primary and wait until the standby is reported in that state.
set_mode() {
  local names commit_level state deadline
  case $1 in
    async) names="" commit_level=on state=async ;;
    on) names="*" commit_level=on state=sync ;;
    remote_apply) names="*" commit_level=remote_apply state=sync ;;
  esac
  q "$primary_admin" "ALTER SYSTEM SET synchronous_standby_names = '$names'" >/dev/null
  q "$primary_admin" "ALTER SYSTEM SET synchronous_commit = '$commit_level'" >/dev/null
  q "$primary_admin" 'SELECT pg_reload_conf()' >/dev/null
  deadline=$((SECONDS + 10))
  until [[ $(q "$primary_admin" "SELECT string_agg(sync_state, ',') FROM pg_stat_replication") == "$state" &&
           $(q "$bench_url" 'SHOW synchronous_commit') == "$commit_level" ]]; do
    ((SECONDS < deadline)) || die "the standby did not become $state under $1"
    sleep 0.1
  done
}

json_field() { # FILE FIELD: a number from distrlock-bench's JSON line
  grep -o "\"$2\":[0-9.]*" "$1" | head -n 1 | cut -d: -f2
}

modes=(async on remote_apply)
declare -A vals  # vals[mode,metric] = space-separated per-round values
add() { vals[$1,$2]="${vals[$1,$2]:-} $3"; }

"$dl_bench" --db "$bench_url" --scenario cycle --clients 1 --seconds 1 --json >/dev/null ||
  die "distrlock-bench failed on $bench_url"  # migrate() and a warm-up
echo "replication.sh: ${rounds} rounds x ${#modes[@]} modes x (cycle, extend, pgbench) x ${seconds}s, ${clients} client(s)" >&2
for ((r = 1; r <= rounds; r++)); do
  for mode in "${modes[@]}"; do
    set_mode "$mode"
    for scenario in cycle extend; do
      f=$out_dir/$r.$mode.$scenario.json
      "$dl_bench" --db "$bench_url" --scenario "$scenario" --clients "$clients" --seconds "$seconds" --json >"$f" ||
        die "distrlock-bench --scenario $scenario failed under $mode (see $f)"
      [[ $(json_field "$f" ops) -gt 0 ]] || die "distrlock-bench --scenario $scenario did nothing under $mode (see $f)"
      add "$mode" "$scenario.ops" "$(json_field "$f" ops_per_sec)"
      add "$mode" "$scenario.p50" "$(json_field "$f" p50)"
      add "$mode" "$scenario.p99" "$(json_field "$f" p99)"
    done
    f=$out_dir/$r.$mode.pgbench.log
    "$pgbench" -n -M prepared -D owner=pgbench -c "$clients" -j 1 -T "$seconds" -f "$here/library_protocol.pgbench" \
      "$bench_url" >"$f" 2>&1 || die "pgbench failed under $mode (see $f)"
    add "$mode" pgbench.tps "$(awk '/^tps = / {printf "%.1f", $3}' "$f")"
    add "$mode" pgbench.lat "$(awk -F' = ' '/^latency average/ {split($2, a, " "); printf "%.1f", a[1] * 1000}' "$f")"
    echo "replication.sh: round $r $mode: cycle $(json_field "$out_dir/$r.$mode.cycle.json" ops_per_sec)/s," \
      "extend $(json_field "$out_dir/$r.$mode.extend.json" ops_per_sec)/s, pgbench $(awk '/^tps = / {printf "%.1f", $3}' "$f") tps" >&2
  done
done

median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
declare -A med
for mode in "${modes[@]}"; do
  for m in cycle.ops cycle.p50 cycle.p99 extend.ops extend.p50 extend.p99 pgbench.tps pgbench.lat; do
    med[$mode,$m]=$(median "${vals[$mode,$m]}")
  done
done

cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
echo "machine: $(nproc) cores ($cpu), $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)," \
  "$(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r)"
echo "PostgreSQL $("$bindir/postgres" -V | awk '{print $3}'), primary and standby on 127.0.0.1, fsync on; commit $commit"
echo "${rounds} rounds, ${seconds}s per run, ${clients} client(s); medians over the rounds"
echo
printf '| %-12s | %12s | %9s | %9s | %12s | %9s | %9s | %12s | %10s |\n' mode "cycle ops/s" "p50 us" "p99 us" \
  "extend ops/s" "p50 us" "p99 us" "pgbench tps" "avg us"
printf '|%s|\n' "--------------|--------------|-----------|-----------|--------------|-----------|-----------|--------------|------------"
for mode in "${modes[@]}"; do
  printf '| %-12s | %12s | %9s | %9s | %12s | %9s | %9s | %12s | %10s |\n' "$mode" "${med[$mode,cycle.ops]}" \
    "${med[$mode,cycle.p50]}" "${med[$mode,cycle.p99]}" "${med[$mode,extend.ops]}" "${med[$mode,extend.p50]}" \
    "${med[$mode,extend.p99]}" "${med[$mode,pgbench.tps]}" "${med[$mode,pgbench.lat]}"
done
echo
echo "ratios to async (throughput: lower is slower; p50 latency: higher is slower)"
printf '| %-12s | %12s | %12s | %13s | %13s | %12s |\n' mode "cycle ops/s" "cycle p50" "extend ops/s" "extend p50" "pgbench tps"
printf '|%s|\n' "--------------|--------------|--------------|---------------|---------------|-------------"
for mode in on remote_apply; do
  printf '| %-12s | %12s | %12s | %13s | %13s | %12s |\n' "$mode" \
    "$(ratio "${med[$mode,cycle.ops]}" "${med[async,cycle.ops]}")" \
    "$(ratio "${med[$mode,cycle.p50]}" "${med[async,cycle.p50]}")" \
    "$(ratio "${med[$mode,extend.ops]}" "${med[async,extend.ops]}")" \
    "$(ratio "${med[$mode,extend.p50]}" "${med[async,extend.p50]}")" \
    "$(ratio "${med[$mode,pgbench.tps]}" "${med[async,pgbench.tps]}")"
done
echo "raw outputs: $out_dir" >&2
