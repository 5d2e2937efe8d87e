#!/usr/bin/env bash
# Fixed-rate latency of heartbeats against the trivial route at the same rate.
#
#   bash loadtest/profile/rate-ab.sh [ROUNDS]      # default 3 rounds
#
# One server (dev mode, free loopback ports), SESSIONS (default 1M)
# preloaded; then ROUNDS rounds of two open-model runs of SECS seconds
# (default 20, after a 3 s warm-up) at RATE/s (default 33,300) over CONNS
# connections (default 64): heartbeats over the preloaded sessions' tokens,
# then GET /healthz on the operator port, which goes through the same
# connection stack and does no work. What the heartbeat adds to the latency
# is the difference between the two; what they share is the machine's, the
# generator's and the stack's. Prints one line per run: p50, p99, p99.9 from
# intended send time and the generator's own send lag.
# Needs python3, jq and the driver
# (`cargo build --release --manifest-path loadtest/driver/Cargo.toml`).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${BIN:-$ROOT/target/release/streamcap}
DRIVER=$ROOT/loadtest/driver/target/release/streamcap-driver
ROUNDS=${1:-3}
SESSIONS=${SESSIONS:-1000000}
SECS=${SECS:-20}
RATE=${RATE:-33300}
CONNS=${CONNS:-64}
for tool in python3 curl jq "$BIN" "$DRIVER"; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
W=$(mktemp -d)
# shellcheck source=loadtest/profile/lib.sh
source "$ROOT/loadtest/profile/lib.sh"
trap 'kill ${P:-} 2>/dev/null || true; rm -rf "$W"' EXIT
start_preloaded "$BIN" "$DRIVER" "$SESSIONS" "$W/tokens.tsv" "$W/server.log"
printf 'GET\t/healthz\t-\n' >"$W/healthz.tsv"
one() { # one NAME ADDR TARGETS
    "$DRIVER" rate --addr "$2" --targets "$3" --rate "$RATE" --duration "$SECS" --warmup 3 --conns "$CONNS" \
        --json 2>/dev/null | tail -1 | jq -r --arg n "$1" \
        '"| \($n) | \(.answered) | \(.errors) | \(.p50_ms) | \(.p99_ms) | \(.p999_ms) | \(.send_lag_p99_ms) |"'
}
echo "| route ($RATE/s, $CONNS conns, ${SECS} s) | answered | errors | p50 (ms) | p99 (ms) | p99.9 (ms) | generator send lag p99 (ms) |"
echo "|---|---|---|---|---|---|---|"
for _ in $(seq "$ROUNDS"); do
    one heartbeat "127.0.0.1:$PORT" "$W/tokens.tsv"
    one "GET /healthz" "127.0.0.1:$ADMIN" "$W/healthz.tsv"
done
