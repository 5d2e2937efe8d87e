#!/usr/bin/env bash
# The highest fixed heartbeat rate whose p99 stays under a bound, over N
# preloaded sessions (default 1M), the generator on the same machine.
#
#   bash loadtest/profile/rate-sweep.sh [RATE...]    # default: 15000 20000 25000 33300
#
# One server; one preload; then for each RATE a 60 s open-model run
# (`streamcap-driver rate`, 64 connections, 5 s warm-up) over the same
# tokens, printing p50/p99/p99.9 from intended send time and the
# generator's own send lag, the CPU the server and the generator used
# (cores, averaged over the run and its warm-up), and the machine's steal
# time over the same span: CPU time the hypervisor gave to others while
# one of this VM's CPUs had work (`steal` in /proc/stat; 2.00 = both cores).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${BIN:-$ROOT/target/release/streamcap}
DRIVER=$ROOT/loadtest/driver/target/release/streamcap-driver
N=${N:-1000000}
SECS=${SECS:-60}
RATES=("$@")
((${#RATES[@]})) || RATES=(15000 20000 25000 33300)
W=$(mktemp -d)
# shellcheck source=loadtest/profile/lib.sh
source "$ROOT/loadtest/profile/lib.sh"
trap 'kill ${P:-} 2>/dev/null || true; rm -rf "$W"' EXIT
start_preloaded "$BIN" "$DRIVER" "$N" "$W/t.tsv" "$W/server.log"
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
steal() { awk '/^cpu / { print $9 }' /proc/stat; }
hz=$(getconf CLK_TCK)
echo "| rate (/s) | answered | errors | p50 (ms) | p99 (ms) | p99.9 (ms) | generator send lag p99 (ms) | server CPU (cores) | generator CPU (cores) | steal (cores) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for rate in "${RATES[@]}"; do
    s0=$(ticks "$P") st0=$(steal)
    "$DRIVER" rate --addr "127.0.0.1:$PORT" --targets "$W/t.tsv" --rate "$rate" --duration "$SECS" \
        --warmup 5 --conns 64 --json >"$W/rate.txt" 2>/dev/null &
    D=$!
    d0=0
    while kill -0 "$D" 2>/dev/null; do
        d0=$(ticks "$D" 2>/dev/null || echo "$d0")
        sleep 1
    done
    wait "$D"
    s1=$(ticks "$P") st1=$(steal)
    j=$(tail -1 "$W/rate.txt")
    cpu() { awk -v t="$1" -v hz="$hz" -v s="$((SECS + 5))" 'BEGIN { printf "%.2f", t / hz / s }'; }
    echo "| $rate | $(jq -r .answered <<<"$j") | $(jq -r .errors <<<"$j") | $(jq -r .p50_ms <<<"$j") | $(jq -r .p99_ms <<<"$j") | $(jq -r .p999_ms <<<"$j") | $(jq -r .send_lag_p99_ms <<<"$j") | $(cpu $((s1 - s0))) | $(cpu "$d0") | $(cpu $((st1 - st0))) |"
done
