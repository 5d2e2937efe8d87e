#!/usr/bin/env bash
# Heartbeat/healthz throughput of two builds, measured side by side.
#
#   bash loadtest/profile/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]    # default 5 rounds
#
# Starts both servers (dev mode, free loopback ports), preloads SESSIONS
# (default 1M) into each, waits for the preload's papaya resizes and first
# sweep to settle, then runs ROUNDS rounds of: wrk on OLD's /healthz, on OLD's
# heartbeats, on NEW's /healthz, on NEW's heartbeats (wrk -t1 -c64, DUR
# seconds each, the same Lua scripts as bench.sh). Interleaving puts both
# builds through the same minutes of a noisy machine. Prints each round and
# the medians, and beside each throughput the server's CPU time per answered
# request (user + system, µs, from /proc/PID/stat). With the server on one
# core that is what a request costs it, a view the host's steal does not
# inflate (a kernel with CONFIG_PARAVIRT_TIME_ACCOUNTING, like this one,
# charges no stolen time to a task), though a busy host still slows the
# work itself (caches, memory bandwidth).
# LAYOUT=pinned (default) runs the servers on CPU 0 and wrk on CPU 1,
# LAYOUT=shared leaves both to the scheduler (see bench.sh).
# Needs wrk, python3, curl and the driver
# (`cargo build --release --manifest-path loadtest/driver/Cargo.toml`).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
(($# >= 2)) || { echo "usage: $0 OLD_BINARY NEW_BINARY [ROUNDS]" >&2; exit 2; }
BINS=("$1" "$2")
ROUNDS=${3:-5}
DUR=${DUR:-8}
SESSIONS=${SESSIONS:-1000000}
LAYOUT=${LAYOUT:-pinned}
DRIVER=$ROOT/loadtest/driver/target/release/streamcap-driver
WORK=$(mktemp -d)
for tool in wrk curl python3 "$DRIVER"; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
case $LAYOUT in
    pinned) SERVER=(taskset -c 0) WRK=(taskset -c 1 wrk) ;;
    shared) SERVER=() WRK=(wrk) ;;
    *) echo "LAYOUT must be pinned or shared" >&2; exit 2 ;;
esac
# shellcheck source=loadtest/profile/lib.sh
source "$ROOT/loadtest/profile/lib.sh"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=() ADMIN=()
for i in 0 1; do
    PORT[i]=$(port) ADMIN[i]=$(port)
    "${SERVER[@]}" "${BINS[i]}" --listen "127.0.0.1:${PORT[i]}" --admin-listen "127.0.0.1:${ADMIN[i]}" \
        --max-poll-secs 3600 >"$WORK/server-$i.log" 2>&1 &
    PIDS+=($!)
done
for i in 0 1; do
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:${ADMIN[i]}/healthz" >/dev/null && break; sleep 0.2; done
    "$DRIVER" preload --addr "127.0.0.1:${PORT[i]}" --sessions "$SESSIONS" --poll 1000 \
        --tokens-out "$WORK/tokens-$i.tsv" >/dev/null 2>&1
    shuffle_lines "$WORK/tokens-$i.tsv"
done
sleep 20
TICK=$(getconf CLK_TCK)
# bench I SCRIPT URL [WRK ARGS]: one wrk run on server I; prints "rps cpu_us".
bench() {
    local i=$1 script=$2 url=$3 t0 out
    shift 3
    t0=$(cpu_ticks "${PIDS[i]}")
    out=$("${WRK[@]}" -t1 -c64 -d"${DUR}s" -s "$ROOT/loadtest/wrk/$script" "$url" "$@")
    awk -v t0="$t0" -v t1="$(cpu_ticks "${PIDS[i]}")" -v tick="$TICK" '
        /requests in/ { n = $1 } /^Requests\/sec:/ { rps = $2 }
        END { printf "%s %.2f\n", rps, (t1 - t0) / tick / n * 1e6 }' <<<"$out"
}
HZ=([0]="" [1]="") HB=([0]="" [1]="") RATIO=([0]="" [1]="") CPU_RATIO=([0]="" [1]="")
for r in $(seq "$ROUNDS"); do
    line="round $r:"
    for i in 0 1; do
        read -r hz hz_us < <(bench "$i" healthz.lua "http://127.0.0.1:${ADMIN[i]}")
        read -r hb hb_us < <(bench "$i" post.lua "http://127.0.0.1:${PORT[i]}" -- "$WORK/tokens-$i.tsv")
        ratio=$(awk -v a="$hb" -v b="$hz" 'BEGIN { printf "%.3f", a / b }')
        cpu_ratio=$(awk -v a="$hz_us" -v b="$hb_us" 'BEGIN { printf "%.3f", a / b }')
        HZ[i]+=" $hz" HB[i]+=" $hb" RATIO[i]+=" $ratio" CPU_RATIO[i]+=" $cpu_ratio"
        line+=" $([[ $i == 0 ]] && echo old || echo new) healthz $hz ($hz_us µs) heartbeat $hb ($hb_us µs)"
        line+=" ratio $ratio (CPU $cpu_ratio);"
    done
    echo "$line"
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for i in 0 1; do
    echo "$([[ $i == 0 ]] && echo old || echo new) (${BINS[i]}, $LAYOUT): medians healthz $(median <<<"${HZ[i]}")," \
        "heartbeat $(median <<<"${HB[i]}"), ratio $(median <<<"${RATIO[i]}")," \
        "CPU per healthz / per heartbeat $(median <<<"${CPU_RATIO[i]}")"
done
