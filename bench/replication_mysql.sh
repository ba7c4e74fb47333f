#!/usr/bin/env bash
# What semi-synchronous replication costs a lock cycle on MariaDB, against asynchronous replication, side by
# side in one run (issue 12).
#
# Starts its own MariaDB primary + GTID replica (scripts/services' mariadb-pair, in a private services dir,
# removed at exit) and runs `distrlock-bench --scenario cycle` (uncontended try_acquire + release: two
# commits per cycle) against the primary, in two modes:
#   async     the replica replicates asynchronously (MariaDB's default): a commit waits for nothing but the
#             primary's own redo log and binlog fsyncs
#   semisync  rpl_semi_sync_master_enabled=ON, rpl_semi_sync_master_wait_point=AFTER_SYNC, a timeout too long
#             to fall back to asynchronous, and the replica's rpl_semi_sync_slave_enabled=ON: every commit also
#             waits for the replica to acknowledge that its binlog events reached its relay log
# at 1 and at 8 clients. Each round runs both modes back to back, in an order that alternates between rounds;
# the verdict per client count is the median of the per-round ratios semisync/async. Both servers share this
# machine (and its disk): the replica's relay-log writes and acknowledgements compete with the primary.
#
# Usage: bench/replication_mysql.sh
# Environment (all optional):
#   SECONDS_PER_RUN=10  ROUNDS=3  KEYS=500 (keys per client)  CLIENTS="1 8"
#   DISTRLOCK_BENCH     path to distrlock-bench (default: build/default/bench/distrlock-bench)
#   OUT_DIR             where raw outputs go (default: a new directory under ${TMPDIR:-/tmp})
#   COMMIT              what to print as the commit (default: git rev-parse --short HEAD of this checkout)
# Exit: 0 on a complete run, 2 on a failed one, 64 on bad usage.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

[[ $# -eq 0 ]] || { echo "usage: bench/replication_mysql.sh   (see its header for the environment it reads)" >&2; exit 64; }
seconds=${SECONDS_PER_RUN:-10}
rounds=${ROUNDS:-3}
keys=${KEYS:-500}
read -r -a client_counts <<<"${CLIENTS:-1 8}"
dl_bench=${DISTRLOCK_BENCH:-$root/build/default/bench/distrlock-bench}
services=$root/scripts/services

die() {
  echo "replication_mysql.sh: $*" >&2
  exit 2
}
for v in seconds rounds keys; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "replication_mysql.sh: ${v^^} must be a positive integer" >&2; exit 64; }
done
[[ -x $dl_bench ]] || die "no distrlock-bench at $dl_bench (build with -DDISTRLOCK_BUILD_BENCH=ON, or set DISTRLOCK_BENCH)"
command -v jq >/dev/null || die "needs jq"

out_dir=${OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/distrlock-replication-mysql.XXXXXX")}
mkdir -p "$out_dir"
services_dir=$(mktemp -d "${TMPDIR:-/tmp}/distrlock-replication-services.XXXXXX")
chmod 755 "$services_dir"
export DISTRLOCK_SERVICES_DIR=$services_dir
cleanup() {
  "$services" stop mariadb-pair 2>/dev/null || true
  rm -rf -- "$services_dir"
}
trap cleanup EXIT

env_line=$("$services" start mariadb-pair 2>"$out_dir/services.log") || { cat "$out_dir/services.log" >&2; die "could not start mariadb-pair"; }
eval "$env_line"
primary=$DISTRLOCK_TEST_MYSQL_PRIMARY
replica=$DISTRLOCK_TEST_MYSQL_REPLICA
port_of() { sed -E 's#.*:([0-9]+)/.*#\1#' <<<"$1"; }
sql() { # URL SQL
  mariadb --no-defaults --protocol=tcp -h 127.0.0.1 -P "$(port_of "$1")" -u root -N -B -e "$2"
}
status_of() { # VARIABLE: a global status value of the primary
  sql "$primary" "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = '$1'"
}

set_mode() { # async | semisync
  if [[ $1 == semisync ]]; then
    sql "$primary" "SET GLOBAL rpl_semi_sync_master_wait_point = AFTER_SYNC, GLOBAL rpl_semi_sync_master_wait_no_slave = ON,
                    GLOBAL rpl_semi_sync_master_timeout = 4294967295, GLOBAL rpl_semi_sync_master_enabled = ON"
    sql "$replica" "SET GLOBAL rpl_semi_sync_slave_enabled = ON; STOP SLAVE IO_THREAD; START SLAVE IO_THREAD"
    local i
    for ((i = 0; i < 100; i++)); do
      [[ $(status_of RPL_SEMI_SYNC_MASTER_CLIENTS) == 1 ]] && return 0
      sleep 0.1
    done
    die "the replica did not connect as a semi-synchronous replica"
  else
    sql "$primary" "SET GLOBAL rpl_semi_sync_master_enabled = OFF"
    sql "$replica" "SET GLOBAL rpl_semi_sync_slave_enabled = OFF; STOP SLAVE IO_THREAD; START SLAVE IO_THREAD"
  fi
}

commit=${COMMIT:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)}
{
  echo "replication_mysql.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit"
  echo "  machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "  server: $(sql "$primary" 'SELECT VERSION()'), primary $primary, replica $replica (same machine)"
  echo "  distrlock-bench --scenario cycle --seconds $seconds --keys $keys, $rounds rounds, raw output in $out_dir"
} >&2

sql "$primary" "SELECT 1" >/dev/null
"$dl_bench" --db "$primary" --scenario cycle --clients 1 --seconds 1 --keys "$keys" --json >/dev/null ||
  die "distrlock-bench failed against the primary"  # creates the table, warms the server

declare -A ops p50 ratio
for ((round = 1; round <= rounds; round++)); do
  if ((round % 2)); then order=(async semisync); else order=(semisync async); fi
  for clients in "${client_counts[@]}"; do
    for mode in "${order[@]}"; do
      set_mode "$mode"
      yes0=$(status_of RPL_SEMI_SYNC_MASTER_YES_TX) no0=$(status_of RPL_SEMI_SYNC_MASTER_NO_TX)
      out="$out_dir/r$round-c$clients-$mode.json"
      "$dl_bench" --db "$primary" --scenario cycle --clients "$clients" --seconds "$seconds" --keys "$keys" --json \
        >"$out" || die "distrlock-bench failed ($mode, $clients clients)"
      yes1=$(status_of RPL_SEMI_SYNC_MASTER_YES_TX) no1=$(status_of RPL_SEMI_SYNC_MASTER_NO_TX)
      errors=$(jq -r .errors "$out")
      [[ $errors == 0 ]] || die "distrlock-bench reported $errors errors ($mode, $clients clients): $out"
      ops[$round,$clients,$mode]=$(jq -r .ops_per_sec "$out")
      p50[$round,$clients,$mode]=$(jq -r .latency_us.p50 "$out")
      if [[ $mode == semisync && $((no1 - no0)) -ne 0 ]]; then
        die "$((no1 - no0)) commits went out without the replica's acknowledgement during the semisync run"
      fi
      printf '  round %d, %d client(s), %-8s %9.1f cycles/s, p50 %7.1f us, semi-sync acknowledged commits %d\n' \
        "$round" "$clients" "$mode" "${ops[$round,$clients,$mode]}" "${p50[$round,$clients,$mode]}" \
        $((yes1 - yes0)) >&2
    done
    ratio[$round,$clients]=$(awk -v a="${ops[$round,$clients,semisync]}" -v b="${ops[$round,$clients,async]}" \
      'BEGIN { printf "%.2f", a / b }')
  done
done

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
echo "| clients | async cycles/s | semisync cycles/s | async p50 µs | semisync p50 µs | semisync / async (median) |"
echo "|---|---|---|---|---|---|"
for clients in "${client_counts[@]}"; do
  a="" s="" pa="" ps="" rs=""
  for ((round = 1; round <= rounds; round++)); do
    a+="${a:+ / }${ops[$round,$clients,async]}"
    s+="${s:+ / }${ops[$round,$clients,semisync]}"
    pa+="${pa:+ / }${p50[$round,$clients,async]}"
    ps+="${ps:+ / }${p50[$round,$clients,semisync]}"
    rs+="${rs:+, }${ratio[$round,$clients]}"
  done
  med=$(for ((round = 1; round <= rounds; round++)); do echo "${ratio[$round,$clients]}"; done | median)
  echo "| $clients | $a | $s | $pa | $ps | **$med** ($rs) |"
done
