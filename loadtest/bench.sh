#!/usr/bin/env bash
# streamcap's end-to-end benchmark: one command, one table.
#
#   bash loadtest/bench.sh             # the full run (quiet machine, ~20-30 min)
#   QUICK=1 bash loadtest/bench.sh     # a smoke run of the same steps (~2.5 min; GROW=1 ~5 min)
#
# Everything runs on 127.0.0.1: the server in dev mode on free ports, the
# load from wrk and loadtest/driver (streamcap-driver). Steps:
#   1. install wrk (and jq, curl) if missing; build the server and the driver (release);
#      the machine's own wake-up latency, idle (`streamcap-driver jitter`: how
#      late a 200 µs sleep returns; a floor under every latency measured here);
#      throughout, the machine's steal time (CPU time the hypervisor gave to
#      others while this VM had work: `steal` in /proc/stat) over each
#      measurement, in cores (2.00 = both), since it changes what the same
#      run measures from one minute to the next;
#   2. start the server (--max-poll-secs 3600); baseline RSS (VmRSS);
#   3. preload PRELOAD sessions (1M; users hold 1, 2, 3 sessions: 2 on average);
#      RSS and bytes/session at 1M; their heartbeat targets are shuffled (a
#      fixed order, the same every run), so that heartbeats reach the
#      sessions in no relation to where their records sit in memory;
#   4. fixed-rate heartbeats over the 1M sessions, open model: RATE/s for
#      RATE_SECS s after RATE_WARMUP s, latency from each request's intended
#      send time (coordinated omission corrected): p99 (target < 5 ms), errors
#      (target 0); it runs before step 5 so that the map holds the 1M
#      simulated viewers and nothing else. Then the control: GET /healthz on
#      the operator port at the same rate over as many connections for
#      RATE_CONTROL_SECS (the same connection stack, a route that does no work),
#      so that what the machine and the stack cost is not read as the heartbeat's;
#   5. RUNS times (interleaved, medians reported): wrk -t1 -c64 -d${DUR}s on
#      /healthz (admin port: the trivial-route baseline, wrk/healthz.lua so that
#      every route pays the same wrk Lua-mode cost), on heartbeats
#      (wrk/post.lua over the 1M sessions' tokens) and on starts
#      (wrk/post.lua over fresh users' grants, a new file each run; starts add
#      sessions); ratios heartbeat/healthz (target >= 0.85), start/heartbeat (>= 0.50).
#      Once per layout in LAYOUTS: "pinned" moves every server thread to CPU 0
#      (taskset) and runs wrk on CPU 1, so the two never compete for a core
#      and wrk's own work (which is larger for a heartbeat: longer requests
#      and answers to build and parse) is not charged to the server; "shared"
#      leaves both to the scheduler on both cores;
#   6. memory: preload on to each of MEM_STEPS total live sessions (5M, 10M),
#      RSS and bytes/session = (RSS - baseline) / live sessions (target <= 100)
#      at each, and the server's idle CPU with the map at its largest (read
#      over the expiry wait, until the first record goes). With GROW=1 this
#      step runs on a fresh server instead: `streamcap-driver grow` adds
#      sessions from 0 to SESSIONS_MAX (legs ending at PRELOAD and each
#      MEM_STEPS) while GROW_RATE heartbeats/s run; reported: the worst
#      1-second p99.9 window (target: none above 20 ms), beside a control
#      stream of GROW_CONTROL_RATE GET /healthz per second on the operator
#      port (never touches the map) in the same windows;
#   7. wait until every session has expired (records = 0), then 30 s more (the
#      sweeper's memory release runs on that pass and the next), RSS after
#      expiry vs baseline, and again 120 s after; records and RSS every 5 s
#      from the start of the wait are in WORKDIR/expiry-trace.tsv.
#
# Session lifetimes (ttl = 3 x poll) are chosen so that no token expires
# before its last use and the final wait stays short:
#   - the 1M sessions and the start runs' sessions get POLL_A, with 3 x POLL_A
#     = 1.25 x (planned time from the preload to the end of the fixed-rate run)
#     + MARGIN; heartbeats renew them, so they expire ~3 x POLL_A after the
#     fixed-rate run: with the defaults POLL_A ~ 256 s, i.e. ~13 min later;
#   - the memory step's sessions get POLL_M, with 3 x POLL_M = 3 x (the growth
#     time predicted from the 1M preload rate; GROW=1: 6 x) + MARGIN + 30 s.
#   The expiry wait (step 7) is what remains of these when step 6 ends:
#   ~8-12 min with the defaults (it is bounded: it gives up 2 min after the
#   latest planned expiry and reports what was left).
#
# Time with the defaults on a quiet 2-core machine: builds 0-3 min (cached:
# seconds); preload 1M ~10-30 s; throughput runs 3 x 3 x (10 s + wrk's load
# of 1M lines, 2-5 s) ~ 2-3 min; fixed rate 5 min; growth to 10M 1-4 min;
# expiry wait ~8-12 min. Total ~20-30 min; GROW=1 adds the growth under load
# (slower: shares the cores with the heartbeats).
#
# Environment (defaults in brackets; QUICK=1 changes the ones marked *):
#   RUNS [3]              repetitions of each wrk run; the median is reported
#   DUR [10]*             seconds per wrk run
#   WRK_CONNS [64]        wrk connections (-t1)
#   LAYOUTS ["pinned shared"]  CPU layouts of the throughput runs (step 5)
#   PRELOAD [1000000]*    sessions preloaded for the throughput and rate runs
#   START_GRANTS [20000 x DUR]  fresh users per start run; the run's starts go round
#                         them, so at 20,000-60,000 starts/s each holds 1-3 sessions, as
#                         the preload's users do (a 4th start would get 409 and count
#                         as a failure)
#   RATE [33300]*         fixed-rate heartbeats per second
#   RATE_SECS [300]*      measured seconds of the fixed-rate run
#   RATE_WARMUP [5]*      warmup seconds before it (not measured)
#   RATE_CONNS [64]       connections of the fixed-rate run
#   RATE_CONTROL_SECS [60]*  measured seconds of the /healthz control at RATE (0: skip)
#   JITTER_SECS [10]      seconds of the idle wake-up measurement (0: skip)
#   MEM_STEPS ["5000000 10000000"]*  live-session totals at which RSS is read
#   SESSIONS_MAX [last of MEM_STEPS]  the memory step stops here (e.g. 5000000)
#   SKIP_MEMORY [0]       1: skip steps 6 and 7
#   GROW [0]              1: step 6 on a fresh server, growing under heartbeat load
#   GROW_RATE [RATE]*     heartbeats per second during the growth
#   GROW_BEATS [100000]*  sessions whose tokens feed those heartbeats
#   GROW_START_RATE [0]   most starts/s during the growth (0: as fast as it goes)
#   GROW_CONTROL_RATE [1000]*  GET /healthz per second beside the growth (0: none)
#   MARGIN [120]*         seconds of slack added to every planned lifetime
#   QUICK [0]             1: a smoke run (PRELOAD 20000, DUR 3, RATE 2000 for 5 s,
#                         control 5 s, MEM_STEPS "600000 1000000", GROW_RATE 1000,
#                         GROW_BEATS 2000, GROW_CONTROL_RATE 200, MARGIN 20; the
#                         start runs alone add a few 100k sessions)
#   SKIP_BUILD [0]        1: use the binaries already built
#   PGO [0]               1: benchmark the profile-guided build
#                         (deploy/pgo-build.sh, target/pgo/streamcap; ~4 min
#                         more, needs `rustup component add llvm-tools`)
#   WORKDIR [mktemp]      scratch files (tokens ~170 MB per 1M sessions); a mktemp
#                         directory is removed at the end unless KEEP=1, a given one is kept
#   KEEP [0]              1: keep WORKDIR (server log, targets, raw outputs)
#   OUT [unset]           also write the table to this file
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=loadtest/profile/lib.sh
source "$ROOT/loadtest/profile/lib.sh"
QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    : "${PRELOAD:=20000}" "${DUR:=3}" "${RATE:=2000}" "${RATE_SECS:=5}" "${RATE_WARMUP:=1}"
    : "${MEM_STEPS:=600000 1000000}" "${GROW_RATE:=1000}" "${GROW_BEATS:=2000}" "${MARGIN:=20}"
    : "${RATE_CONTROL_SECS:=5}" "${GROW_CONTROL_RATE:=200}"
fi
RUNS=${RUNS:-3}
DUR=${DUR:-10}
WRK_CONNS=${WRK_CONNS:-64}
LAYOUTS=${LAYOUTS:-pinned shared}
PRELOAD=${PRELOAD:-1000000}
START_GRANTS=${START_GRANTS:-$((20000 * DUR))}
RATE=${RATE:-33300}
RATE_SECS=${RATE_SECS:-300}
RATE_WARMUP=${RATE_WARMUP:-5}
RATE_CONNS=${RATE_CONNS:-64}
RATE_CONTROL_SECS=${RATE_CONTROL_SECS:-60}
JITTER_SECS=${JITTER_SECS:-10}
MEM_STEPS=${MEM_STEPS:-5000000 10000000}
SESSIONS_MAX=${SESSIONS_MAX:-${MEM_STEPS##* }}
SKIP_MEMORY=${SKIP_MEMORY:-0}
GROW=${GROW:-0}
GROW_RATE=${GROW_RATE:-$RATE}
GROW_BEATS=${GROW_BEATS:-100000}
GROW_START_RATE=${GROW_START_RATE:-0}
GROW_CONTROL_RATE=${GROW_CONTROL_RATE:-1000}
MARGIN=${MARGIN:-120}
SKIP_BUILD=${SKIP_BUILD:-0}
PGO=${PGO:-0}
KEEP=${KEEP:-0}

SERVER_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/streamcap
if [[ $PGO == 1 ]]; then SERVER_BIN=$ROOT/target/pgo/streamcap; fi
DRIVER_BIN=${CARGO_TARGET_DIR:-$ROOT/loadtest/driver/target}/release/streamcap-driver
POST_LUA=$ROOT/loadtest/wrk/post.lua
HEALTHZ_LUA=$ROOT/loadtest/wrk/healthz.lua

if [[ -n ${WORKDIR:-} ]]; then
    WORK=$WORKDIR
    OWN_WORK=0
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/streamcap-bench.XXXXXX")
    OWN_WORK=1
fi
SERVER_PID=
BENCH_START=$(date +%s)

log() { printf '[%4ds] %s\n' $(($(date +%s) - BENCH_START)) "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

stop_server() {
    local pid=$SERVER_PID
    SERVER_PID=
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317  # (called by the trap)
cleanup() {
    local rc=$?
    stop_server
    if [[ $KEEP == 1 || $OWN_WORK == 0 ]]; then
        log "scratch files kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 1. tools and builds -------------------------------------------------

need() { # need COMMAND [PACKAGE]
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing ${2:-$1}"
    apt-get install -y "${2:-$1}" >"$WORK/apt.log" 2>&1 ||
        { apt-get update >>"$WORK/apt.log" 2>&1 && apt-get install -y "${2:-$1}" >>"$WORK/apt.log" 2>&1; } ||
        die "cannot install ${2:-$1} (see $WORK/apt.log)"
}
need wrk
need jq
need curl
if [[ " $LAYOUTS " == *" pinned "* ]]; then
    need taskset util-linux
    (($(nproc) >= 2)) || die "LAYOUTS=pinned needs two CPUs; use LAYOUTS=shared"
fi

if [[ $SKIP_BUILD != 1 ]]; then
    log "building the server and the driver (release)"
    (cd "$ROOT" && cargo build --release --quiet) || die "server build"
    cargo build --release --quiet --manifest-path "$ROOT/loadtest/driver/Cargo.toml" || die "driver build"
    if [[ $PGO == 1 ]]; then
        log "building the profile-guided server (deploy/pgo-build.sh)"
        bash "$ROOT/deploy/pgo-build.sh" "$SERVER_BIN" >"${TMPDIR:-/tmp}/streamcap-pgo-build.log" 2>&1 ||
            die "profile-guided build failed: see ${TMPDIR:-/tmp}/streamcap-pgo-build.log"
    fi
fi
[[ -x $SERVER_BIN ]] || die "no server binary at $SERVER_BIN"
[[ -x $DRIVER_BIN ]] || die "no driver binary at $DRIVER_BIN"

JITTER_JSON=
if ((JITTER_SECS > 0)); then
    log "wake-up latency of this machine, idle (${JITTER_SECS} s)"
    JITTER_JSON=$("$DRIVER_BIN" jitter --secs "$JITTER_SECS" --json | tail -1)
fi

# ---- helpers --------------------------------------------------------------

SERVER_N=0
start_server() { # sets SERVER_PID, PORT, ADMIN
    SERVER_N=$((SERVER_N + 1))
    local out=$WORK/server$SERVER_N.log
    # Dev mode: no STREAMCAP_* setting may leak in from the caller's environment.
    local unset_env=()
    while IFS='=' read -r name _; do
        [[ $name == STREAMCAP_* ]] && unset_env+=(-u "$name")
    done < <(env)
    env "${unset_env[@]}" "$SERVER_BIN" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --max-poll-secs 3600 >"$out" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 200); do
        grep -q 'listening on' "$out" && break
        kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited: $(tail -5 "$out")"
        sleep 0.05
    done
    PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\),.*/\1/p' "$out")
    ADMIN=$(sed -n 's/.*operator endpoints on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$out")
    [[ -n $PORT && -n $ADMIN ]] || die "cannot read the server's ports from $out"
    ADDR=127.0.0.1:$PORT
    log "server $SERVER_N (pid $SERVER_PID) on $ADDR, operator endpoints on 127.0.0.1:$ADMIN"
}

rss() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$SERVER_PID/status"; }
# Steal time of all CPUs since boot, ms (/proc/stat counts in CLK_TCK);
# nothing where the kernel has no steal column.
USER_HZ=$(getconf CLK_TCK)
steal_ms() { awk -v hz="$USER_HZ" '/^cpu / && NF >= 9 { print int($9 * 1000 / hz) }' /proc/stat; }
# steal_since MS: steal since an earlier steal_ms (nothing if either is unknown).
steal_since() { local now; now=$(steal_ms); if [[ -n $1 && -n $now ]]; then echo $((now - $1)); fi; }
# cores MS SECS: MS of CPU time over SECS seconds, in cores ("nan" if unknown).
cores() { awk -v ms="$1" -v s="$2" 'BEGIN {
    if (ms ~ /^[0-9]+(\.[0-9]+)?$/ && s > 0) printf "%.2f", ms / 1000 / s; else print "nan" }'; }
metric() { curl -sf "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m { print $2; exit }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
per_session() { awk -v r="$1" -v b="$2" -v n="$3" 'BEGIN { if (n > 0) printf "%.1f", (r - b) / n; else print "n/a" }'; }
ceil_div() { echo $((($1 + $2 - 1) / $2)); }
median() {
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
        if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 >= b + 0) }'; }
# bytes_verdict RSS BASE LIVE: the per-session target, judged only from 500k
# sessions on (below that, the allocator's and the table's fixed costs dominate).
bytes_verdict() {
    if (($3 < 500000)); then echo "n/a (< 500k)"; else verdict "$(per_session "$1" "$2" "$3")" "<=" 100; fi
}
verdict() { if awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN {
        if (a == "nan" || a == "n/a") exit 1
        if (op == ">=") exit !(a + 0 >= b + 0); if (op == "<=") exit !(a + 0 <= b + 0)
        if (op == "<") exit !(a + 0 < b + 0); if (op == "==") exit !(a + 0 == b + 0); exit 1 }'; then
    echo yes; else echo NO; fi; }

# Waits for the sweeper (every second) to publish fresh gauges.
settle() { sleep "${1:-3}"; }

# Records held, exact at each scrape (live_sessions is as of the last sweep,
# which on maps of millions runs tens of seconds apart). Before any token
# expires, with no stops, every record is a live session.
held() { metric streamcap_records; }

# wrk_run NAME ARGS...: one wrk run; sets WRK_RPS, WRK_BAD (status > 399),
# WRK_SOCK (socket errors), WRK_STEAL (the machine's steal time over the
# run, cores) and WRK_CPU_US (the server's CPU time, user + system, per
# answered request, µs: what a request costs it, which the host's steal
# does not inflate: this kernel charges no stolen time to a task); the raw
# output stays in WORKDIR.
WRK_N=0
wrk_run() {
    local name=$1
    shift
    WRK_N=$((WRK_N + 1))
    local out=$WORK/wrk-$WRK_N-$name.txt st0 cpu0
    st0=$(steal_ms) cpu0=$(cpu_ticks "$SERVER_PID")
    timeout $((DUR + 300)) "${WRK[@]}" -t1 -c"$WRK_CONNS" -d"${DUR}s" --timeout 10s "$@" >"$out" 2>&1 ||
        die "wrk ($name) failed: $(tail -3 "$out")"
    read -r WRK_RPS WRK_BAD WRK_SOCK WRK_CPU_US < <(awk -v t0="$cpu0" -v t1="$(cpu_ticks "$SERVER_PID")" \
        -v tick="$USER_HZ" '/^Requests\/sec:/ { rps = $2 }
         / requests in / { n = $1 }
         /Non-2xx or 3xx responses:/ { bad = $NF }
         /Socket errors:/ { gsub(",", ""); sock = $4 + $6 + $8 + $10 }
         END { printf "%s %d %d %s\n", (rps == "" ? "nan" : rps), bad, sock,
               (n > 0 ? sprintf("%.2f", (t1 - t0) / tick / n * 1e6) : "nan") }' "$out")
    WRK_STEAL=$(cores "$(steal_since "$st0")" "$DUR")
}

declare -A PHASE_SECS
phase() { # phase NAME: closes the previous phase
    local now
    now=$(date +%s)
    if [[ -n ${PHASE_NAME:-} ]]; then PHASE_SECS[$PHASE_NAME]=$((now - PHASE_T0)); fi
    PHASE_NAME=$1
    PHASE_T0=$now
    if [[ $1 != end ]]; then log "== $1"; fi
}
PHASE_ORDER=()
phase_start() { PHASE_ORDER+=("$1"); phase "$1"; }

# ---- 2-3. server, baseline, preload --------------------------------------

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
phase_start "start server"
start_server
settle 2
RSS_BASE=$(rss)
log "baseline RSS $(mib "$RSS_BASE") MiB"

# Lifetimes of the throughput sessions: from the preload to the end of the
# fixed-rate run, with slack (see the header).
PLAN_A=$(( $(ceil_div "$PRELOAD" 20000) + $(wc -w <<<"$LAYOUTS") * RUNS * 3 * (DUR + 2 + PRELOAD / 200000) + RATE_WARMUP + RATE_SECS + 10 ))
TTL_A=$(( PLAN_A * 5 / 4 + MARGIN ))
POLL_A=$(ceil_div "$TTL_A" 3)
((POLL_A <= 3600)) || die "POLL_A=$POLL_A exceeds the server's --max-poll-secs 3600; shorten RATE_SECS"

phase_start "preload $PRELOAD"
timeout $(( PRELOAD / 1000 + 300 )) "$DRIVER_BIN" preload --addr "$ADDR" --sessions "$PRELOAD" \
    --poll "$POLL_A" --user-prefix p --tokens-out "$WORK/tokens.tsv" --progress 5 --json >"$WORK/preload.txt" ||
    die "preload: $(tail -3 "$WORK/preload.txt")"
shuffle_lines "$WORK/tokens.tsv"
PRELOAD_JSON=$(tail -1 "$WORK/preload.txt")
PRELOAD_RATE=$(jq -r .rate <<<"$PRELOAD_JSON")
PRELOAD_BAD=$(jq -r '.non_201 + .io_errors' <<<"$PRELOAD_JSON")
settle 2
RSS_1=$(rss)
LIVE_1=$(held)
log "preloaded: $(jq -r .created <<<"$PRELOAD_JSON") sessions at $PRELOAD_RATE/s; RSS $(mib "$RSS_1") MiB, sessions $LIVE_1"

# ---- 4. fixed rate, on the preloaded sessions alone -----------------------

phase_start "fixed rate ${RATE}/s x ${RATE_SECS}s"
timeout $(( RATE_WARMUP + RATE_SECS + 120 )) "$DRIVER_BIN" rate --addr "$ADDR" --targets "$WORK/tokens.tsv" \
    --rate "$RATE" --duration "$RATE_SECS" --warmup "$RATE_WARMUP" --conns "$RATE_CONNS" --json \
    >"$WORK/rate.txt" 2>"$WORK/rate.err" || die "rate: $(tail -3 "$WORK/rate.err")"
RATE_JSON=$(tail -1 "$WORK/rate.txt")
grep -v '^{' "$WORK/rate.txt" >&2
q() { jq -r "$1" <<<"$RATE_JSON"; }

CONTROL_JSON=
if ((RATE_CONTROL_SECS > 0)); then
    phase_start "control: GET /healthz at ${RATE}/s x ${RATE_CONTROL_SECS}s"
    printf 'GET\t/healthz\t-\n' >"$WORK/healthz.tsv"
    timeout $(( RATE_WARMUP + RATE_CONTROL_SECS + 120 )) "$DRIVER_BIN" rate --addr "127.0.0.1:$ADMIN" \
        --targets "$WORK/healthz.tsv" --rate "$RATE" --duration "$RATE_CONTROL_SECS" --warmup "$RATE_WARMUP" \
        --conns "$RATE_CONNS" --json >"$WORK/control.txt" 2>"$WORK/control.err" ||
        die "control rate: $(tail -3 "$WORK/control.err")"
    CONTROL_JSON=$(tail -1 "$WORK/control.txt")
fi

# ---- 5. throughput: healthz, heartbeat, start ----------------------------

phase_start "throughput runs"
for r in $(seq $((RUNS * $(wc -w <<<"$LAYOUTS")))); do
    "$DRIVER_BIN" preload --addr "$ADDR" --sessions 0 --poll "$POLL_A" --user-prefix "s$r-" \
        --grants-out "$WORK/grants-$r.tsv" --grants "$START_GRANTS" --progress 0 >/dev/null ||
        die "cannot write grants"
done
# One set of runs per layout: "pinned" puts the server's threads on CPU 0
# and wrk on CPU 1, "shared" lets the scheduler place both on either core.
# Start runs take fresh users from a grants file per run (and layout).
HB_BAD=0 ST_BAD=0 SOCK=0 GRANTS_N=0
declare -A HZ_OF HB_OF ST_OF STEAL_OF CPU_OF
for layout in $LAYOUTS; do
    [[ $layout == pinned || $layout == shared ]] || die "LAYOUTS: unknown layout '$layout' (pinned, shared)"
    WRK=(wrk)
    if [[ $layout == pinned ]]; then
        taskset -a -p -c 0 "$SERVER_PID" >/dev/null || die "taskset: cannot pin the server"
        WRK=(taskset -c 1 wrk)
    fi
    HZ=() HB=() ST=() STEAL=() CPU=()
    for r in $(seq "$RUNS"); do
        GRANTS_N=$((GRANTS_N + 1))
        wrk_run healthz -s "$HEALTHZ_LUA" "http://127.0.0.1:$ADMIN"
        HZ+=("$WRK_RPS") SOCK=$((SOCK + WRK_SOCK)) steal_run=$WRK_STEAL cpu_run=$WRK_CPU_US
        wrk_run heartbeat -s "$POST_LUA" "http://$ADDR" -- "$WORK/tokens.tsv"
        HB+=("$WRK_RPS") HB_BAD=$((HB_BAD + WRK_BAD)) SOCK=$((SOCK + WRK_SOCK)) steal_run+=/$WRK_STEAL
        cpu_run+=/$WRK_CPU_US
        wrk_run start -s "$POST_LUA" "http://$ADDR" -- "$WORK/grants-$GRANTS_N.tsv"
        ST+=("$WRK_RPS") ST_BAD=$((ST_BAD + WRK_BAD)) SOCK=$((SOCK + WRK_SOCK)) steal_run+=/$WRK_STEAL
        cpu_run+=/$WRK_CPU_US
        STEAL+=("$steal_run") CPU+=("$cpu_run")
        rm -f "$WORK/grants-$GRANTS_N.tsv"
        log "$layout run $r: healthz ${HZ[-1]}/s, heartbeat ${HB[-1]}/s, start ${ST[-1]}/s; steal $steal_run cores"
    done
    HZ_OF[$layout]=${HZ[*]} HB_OF[$layout]=${HB[*]} ST_OF[$layout]=${ST[*]} STEAL_OF[$layout]=${STEAL[*]}
    CPU_OF[$layout]=${CPU[*]}
    if [[ $layout == pinned ]]; then
        taskset -a -p -c "0-$(($(nproc) - 1))" "$SERVER_PID" >/dev/null || die "taskset: cannot unpin the server"
    fi
done
rm -f "$WORK"/grants-*.tsv "$WORK/tokens.tsv"
# Every session of steps 3-5 was last started or renewed by now.
EXPIRE_BY=$(( $(date +%s) + 3 * POLL_A ))

# ---- 6. memory -------------------------------------------------------------

MEM_ROWS=()
GROW_WORST=
GROW_WORST_LAG=
GROW_OVER=0
GROW_WINDOWS=0
GROW_CTL_WORST=0
GROW_CTL_OVER=0
GROW_CTL_BOTH=0
GROW_BURST=0
GROW_NEITHER=0
IDLE_CPU=
if [[ $SKIP_MEMORY != 1 ]]; then
    STEPS=()
    for s in $MEM_STEPS; do
        if ((s < SESSIONS_MAX)); then STEPS+=("$s"); fi
    done
    STEPS+=("$SESSIONS_MAX")
    # Lifetime of the memory sessions: three times the growth predicted from
    # the 1M preload rate (growth under heartbeats is slower: six times).
    rate_for_plan=$(awk -v r="$PRELOAD_RATE" 'BEGIN { r = int(r); print (r > 1000 ? r : 1000) }')
    factor=3
    if [[ $GROW == 1 ]]; then factor=6; fi
    TTL_M=$(( factor * SESSIONS_MAX / rate_for_plan + MARGIN + 30 ))
    POLL_M=$(ceil_div "$TTL_M" 3)
    ((POLL_M <= 3600)) || POLL_M=3600

    if [[ $GROW == 1 ]]; then
        phase_start "grow 0 -> $SESSIONS_MAX under ${GROW_RATE} heartbeats/s (fresh server)"
        stop_server
        EXPIRE_BY=0
        start_server
        settle 2
        RSS_BASE_A=$RSS_BASE
        RSS_BASE=$(rss)
        MEM_ROWS+=("baseline RSS, fresh server (MiB)|$(mib "$RSS_BASE")|first server: $(mib "$RSS_BASE_A")||")
        "$DRIVER_BIN" preload --addr "$ADDR" --sessions "$GROW_BEATS" --poll "$POLL_M" --user-prefix b \
            --tokens-out "$WORK/beats.tsv" --progress 0 >/dev/null || die "preload of the heartbeat sessions"
        shuffle_lines "$WORK/beats.tsv"
        GROW_STEPS=()
        if ((PRELOAD < STEPS[0])); then GROW_STEPS+=("$PRELOAD"); fi
        GROW_STEPS+=("${STEPS[@]}")
        CONTROL_ARGS=()
        if awk -v r="$GROW_CONTROL_RATE" 'BEGIN { exit !(r > 0) }'; then
            CONTROL_ARGS=(--control-addr "127.0.0.1:$ADMIN" --control-rate "$GROW_CONTROL_RATE")
        fi
        leg=0
        for target in "${GROW_STEPS[@]}"; do
            leg=$((leg + 1))
            n=$(( target - $(held) ))
            ((n > 0)) || continue
            timeout $(( n / 500 + 300 )) "$DRIVER_BIN" grow --addr "$ADDR" --sessions "$n" \
                --beat-targets "$WORK/beats.tsv" --beat-rate "$GROW_RATE" --poll "$POLL_M" \
                --start-rate "$GROW_START_RATE" --user-prefix "g$leg-" --progress 10 "${CONTROL_ARGS[@]}" --json \
                >"$WORK/grow-$leg.txt" || die "grow: $(tail -3 "$WORK/grow-$leg.txt")"
            gj=$(tail -1 "$WORK/grow-$leg.txt")
            w=$(jq -r .worst_window_p999_ms <<<"$gj")
            GROW_OVER=$((GROW_OVER + $(jq -r .windows_over_threshold <<<"$gj")))
            GROW_BURST=$((GROW_BURST + $(jq -r '.over_with_steal_burst // 0' <<<"$gj")))
            GROW_WINDOWS=$((GROW_WINDOWS + $(jq -r .windows <<<"$gj")))
            if ((${#CONTROL_ARGS[@]})); then
                cw=$(jq -r .control.worst_window_p999_ms <<<"$gj")
                if ge "$cw" "$GROW_CTL_WORST"; then GROW_CTL_WORST=$cw; fi
                GROW_CTL_OVER=$((GROW_CTL_OVER + $(jq -r .control.windows_over_threshold <<<"$gj")))
                GROW_CTL_BOTH=$((GROW_CTL_BOTH + $(jq -r .control.over_in_both <<<"$gj")))
                GROW_NEITHER=$((GROW_NEITHER + $(jq -r '.control.over_unexplained // 0' <<<"$gj")))
            fi
            if [[ -z $GROW_WORST ]] || ge "$w" "$GROW_WORST"; then
                GROW_WORST=$w
                GROW_WORST_LAG=$(jq -r .worst_window_send_lag_max_ms <<<"$gj")
            fi
            settle 2
            r=$(rss)
            l=$(held)
            MEM_ROWS+=("RSS at $target (MiB) / bytes per session|$(mib "$r") / $(per_session "$r" "$RSS_BASE" "$l")|sessions $l; grow $(jq -r .preload.rate <<<"$gj")/s, beats p99 $(jq -r .p99_ms <<<"$gj") ms, worst 1-s p99.9 $w ms|<= 100 B|$(bytes_verdict "$r" "$RSS_BASE" "$l")")
            log "grow leg $leg: sessions $l, RSS $(mib "$r") MiB, worst window p99.9 $w ms"
        done
    else
        phase_start "memory: preload on to ${STEPS[*]}"
        k=0
        for target in "${STEPS[@]}"; do
            k=$((k + 1))
            n=$(( target - $(held) ))
            rate_k="- (already there)"
            if ((n > 0)); then
                timeout $(( n / 1000 + 300 )) "$DRIVER_BIN" preload --addr "$ADDR" --sessions "$n" \
                    --poll "$POLL_M" --user-prefix "m$k-" --progress 10 --json >"$WORK/mem-$k.txt" ||
                    die "preload to $target: $(tail -3 "$WORK/mem-$k.txt")"
                rate_k=$(tail -1 "$WORK/mem-$k.txt" | jq -r .rate)
            fi
            settle 2
            r=$(rss)
            l=$(held)
            ok=$(awk -v l="$l" -v t="$target" 'BEGIN { print (l >= 0.98 * t) ? "" : " (fewer than planned: expired?)" }')
            MEM_ROWS+=("RSS at $target (MiB) / bytes per session|$(mib "$r") / $(per_session "$r" "$RSS_BASE" "$l")|sessions $l$ok; preload $rate_k/s, poll $POLL_M s|<= 100 B|$(bytes_verdict "$r" "$RSS_BASE" "$l")")
            log "at $target: sessions $l, RSS $(mib "$r") MiB"
        done
    fi
    now=$(date +%s)
    if ((now + 3 * POLL_M > EXPIRE_BY)); then EXPIRE_BY=$((now + 3 * POLL_M)); fi
    # Idle CPU with the map at its largest is read over the expiry wait,
    # from its start until the first record goes: no traffic, only the
    # sweeper's passes, each followed by a pause of at least 49 times its own
    # busy time, so a short window would catch a whole pass or none of it.
    IDLE_C0=$(cpu_ticks "$SERVER_PID") IDLE_T0=$(date +%s) IDLE_FULL=$(held)

    # ---- 7. expiry --------------------------------------------------------
    phase_start "expiry wait (until ~$(( EXPIRE_BY - $(date +%s) )) s from now)"
    deadline=$(( EXPIRE_BY + 120 ))
    last_log=0
    # Records and RSS every 5 s until 120 s after the last record went.
    TRACE=$WORK/expiry-trace.tsv
    echo -e "unix_s\trecords\trss_bytes" >"$TRACE"
    # trace [RECORDS]: one line; RECORDS when the caller has just read them.
    trace() { echo -e "$(date +%s)\t${1:-$(metric streamcap_records)}\t$(rss)" >>"$TRACE"; }
    while :; do
        left=$(metric streamcap_records)
        trace "$left"
        if [[ -z $IDLE_CPU && ${left:-0} -lt $IDLE_FULL ]]; then
            IDLE_SECS=$(($(date +%s) - IDLE_T0))
            IDLE_CPU=$(awk -v d=$(($(cpu_ticks "$SERVER_PID") - IDLE_C0)) -v hz="$USER_HZ" -v s="$IDLE_SECS" \
                'BEGIN { printf "%.1f", (s > 0 ? 100 * d / hz / s : 0) }')
        fi
        [[ ${left:-1} == 0 ]] && break
        now=$(date +%s)
        ((now >= deadline)) && { log "expiry wait gave up with $left records left"; break; }
        if ((now - last_log >= 60)); then
            log "waiting for expiry: $left records left, ~$(( EXPIRE_BY - now )) s to the planned expiry"
            last_log=$now
        fi
        sleep 5
    done
    # The sweeper has the allocator release memory on the pass that saw the
    # last records go and on the pass after; idle workers as they next park.
    # Read 30 s after, and again 90 s later: on maps of millions the pass
    # that lets go of the emptied map can come later than 30 s.
    for _ in 1 2 3 4 5 6; do settle 5; trace; done
    RSS_AFTER=$(rss)
    RECORDS_AFTER=$(metric streamcap_records)
    for _ in $(seq 18); do settle 5; trace; done
    RSS_AFTER_LATE=$(rss)
    log "records and RSS every 5 s since the expiry wait began: $TRACE"
    # What is still resident, by mapping (kB; transparent huge pages beside).
    awk '/^[0-9a-f]+-[0-9a-f]+ / { m = $1 " " $6 } /^Rss:/ { r = $2 } /^AnonHugePages:/ { if (r > 1024) print r, $2, m }' \
        "/proc/$SERVER_PID/smaps" | sort -rn | head -8 >"$WORK/smaps-after.txt"
    log "largest mappings after expiry (RSS kB, of it huge pages kB, range, name):"
    sed 's/^/    /' "$WORK/smaps-after.txt" >&2
fi
phase end

# ---- the table ---------------------------------------------------------------

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
RSS_BASE_FIRST=${RSS_BASE_A:-$RSS_BASE}
TABLE=$WORK/table.md
{
    echo
    echo "streamcap benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || echo ' + uncommitted changes')"
    echo "RUNS=$RUNS DUR=${DUR}s WRK_CONNS=$WRK_CONNS PRELOAD=$PRELOAD RATE=$RATE RATE_SECS=$RATE_SECS MEM_STEPS='$MEM_STEPS' GROW=$GROW QUICK=$QUICK PGO=$PGO"
    echo "load average before: $LOAD_START; after: $LOAD_END"
    echo
    echo "| metric | value | runs / detail | target | ok |"
    echo "|---|---|---|---|---|"
    if [[ -n $JITTER_JSON ]]; then
        jt() { jq -r "$1" <<<"$JITTER_JSON"; }
        echo "| machine: wake-up overshoot of a 200 µs sleep, idle, p50 / p99 / p99.9 / max (ms) | $(jt .p50_ms) / $(jt .p99_ms) / $(jt .p999_ms) / $(jt .max_ms) | $(jt .sleeps) sleeps in $(jt .secs) s (streamcap-driver jitter); steal $(cores "$(jt '.steal_ms // "nan"')" "$(jt .secs)") cores |  | |"
    fi
    echo "| baseline RSS (MiB) | $(mib "$RSS_BASE_FIRST") | dev mode, no sessions | | |"
    echo "| preload $PRELOAD (sessions/s) | $PRELOAD_RATE | non-201 or i/o errors: $PRELOAD_BAD; poll $POLL_A s | | $(verdict "$PRELOAD_BAD" "==" 0) |"
    echo "| RSS at $PRELOAD (MiB) / bytes per session | $(mib "$RSS_1") / $(per_session "$RSS_1" "$RSS_BASE_FIRST" "$LIVE_1") | sessions $LIVE_1 | <= 100 B | $(bytes_verdict "$RSS_1" "$RSS_BASE_FIRST" "$LIVE_1") |"
    for layout in $LAYOUTS; do
        read -ra HZ <<<"${HZ_OF[$layout]}"
        read -ra HB <<<"${HB_OF[$layout]}"
        read -ra ST <<<"${ST_OF[$layout]}"
        HZ_MED=$(median "${HZ[@]}") HB_MED=$(median "${HB[@]}") ST_MED=$(median "${ST[@]}")
        HB_RATIOS=() ST_RATIOS=()
        for i in "${!HZ[@]}"; do
            HB_RATIOS+=("$(ratio "${HB[$i]}" "${HZ[$i]}")")
            ST_RATIOS+=("$(ratio "${ST[$i]}" "${HB[$i]}")")
        done
        HB_RATIO=$(ratio "$HB_MED" "$HZ_MED") ST_RATIO=$(ratio "$ST_MED" "$HB_MED")
        if [[ $layout == pinned ]]; then where="server on CPU 0, wrk on CPU 1"; else where="both on either core"; fi
        echo "| $layout: healthz, wrk -t1 -c$WRK_CONNS (req/s, median) | $HZ_MED | ${HZ[*]} ($where) | | |"
        echo "| $layout: heartbeat, post.lua over tokens (req/s, median) | $HB_MED | ${HB[*]} | | |"
        echo "| $layout: start, post.lua over grants (req/s, median) | $ST_MED | ${ST[*]} | | |"
        echo "| $layout: heartbeat / healthz | $HB_RATIO | per run: ${HB_RATIOS[*]} | >= 0.85 | $(verdict "$HB_RATIO" ">=" 0.85) |"
        echo "| $layout: start / heartbeat | $ST_RATIO | per run: ${ST_RATIOS[*]} | >= 0.50 | $(verdict "$ST_RATIO" ">=" 0.50) |"
        echo "| $layout: machine steal, healthz/heartbeat/start (cores) | | per run: ${STEAL_OF[$layout]} | | |"
        CPU_HZ=() CPU_HB=() CPU_ST=() CPU_RATIOS=()
        for run in ${CPU_OF[$layout]}; do
            IFS=/ read -r hz_us hb_us st_us <<<"$run"
            CPU_HZ+=("$hz_us") CPU_HB+=("$hb_us") CPU_ST+=("$st_us") CPU_RATIOS+=("$(ratio "$hz_us" "$hb_us")")
        done
        echo "| $layout: server CPU per request, healthz/heartbeat/start (µs, median) | $(median "${CPU_HZ[@]}") / $(median "${CPU_HB[@]}") / $(median "${CPU_ST[@]}") | per run: ${CPU_OF[$layout]} | | |"
        echo "| $layout: CPU per healthz / CPU per heartbeat | $(ratio "$(median "${CPU_HZ[@]}")" "$(median "${CPU_HB[@]}")") | per run: ${CPU_RATIOS[*]} | | |"
    done
    echo "| failed answers in the throughput runs | $((HB_BAD + ST_BAD)) | heartbeats non-200: $HB_BAD; starts non-201: $ST_BAD | 0 | $(verdict "$((HB_BAD + ST_BAD))" "==" 0) |"
    echo "| wrk socket errors (all runs) | $SOCK | | 0 | $(verdict "$SOCK" "==" 0) |"
    echo "| fixed rate: achieved (req/s) | $(q .achieved_rps) | $(q .answered) of $(q .sent) answered in $(q .measured_secs) s at $RATE/s, $RATE_CONNS conns | $RATE | |"
    echo "| fixed rate: latency p50 / p90 / p99.9 / max (ms) | $(q .p50_ms) / $(q .p90_ms) / $(q .p999_ms) / $(q .max_ms) | from intended send (CO-corrected); generator lag p99 $(q .send_lag_p99_ms) ms | | |"
    echo "| fixed rate: p99 (ms) | $(q .p99_ms) | service time p99 $(q .service_p99_ms) ms; worst 1-s p99.9 $(q .worst_window_p999_ms) ms | < 5 | $(verdict "$(q .p99_ms)" "<" 5) |"
    echo "| fixed rate: errors | $(q .errors) | non-2xx $(q .non_2xx), i/o $(q .io_errors), unanswered $(q .unanswered), not sent $(q .not_sent) | 0 | $(verdict "$(q .errors)" "==" 0) |"
    # Steal in the 1-s windows whose p99.9 is above 20 ms, against the rest:
    # the mean per window, and how many had one CPU lose >= 50 ms to the host
    # within 150 ms (streamcap-driver's steal burst).
    # shellcheck disable=SC2016  # (a jq program: $span is jq's)
    steal_split='def mean: if length == 0 then "-" else (add / length | round) end;
        def part(f): map(select(.[0] | f)) | "mean \(map(.[1]) | mean) ms/s, \(map(select(.[2] >= 50)) | length) with a burst";
        (.steal_burst_span_ms // 150) as $span
        | [.windows_p999_ms, .windows_steal_ms, .windows_steal_burst_ms] | transpose | map(select(.[1] != null))
        | "\(map(select(.[0] > 20)) | length) windows with p99.9 > 20 ms: \(part(. > 20)); the other \(map(select(.[0] <= 20)) | length): \(part(. <= 20)) (burst: one CPU lost >= 50 ms within \($span) ms)"'
    echo "| fixed rate: machine steal (cores) | $(cores "$(q '.steal_ms // "nan"')" "$(q .measured_secs)") | $(q "$steal_split") | | |"
    if [[ -n $CONTROL_JSON ]]; then
        c() { jq -r "$1" <<<"$CONTROL_JSON"; }
        echo "| control: GET /healthz at $RATE/s, $RATE_CONNS conns, p50 / p90 / p99 / p99.9 (ms) | $(c .p50_ms) / $(c .p90_ms) / $(c .p99_ms) / $(c .p999_ms) | $(c .measured_secs) s on the operator port, errors $(c .errors); generator lag p99 $(c .send_lag_p99_ms) ms; steal $(cores "$(c '.steal_ms // "nan"')" "$(c .measured_secs)") cores | | |"
    fi
    if [[ $SKIP_MEMORY != 1 ]]; then
        for m in "${MEM_ROWS[@]}"; do
            IFS='|' read -r a b c d e <<<"$m"
            echo "| $a | $b | $c | $d | $e |"
        done
        if [[ $GROW == 1 ]]; then
            echo "| grow: worst 1-s heartbeat p99.9 (ms) | $GROW_WORST | $GROW_OVER of $GROW_WINDOWS windows above 20 ms, $GROW_BURST of them with a vCPU losing >= 50 ms to the host within 150 ms; $GROW_RATE beats/s; generator send lag max in that window $GROW_WORST_LAG ms | <= 20 | $(verdict "$GROW_WORST" "<=" 20) |"
            if ((${#CONTROL_ARGS[@]})); then
                echo "| grow, control: worst 1-s p99.9 of GET /healthz (ms) | $GROW_CTL_WORST | $GROW_CTL_OVER windows above 20 ms; $GROW_CTL_BOTH of the $GROW_OVER heartbeat windows above 20 ms had the control above it too; $GROW_NEITHER had neither the control above 20 ms nor a host burst; $GROW_CONTROL_RATE/s | | |"
            fi
        fi
        echo "| idle CPU at $SESSIONS_MAX sessions (% of a core) | $IDLE_CPU | over ${IDLE_SECS:-?} s without traffic, until the first record expired (the sweeper's paced passes) | | |"
        echo "| RSS after expiry (MiB), 30 s after the last record went | $(mib "$RSS_AFTER") | 120 s after: $(mib "$RSS_AFTER_LATE") MiB; baseline $(mib "$RSS_BASE") MiB; records left $RECORDS_AFTER; poll $POLL_M s | ~ baseline | |"
    fi
    echo
    printf 'phases:'
    for p in "${PHASE_ORDER[@]}"; do printf ' %s %ss;' "$p" "${PHASE_SECS[$p]:-?}"; done
    printf ' total %ss\n' $(($(date +%s) - BENCH_START))
} >"$TABLE"
cat "$TABLE"
if [[ -n ${OUT:-} ]]; then cp "$TABLE" "$OUT"; fi
exit 0
