#!/usr/bin/env bash
# RSS per session after a preload, watched with no traffic: shows memory that
# arrives or leaves after the preload (the sweeper's passes, papaya moving
# its table), which a single reading right after the preload misses.
#
#   bash loadtest/profile/preload-rss.sh [BINARY]    # default: target/release/streamcap
#
# Starts BINARY (dev mode, free loopback ports), reads the empty process's
# RSS, preloads N sessions (default 1M; users with 1-3 sessions, as bench.sh
# does), then prints RSS, the store's records and (RSS - empty) / records
# SAMPLES + 1 times (default 6 + 1): 1 s after the preload, then every STEP
# seconds (default 10; use 30 or more at 10M, where the sweeper's passes are
# minutes apart). Needs curl and the driver
# (`cargo build --release --manifest-path loadtest/driver/Cargo.toml`).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${1:-$ROOT/target/release/streamcap}
N=${N:-1000000}
SAMPLES=${SAMPLES:-6}
STEP=${STEP:-10}
DRIVER=$ROOT/loadtest/driver/target/release/streamcap-driver
# shellcheck source=loadtest/profile/lib.sh
source "$ROOT/loadtest/profile/lib.sh"
SCRATCH=$(mktemp -d)
trap 'kill "${P:-}" 2>/dev/null || true; rm -rf "$SCRATCH"' EXIT
start_server "$BIN" "$SCRATCH/server.log"
sleep 1
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$P/status"; }
EMPTY=$(rss)
preload_sessions "$DRIVER" "$N" "$SCRATCH/tokens.tsv"
echo "$(basename "$BIN"): $N sessions preloaded; empty process $((EMPTY / 1024)) MiB"
for i in $(seq 0 "$SAMPLES"); do
    sleep "$([[ $i == 0 ]] && echo 1 || echo "$STEP")"
    R=$(rss)
    RECORDS=$(curl -sf "http://127.0.0.1:$ADMIN/metrics" | awk '/^streamcap_records / { print $2 }')
    echo "t=$(( 1 + i * STEP ))s rss $((R / 1024)) MiB records $RECORDS bytes/session $(( (R - EMPTY) * 1024 / RECORDS ))"
done
