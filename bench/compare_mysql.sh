#!/usr/bin/env bash
# Side-by-side lock-cycle throughput on one MySQL/MariaDB server, in one run:
#   original  bench/baselines/original_protocol_mysql.sh: the Go package's protocol (INSERT IGNORE, then
#             acquire and release each as BEGIN/UPDATE/COMMIT, one statement per round trip), replayed by the
#             `mariadb` command-line client, 2,000 cycles per connection (the protocol to beat)
#   library   distrlock's own two packets per cycle (the acquire upsert + holder SELECT, then the release
#             UPDATE), replayed by the same `mariadb` client with the same cycle count: the protocol alone,
#             with the client held equal
#   distrlock distrlock-bench --scenario cycle: the library itself, through its public API
#   floor     two autocommit UPDATEs of one row per cycle, replayed by the same `mariadb` client: the cheapest
#             cycle that commits twice, as every lock protocol must (a grant and a release are each durable),
#             so floor/original is the most any protocol can gain over the original on this server
# each at 1 and at 8 connections/clients, then the ratios distrlock/original (target >= 2.00),
# library/original and floor/original.
#
# The baseline is a fixed amount of work, not a timed run, so the contenders cannot be sliced as
# bench/compare.sh does for PostgreSQL. Instead each round runs all of them back to back, in an order that
# alternates between rounds, and the verdict per client count is the median of the per-round ratios.
#
# Usage: bench/compare_mysql.sh URL
#   URL: mysql://user[:password]@host:port/database[?returning=off] (or mariadb://) of a database this script may
#   write to (returning=off: the library's and the replayed acquire without INSERT ... RETURNING, as on MySQL 8). It
#   creates the database `original_baseline` (the baseline's own) and, through distrlock-bench's migrate(),
#   `distributed_locks` in URL's database. Use a server of its own: the figures mean nothing on a busy one.
# Environment (all optional):
#   SECONDS_PER_RUN=10  ROUNDS=3  KEYS=500 (distrlock-bench keys per client; the baseline uses 500 per connection)
#   DISTRLOCK_BENCH     path to distrlock-bench (default: build/default/bench/distrlock-bench)
#   BASELINE            path to original_protocol_mysql.sh (default: bench/baselines/original_protocol_mysql.sh)
#   MARIADB             the command-line client (default: mariadb)
#   OUT_DIR             where raw outputs go (default: a new directory under ${TMPDIR:-/tmp})
#   COMMIT              what to print as the commit (default: git rev-parse --short HEAD of this checkout)
# Exit: 0 when every distrlock/original ratio meets its target, 1 when some does not, 2 on a failed run,
# 64 on bad usage.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

usage() {
  echo "usage: bench/compare_mysql.sh URL   (see the header of this script for the environment it reads)" >&2
  exit 64
}
[[ $# -eq 1 && -n $1 && $1 != -* ]] || usage
url=$1

seconds=${SECONDS_PER_RUN:-10}
rounds=${ROUNDS:-3}
keys=${KEYS:-500}
dl_bench=${DISTRLOCK_BENCH:-$root/build/default/bench/distrlock-bench}
baseline=${BASELINE:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/baselines/original_protocol_mysql.sh}
mariadb=${MARIADB:-mariadb}
cycles_per_connection=2000 # as the baseline script has it
connections_max=8

die() {
  echo "compare_mysql.sh: $*" >&2
  exit 2
}
for v in seconds rounds keys; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "compare_mysql.sh: ${v^^} must be a positive integer" >&2; exit 64; }
done
[[ -x $dl_bench ]] || die "no distrlock-bench at $dl_bench (build with -DDISTRLOCK_BUILD_BENCH=ON, or set DISTRLOCK_BENCH)"
[[ -r $baseline ]] || die "cannot read the baseline $baseline"
command -v "$mariadb" >/dev/null || die "no '$mariadb' command-line client"

# ---- the URL, for the command-line client -----------------------------------------------------------------
re='^(mysql|mariadb)://(([^:@/]*)(:([^@/]*))?@)?([^:/?]+)(:([0-9]+))?/([^?/]+)(\?returning=(auto|off))?$'
[[ $url =~ $re ]] ||
  die "URL must look like mysql://user[:password]@host[:port]/database[?returning=off] (no other parameters)"
pct() { printf '%b' "${1//%/\\x}"; }
user=$(pct "${BASH_REMATCH[3]}") password=$(pct "${BASH_REMATCH[5]}") host=${BASH_REMATCH[6]}
port=${BASH_REMATCH[8]:-3306} database=$(pct "${BASH_REMATCH[9]}")
client=("$mariadb" --no-defaults --protocol=tcp -h "$host" -P "$port" -u "${user:-root}")
[[ -z $password ]] || client+=("-p$password")
masked_url=$(sed -E 's#(://[^:@/]*:)[^@/]*@#\1***@#' <<<"$url")
out_dir=${OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/distrlock-compare-mysql.XXXXXX")}
mkdir -p "$out_dir"
sql() { "${client[@]}" -N -B "$database" -e "$1"; }

# ---- the machine, the server, the code --------------------------------------------------------------------
{
  echo "date:       $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine:    $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')," \
    "$(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
  echo "server:     $(sql 'SELECT VERSION()') at $masked_url," \
    "innodb_flush_log_at_trx_commit=$(sql 'SELECT @@innodb_flush_log_at_trx_commit')," \
    "innodb_doublewrite=$(sql 'SELECT @@innodb_doublewrite'), log_bin=$(sql 'SELECT @@log_bin')"
  if [[ -n ${COMMIT:-} ]]; then
    echo "commit:     $COMMIT"
  elif git -C "$root" rev-parse --short HEAD >/dev/null 2>&1; then
    commit=$(git -C "$root" rev-parse --short HEAD)
    if [[ -n $(git -C "$root" status --porcelain -- src include CMakeLists.txt) ]]; then
      commit+=" + uncommitted library changes"
    fi
    echo "commit:     $commit"
  fi
  echo "settings:   rounds=$rounds; original, library and floor: $cycles_per_connection cycles per connection;" \
    "distrlock-bench: ${seconds}s per run, keys=$keys per client"
  echo "load:       $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) before the runs"
  echo "raw output: $out_dir"
} | tee "$out_dir/summary.txt"

# ---- schema, key space, and the library's packets for the command-line client -----------------------------
"$dl_bench" --db "$url" --scenario cycle --clients 1 --seconds 1 --keys "$keys" --json >"$out_dir/warmup.json" \
  2>"$out_dir/warmup.err" || die "distrlock-bench warm-up failed: $(tail -n1 "$out_dir/warmup.err")"
# Free rows, shaped as a release leaves them, for every key any distrlock-bench client can pick: all three
# contenders measure the steady state of a lock table (rows reused, never new).
awk -v clients="$connections_max" -v keys="$keys" 'BEGIN {
  for (c = 0; c < clients; ++c) {
    printf "INSERT IGNORE INTO `distributed_locks` (`key`, `token`, `fence`, `expires`, `owner`) VALUES "
    for (k = 0; k < keys; ++k) printf "%s(\x27bench/%d/%d\x27, NULL, 0, 0, NULL)", (k ? ", " : ""), c, k
    print ";"
  }
}' | "${client[@]}" "$database" || die "could not create the bench keys"

# The library protocol, as src/backends/mysql/mysql_backend.cpp sends it for the default table (keep the two in
# step): on MariaDB 10.5+ the acquire is one INSERT ... RETURNING; elsewhere (or with returning=off in the URL)
# it is the upsert plus the holder SELECT in one packet. Keys and tokens travel as quoted literals here rather
# than as X'..' hex: the same bytes to the server. DELIMITER makes the client send a packet's statements as one
# packet, as the library does.
now="TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6))"
returning=0
if [[ $url != *returning=off* ]] &&
  sql "SELECT VERSION() LIKE '%MariaDB%' AND CAST(SUBSTRING_INDEX(VERSION(), '.', 1) AS UNSIGNED) * 100 + CAST(SUBSTRING_INDEX(SUBSTRING_INDEX(VERSION(), '.', 2), '.', -1) AS UNSIGNED) >= 1005" | grep -qx 1; then
  returning=1
fi
echo "library:    acquire $( ((returning)) && echo "INSERT ... RETURNING" || echo "upsert + holder SELECT")" | tee -a "$out_dir/summary.txt"
for c in $(seq $connections_max); do
  awk -v c="$c" -v n="$cycles_per_connection" -v now="$now" -v returning="$returning" 'BEGIN {
    q = "\x27"; t = "`distributed_locks`"
    print "DELIMITER //"
    for (i = 0; i < n; ++i) {
      k = q "lib/" c "/" (i % 500) q; tok = q "token-" c q
      if (returning) {
        printf "INSERT INTO %s (`key`, `token`, `fence`, `expires`, `owner`) VALUES (%s, %s, 1, %s + 30000000, LEFT(%s, 255)) ON DUPLICATE KEY UPDATE `token` = IF(`token` IS NULL OR `expires` <= %s OR `token` = VALUES(`token`), VALUES(`token`), `token`), `fence` = IF(`token` = VALUES(`token`), `fence` + 1, `fence`), `expires` = IF(`token` = VALUES(`token`), VALUES(`expires`), `expires`), `owner` = IF(`token` = VALUES(`token`), VALUES(`owner`), `owner`) RETURNING `token` = %s, `fence`, GREATEST(0, `expires` - %s) DIV 1000, `owner`//\n", t, k, tok, now, q "mariadb-cli" q, now, tok, now
      } else {
        printf "INSERT INTO %s (`key`, `token`, `fence`, `expires`, `owner`) VALUES (%s, %s, LAST_INSERT_ID(1), %s + 30000000, LEFT(%s, 255)) ON DUPLICATE KEY UPDATE `token` = IF(`token` IS NULL OR `expires` <= %s OR `token` = VALUES(`token`), VALUES(`token`), `token`), `fence` = IF(`token` = VALUES(`token`), LAST_INSERT_ID(`fence` + 1), `fence` + 0 * LAST_INSERT_ID(9223372036854775808 + GREATEST(0, `expires` - %s) DIV 1000)), `expires` = IF(`token` = VALUES(`token`), VALUES(`expires`), `expires`), `owner` = IF(`token` = VALUES(`token`), VALUES(`owner`), `owner`); SELECT `owner` FROM %s WHERE `key` = %s AND LAST_INSERT_ID() >= 9223372036854775808//\n", t, k, tok, now, q "mariadb-cli" q, now, now, t, k
      }
      printf "UPDATE %s SET `token` = NULL, `owner` = NULL, `expires` = %s, `fence` = LAST_INSERT_ID(`fence`) WHERE `key` = %s AND `token` = %s AND `expires` > %s//\n", t, now, k, tok, now
    }
  }' >"$out_dir/library-$c.sql"
  awk -v c="$c" -v n="$cycles_per_connection" 'BEGIN {
    for (i = 0; i < n; ++i) {
      k = "\x27floor/" c "/" (i % 500) "\x27"
      printf "UPDATE `distributed_locks` SET `fence` = `fence` + 1 WHERE `key` = %s;\n", k
      printf "UPDATE `distributed_locks` SET `fence` = `fence` + 1 WHERE `key` = %s;\n", k
    }
  }' >"$out_dir/floor-$c.sql"
done
awk -v clients="$connections_max" 'BEGIN {
  for (c = 1; c <= clients; ++c) {
    printf "INSERT IGNORE INTO `distributed_locks` (`key`, `token`, `fence`, `expires`, `owner`) VALUES "
    for (k = 0; k < 500; ++k) printf "%s(\x27floor/%d/%d\x27, NULL, 0, 0, NULL)", (k ? ", " : ""), c, k
    print ";"
  }
}' | "${client[@]}" "$database" || die "could not create the floor keys"

# ---- the runs ---------------------------------------------------------------------------------------------
declare -A result # result[round,clients,who] = cycles per second
run_original() { # round
  local log="$out_dir/r$1-original.txt"
  bash "$baseline" "${client[*]}" >"$log" 2>&1 || die "the baseline failed: see $log"
  result[$1,1,original]=$(awk '/^1 connection:/ {print $3}' "$log")
  result[$1,8,original]=$(awk '/^8 connections:/ {print $3}' "$log")
  [[ -n ${result[$1,1,original]} && -n ${result[$1,8,original]} ]] || die "no figures in $log"
}
run_replay() { # round who: replays $out_dir/WHO-C.sql on 1, then on 8 connections at once
  local r=$1 who=$2 t e c
  t=$(date +%s.%N)
  "${client[@]}" "$database" <"$out_dir/$who-1.sql" >/dev/null || die "the $who replay failed"
  e=$(date +%s.%N)
  result[$r,1,$who]=$(awk -v n="$cycles_per_connection" -v t="$t" -v e="$e" 'BEGIN { printf "%.0f", n / (e - t) }')
  t=$(date +%s.%N)
  for c in $(seq $connections_max); do
    "${client[@]}" "$database" <"$out_dir/$who-$c.sql" >/dev/null &
  done
  wait || die "a $who replay failed"
  e=$(date +%s.%N)
  result[$r,8,$who]=$(awk -v n="$((cycles_per_connection * connections_max))" -v t="$t" -v e="$e" \
    'BEGIN { printf "%.0f", n / (e - t) }')
}
run_distrlock() { # round clients
  local log="$out_dir/r$1-c$2-distrlock.json" line n t
  "$dl_bench" --db "$url" --scenario cycle --clients "$2" --seconds "$seconds" --keys "$keys" --json \
    >"$log" 2>"$log.err" || die "distrlock-bench --clients $2 failed: $(tail -n1 "$log.err")"
  line=$(tail -n1 "$log")
  n=$(grep -o '"ops":[0-9]*' <<<"$line" | cut -d: -f2)
  t=$(grep -o '"elapsed_s":[0-9.]*' <<<"$line" | cut -d: -f2)
  [[ -n $n && -n $t ]] || die "no ops or elapsed_s in $log"
  result[$1,$2,distrlock]=$(awk -v n="$n" -v t="$t" 'BEGIN { printf "%.0f", n / t }')
}

# Other work shows up as pressure stall time: the share of the last 10 s in which some task waited for I/O. Its
# highest value seen during a round is printed beside it, so that noisy rounds stand out. (Every contender
# commits twice per cycle, and each commit waits for an fsync of the redo log: slow fsyncs squeeze all three
# towards the same figure.)
declare -A psi
io_pressure() {
  if [[ -r /proc/pressure/io ]]; then awk '/^some/ {split($2, a, "="); print a[2]}' /proc/pressure/io; else echo 0; fi
}
note_pressure() { # round
  psi[$1]=$(awk -v a="${psi[$1]:-0}" -v b="$(io_pressure)" 'BEGIN { print (b > a ? b : a) }')
}
for ((r = 1; r <= rounds; ++r)); do
  echo "round $r of $rounds ..." >&2
  if ((r % 2)); then order="original library floor distrlock"; else order="distrlock floor library original"; fi
  for who in $order; do
    case $who in
      original) run_original "$r" ;;
      library | floor) run_replay "$r" "$who" ;;
      distrlock) run_distrlock "$r" 1 && run_distrlock "$r" 8 ;;
    esac
    note_pressure "$r"
  done
done

# ---- the table --------------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
meets() { awk -v x="$1" -v t="$2" 'BEGIN { exit !(x >= t) }'; }
median() {
  printf '%s\n' "$@" | sort -g |
    awk '{ v[NR] = $1 } END { printf "%.2f", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
row() { printf '%-7s %-8s %11s %11s %11s %11s %9s %-4s %9s %9s %8s\n' "$@"; }
all_met=1
{
  echo "load:       $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) after the runs"
  echo
  row round clients original/s library/s floor/s distrlock/s "dl/orig" "" "lib/orig" "floor/orig" "io-psi"
  row "" "" "(cli)" "(cli)" "(cli)" "(bench)" "(>=2.00)" "" "" "(ceiling)" "(max %)"
  for c in 1 8; do
    ros=() rls=() rfs=()
    for ((r = 1; r <= rounds; ++r)); do
      o=${result[$r,$c,original]} l=${result[$r,$c,library]} f=${result[$r,$c,floor]} d=${result[$r,$c,distrlock]}
      ro=$(ratio "$d" "$o") rl=$(ratio "$l" "$o") rf=$(ratio "$f" "$o")
      ros+=("$ro") rls+=("$rl") rfs+=("$rf")
      if meets "$ro" 2.00; then v=ok; else v=MISS; fi
      row "$r" "$c" "$o" "$l" "$f" "$d" "$ro" "$v" "$rl" "$rf" "${psi[$r]}"
    done
    ro=$(median "${ros[@]}") rl=$(median "${rls[@]}") rf=$(median "${rfs[@]}")
    if meets "$ro" 2.00; then v=ok; else v=MISS all_met=0; fi
    row median "$c" "" "" "" "" "$ro" "$v" "$rl" "$rf" ""
  done
  echo
  if ((all_met)); then
    echo "target: met (distrlock >= 2x original at 1 and 8 clients, median of per-round ratios)"
  else
    echo "target: NOT met (MISS above; median of per-round ratios)"
  fi
} >"$out_dir/table.txt"
tee -a "$out_dir/summary.txt" <"$out_dir/table.txt"
((all_met)) || exit 1
