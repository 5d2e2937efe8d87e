#!/usr/bin/env bash
# Where a heartbeat's time goes, against /healthz on the same server:
# server CPU per request by symbol, kernel and userland, from perf samples.
#
#   bash loadtest/profile/perf-routes.sh [BINARY]    # default: target/release/streamcap
#
# Starts BINARY (dev mode, free loopback ports), preloads SESSIONS (default
# 1M) in a random order, pins the server's threads to CPU 0, waits for the
# preload's resizes and first sweep to settle, then samples CPU 0 (`perf
# record -e cpu-clock`, 4,999 Hz) through one wrk run on /healthz and one on
# heartbeats (wrk -t1 -c64 on CPU 1, DUR seconds each, the same Lua scripts
# as bench.sh). Prints, per answered request, the CPU 0 time of the kernel,
# of userland and of each symbol, largest difference first (idle time left
# out: the halted vCPU's samples). cpu-clock samples are timer interrupts,
# so this works in a VM without hardware counters; each sample stands for
# ~200 µs, so symbols under ~0.02 µs per request are noise; TOP (default 30)
# symbols are listed. Needs perf (linux-perf), wrk, python3, curl and the
# driver. perf itself runs beside wrk on CPU 1 and slows it: the throughput
# of these runs is not a benchmark.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${1:-$ROOT/target/release/streamcap}
SESSIONS=${SESSIONS:-1000000}
DUR=${DUR:-8}
DRIVER=$ROOT/loadtest/driver/target/release/streamcap-driver
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
for tool in perf wrk curl python3 "$DRIVER"; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
# shellcheck source=loadtest/profile/lib.sh
source "$ROOT/loadtest/profile/lib.sh"
trap 'kill ${P:-} 2>/dev/null || true' EXIT
start_preloaded "$BIN" "$DRIVER" "$SESSIONS" "$OUT/tokens.tsv" "$OUT/server.log"
taskset -a -p -c 0 "$P" >/dev/null
sleep 20
# sample NAME WRK_ARGS...: perf on CPU 0 through one wrk run on CPU 1.
sample() {
    local name=$1
    shift
    perf record -q -e cpu-clock -F 4999 -C 0 -o "$OUT/$name.data" -- sleep "$DUR" >/dev/null 2>&1 &
    local perf_pid=$!
    taskset -c 1 wrk -t1 -c64 -d"${DUR}s" "$@" >"$OUT/$name.wrk"
    wait "$perf_pid" || true
    perf report -i "$OUT/$name.data" --sort sym --stdio -n 2>/dev/null >"$OUT/$name.syms"
}
sample healthz -s "$ROOT/loadtest/wrk/healthz.lua" "http://127.0.0.1:$ADMIN"
sample heartbeat -s "$ROOT/loadtest/wrk/post.lua" "http://127.0.0.1:$PORT" -- "$OUT/tokens.tsv"
python3 - "$OUT" "$SESSIONS" "${TOP:-30}" <<'EOF'
import re, sys
out, sessions, top = sys.argv[1], sys.argv[2], int(sys.argv[3])
IDLE = ("pv_native_safe_halt", "default_idle", "cpu_idle", "do_idle", "acpi_idle")

def load(name):
    n = int(re.search(r"(\d+) requests in", open(f"{out}/{name}.wrk").read()).group(1))
    per = {}
    for line in open(f"{out}/{name}.syms"):
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+\[(.)\]\s+(.*)", line)
        if m and not m.group(3).strip().startswith(IDLE):
            key = ("kernel" if m.group(2) == "k" else "user", m.group(3).strip())
            per[key] = per.get(key, 0) + int(m.group(1)) / 4999 / n * 1e6
    return n, per

(nz, hz), (nb, hb) = load("healthz"), load("heartbeat")
print(f"{sessions} sessions; {nz} /healthz and {nb} heartbeats answered; server CPU 0 time per request (µs)")
print(f"{'heartbeat':>10} {'healthz':>8} {'diff':>7}")
for side in ("kernel", "user"):
    a = sum(v for k, v in hb.items() if k[0] == side)
    b = sum(v for k, v in hz.items() if k[0] == side)
    print(f"{a:10.2f} {b:8.2f} {a - b:+7.2f}  {side}, all symbols")
a, b = sum(hb.values()), sum(hz.values())
print(f"{a:10.2f} {b:8.2f} {a - b:+7.2f}  total (heartbeat / healthz cost ratio {b / a:.3f})")
keys = sorted(set(hb) | set(hz), key=lambda k: -abs(hb.get(k, 0) - hz.get(k, 0)))
for k in keys[:top]:
    a, b = hb.get(k, 0), hz.get(k, 0)
    print(f"{a:10.3f} {b:8.3f} {a - b:+7.3f}  [{k[0]}] {k[1][:110]}")
EOF
echo "perf data and wrk output in $OUT"
