# shellcheck shell=bash
# Shared helpers for scripts/services and scripts/test. Source it; do not execute it.
#
# All messages go to stderr so that scripts can keep stdout for machine-readable output.

# Repository root (the parent of the directory holding this file).
DISTRLOCK_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log()  { printf '%s: %s\n' "${DISTRLOCK_LOG_TAG:-$(basename "$0")}" "$*" >&2; }
warn() { printf '%s: warning: %s\n' "${DISTRLOCK_LOG_TAG:-$(basename "$0")}" "$*" >&2; }
die()  { printf '%s: error: %s\n' "${DISTRLOCK_LOG_TAG:-$(basename "$0")}" "$*" >&2; exit 1; }

is_root() { [[ ${EUID:-$(id -u)} -eq 0 ]]; }

# as_root CMD...: run CMD as root (directly when root, else through sudo, else fail clearly).
as_root() {
    if is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -- "$@"
    else
        die "need root to run '$*' (not root and sudo is not installed)"
    fi
}

# Seconds since the epoch, with fractions where available (for timing messages).
now_s() { date +%s.%N 2>/dev/null || date +%s; }
# elapsed START: seconds since START, one decimal.
elapsed() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }'; }

# port_is_free PORT: true when nothing listens on 127.0.0.1:PORT (or any address on PORT).
port_is_free() {
    local p=$1
    if command -v ss >/dev/null 2>&1; then
        [[ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ]] || return 1
    fi
    # Belt and braces (and the fallback when ss is missing): a successful connect means taken.
    if (exec 2>/dev/null; : <"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        return 1
    fi
    return 0
}

# pick_free_port: print a free TCP port in 20000..31999 (below the Linux ephemeral range, so
# outgoing connections do not steal it between picking and binding).
pick_free_port() {
    local i p
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
        if port_is_free "$p"; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    return 1
}
