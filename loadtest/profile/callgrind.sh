#!/usr/bin/env bash
# Userland instructions per heartbeat and per /healthz request, counted by
# callgrind over a live server: repeatable whatever else the machine does.
#
#   bash loadtest/profile/callgrind.sh [BINARY]     # default: target/release/streamcap
#
# Starts BINARY under valgrind on two free loopback ports, preloads 4,000
# sessions, zeroes the counters, runs wrk -t1 -c8 for 8 s on heartbeats
# (wrk/post.lua), dumps, then the same on /healthz (wrk/healthz.lua), and
# prints instructions per request (whole process, all threads). The dumps
# stay in $OUT (default: a mktemp directory): open them with
# `callgrind_annotate --inclusive=yes $OUT/cg.out.1` (heartbeats) or `.2`.
# Needs valgrind and wrk (Debian packages) and the driver
# (`cargo build --release --manifest-path loadtest/driver/Cargo.toml`).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${1:-$ROOT/target/release/streamcap}
DRIVER=$ROOT/loadtest/driver/target/release/streamcap-driver
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
for tool in valgrind callgrind_control callgrind_annotate wrk; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
# shellcheck source=loadtest/profile/lib.sh
source "$ROOT/loadtest/profile/lib.sh"
PORT=$(port) ADMIN=$(port)
valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.out" "$BIN" --listen "127.0.0.1:$PORT" \
    --admin-listen "127.0.0.1:$ADMIN" --max-poll-secs 3600 --sweep-millis 600000 >"$OUT/server.log" 2>&1 &
VG=$!
trap 'kill $VG 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN/healthz" >/dev/null && break; sleep 0.2; done
"$DRIVER" preload --addr "127.0.0.1:$PORT" --sessions 4000 --poll 3000 --tokens-out "$OUT/tokens.tsv" >/dev/null 2>&1
callgrind_control -z "$VG" >/dev/null
HB=$(wrk -t1 -c8 -d8s -s "$ROOT/loadtest/wrk/post.lua" "http://127.0.0.1:$PORT" -- "$OUT/tokens.tsv" | awk '/requests in/ { print $1 }')
callgrind_control -d hb "$VG" >/dev/null
callgrind_control -z "$VG" >/dev/null
HZ=$(wrk -t1 -c8 -d8s -s "$ROOT/loadtest/wrk/healthz.lua" "http://127.0.0.1:$ADMIN" | awk '/requests in/ { print $1 }')
callgrind_control -d hz "$VG" >/dev/null
kill "$VG"; wait "$VG" 2>/dev/null || true
total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'; }
echo "$(basename "$BIN"): heartbeat $(( $(total "$OUT/cg.out.1") / HB )) instructions/request ($HB requests), /healthz $(( $(total "$OUT/cg.out.2") / HZ )) instructions/request ($HZ requests); dumps in $OUT"
