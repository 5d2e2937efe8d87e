#!/usr/bin/env bash
# RSS after a partial expiry, with transparent huge pages on and off.
#
#   bash loadtest/profile/thp-expiry.sh [BINARY]     # default: target/release/streamcap
#
# Starts two servers from BINARY on free loopback ports: "thp" with
# MIMALLOC_ALLOW_THP=1 (mimalloc advises its arenas MADV_HUGEPAGE) and
# "default" (streamcap turns THP off for its process; MIMALLOC_ALLOW_THP unset).
# Into each it preloads BATCHES rounds of SHORT sessions with poll 20 s
# (tokens live 60 s) and LONG sessions with poll 1200 s, so that the
# long-lived records sit between short-lived ones. Then, every 15 s for
# SAMPLES samples, prints each server's records, RSS and AnonHugePages (MiB)
# and the kernel's count of huge pages khugepaged has assembled
# (thp_collapse_alloc in /proc/vmstat, machine-wide). Once the short
# sessions have expired and been swept, nothing runs in either process but
# the sweeper; RSS that rises then was not allocated by the process.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${1:-$ROOT/target/release/streamcap}
SHORT=${SHORT:-1000000}
LONG=${LONG:-100000}
BATCHES=${BATCHES:-3}
SAMPLES=${SAMPLES:-24}
DRIVER=$ROOT/loadtest/driver/target/release/streamcap-driver
# shellcheck source=loadtest/profile/lib.sh
source "$ROOT/loadtest/profile/lib.sh"
NAMES=(thp default)
# What `env` is given for each server (split into words on purpose).
SETTINGS=("MIMALLOC_ALLOW_THP=1" "-u MIMALLOC_ALLOW_THP")
PIDS=() PORTS=() ADMINS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
for i in 0 1; do
    PORTS[i]=$(port) ADMINS[i]=$(port)
    # shellcheck disable=SC2086
    env ${SETTINGS[i]} "$BIN" --listen "127.0.0.1:${PORTS[i]}" --admin-listen "127.0.0.1:${ADMINS[i]}" \
        --max-poll-secs 3600 2>/dev/null &
    PIDS+=($!)
done
sleep 1
rss() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
huge() { awk '/^AnonHugePages/ { s += $2 } END { printf "%.0f", s / 1024 }' "/proc/$1/smaps"; }
records() { curl -s "http://127.0.0.1:$1/metrics" | awk '$1 == "streamcap_records" { print $2 }'; }
collapsed() { awk '$1 == "thp_collapse_alloc" { print $2 }' /proc/vmstat; }
echo "baseline RSS: thp $(rss "${PIDS[0]}") MiB, default $(rss "${PIDS[1]}") MiB"
for i in 0 1; do
    for b in $(seq "$BATCHES"); do
        "$DRIVER" preload --addr "127.0.0.1:${PORTS[i]}" --sessions "$SHORT" --poll 20 --user-prefix "a$b-" \
            --progress 0 >/dev/null
        "$DRIVER" preload --addr "127.0.0.1:${PORTS[i]}" --sessions "$LONG" --poll 1200 --user-prefix "b$b-" \
            --progress 0 >/dev/null
    done
done
t0=$(date +%s)
for _ in $(seq "$SAMPLES"); do
    line="t+$(($(date +%s) - t0))s"
    for i in 0 1; do
        line+=" | ${NAMES[i]}: records $(records "${ADMINS[i]}") RSS $(rss "${PIDS[i]}") huge $(huge "${PIDS[i]}")"
    done
    echo "$line | thp_collapse_alloc $(collapsed)"
    sleep 15
done
