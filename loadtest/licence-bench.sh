#!/usr/bin/env bash
# The licence gate's benchmark (docs/spec.md §10): licence requests through
# streamcap to a local licence server that answers at once, beside
# heartbeats and beside calling that licence server directly, in one run.
#
#   bash loadtest/licence-bench.sh               # RUNS=3 rounds of DUR=10 s per route, ~2 min
#   RUNS=5 DUR=20 bash loadtest/licence-bench.sh
#
# Everything runs on 127.0.0.1, on free ports:
#   1. build the server and loadtest/driver (release) unless built;
#   2. start `streamcap-driver upstream` (one thread; every request gets 200
#      and ANSWER_BYTES bytes at once) and the server with a config whose
#      tenant `bench` has a ClearKey upstream on it, with an injected header
#      that uses placeholders (rendered on every request, as in production);
#   3. preload SESSIONS sessions (poll 3600 s) and write their heartbeat targets;
#   4. RUNS rounds, the three routes interleaved in each, each wrk -t1
#      -c$CONNS -d${DUR}s: heartbeats (wrk/post.lua), licence requests with a
#      BYTES-byte challenge through the gate (wrk/licence.lua), and the same
#      requests sent to the licence server itself (wrk/licence.lua at the
#      upstream's address);
#   5. the median requests/s of each route, and the ratios licence/heartbeat
#      and licence/direct. Every answer must be 2xx (wrk's count of status
#      >= 400 is printed per run and must be 0).
# The three processes (wrk, streamcap, the upstream) share the machine's
# cores as the scheduler sees fit: a licence request costs streamcap a
# heartbeat plus a client round trip, and the upstream its own work, so the
# licence/direct ratio is what putting the gate in front of a licence server
# that costs nothing leaves of that server's throughput on the same cores.
#
# Environment (defaults in brackets): RUNS [3], DUR [10] seconds, CONNS [64]
# wrk connections, SESSIONS [20000], BYTES [2048] challenge bytes,
# ANSWER_BYTES [1024] licence bytes, WORKDIR [a fresh temp dir, removed at the end].
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3} DUR=${DUR:-10} CONNS=${CONNS:-64} SESSIONS=${SESSIONS:-20000}
BYTES=${BYTES:-2048} ANSWER_BYTES=${ANSWER_BYTES:-1024}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/streamcap
DRIVER=$ROOT/loadtest/driver/target/release/streamcap-driver
source "$ROOT/loadtest/profile/lib.sh"

die() { echo "licence-bench: $*" >&2; exit 1; }
command -v wrk >/dev/null || die "wrk is not installed (apt-get install wrk)"
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --bin streamcap)
[ -x "$DRIVER" ] || (cd "$ROOT/loadtest/driver" && cargo build --release)

WORKDIR=${WORKDIR:-$(mktemp -d)}
mkdir -p "$WORKDIR"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP_WORKDIR:-}" ] || rm -rf "$WORKDIR"
}
trap cleanup EXIT

UP=$(port) PORT=$(port) ADMIN=$(port)
"$DRIVER" upstream --listen "127.0.0.1:$UP" --answer-bytes "$ANSWER_BYTES" 2>"$WORKDIR/upstream.log" &
PIDS+=($!)
TENANT_KEY=$("$BIN" keygen)
cat >"$WORKDIR/streamcap.toml" <<TOML
max_poll_secs = 3600

[[server_keys]]
kid = "s1"
secret = "$("$BIN" keygen)"

[[tenants]]
id = "bench"
keys = [{ kid = "k1", secret = "$TENANT_KEY" }]
[tenants.licence.clearkey]
upstream = "http://127.0.0.1:$UP/licence"
headers = { "X-Vendor-Auth" = "bench-secret-{tenant}-{user}-{session_id}" }
TOML
"$BIN" --config "$WORKDIR/streamcap.toml" --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" \
    2>"$WORKDIR/streamcap.log" &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN/healthz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$ADMIN/healthz" >/dev/null || die "the server did not start: $(cat "$WORKDIR/streamcap.log")"

STREAMCAP_MINT_KEY=$TENANT_KEY "$DRIVER" preload --addr "127.0.0.1:$PORT" --sessions "$SESSIONS" --poll 3600 \
    --tenant bench --tokens-out "$WORKDIR/tokens.tsv" --progress 0 >/dev/null
shuffle_lines "$WORKDIR/tokens.tsv"

# run NAME URL SCRIPT ARGS...: one wrk run; appends "NAME rps" to results.
run() {
    local name=$1 url=$2 script=$3; shift 3
    local out
    out=$(wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$script" "$url" -- "$@")
    local rps failed
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    failed=$(awk -F': ' '/^failed answers/ { print $2 }' <<<"$out")
    [ -n "$rps" ] || die "no Requests/sec from wrk: $out"
    [ "${failed:-1}" = 0 ] || die "$name: $failed answers failed: $out"
    grep -q "Socket errors" <<<"$out" && die "$name: socket errors: $out"
    printf '%-10s round %d: %10.0f req/s\n' "$name" "$round" "$rps" >&2
    echo "$name $rps" >>"$WORKDIR/results"
}

for round in $(seq "$RUNS"); do
    run heartbeat "http://127.0.0.1:$PORT" "$ROOT/loadtest/wrk/post.lua" "$WORKDIR/tokens.tsv"
    run licence "http://127.0.0.1:$PORT" "$ROOT/loadtest/wrk/licence.lua" "$WORKDIR/tokens.tsv" "$BYTES"
    run direct "http://127.0.0.1:$UP" "$ROOT/loadtest/wrk/licence.lua" "$WORKDIR/tokens.tsv" "$BYTES"
done

forwarded=$(curl -s "http://127.0.0.1:$ADMIN/metrics" |
    awk '/^streamcap_licence_requests_total\{system="clearkey",outcome="forwarded_2xx"\}/ { print $2 }')
python3 - "$WORKDIR/results" "$RUNS" "$DUR" "$CONNS" "$SESSIONS" "$BYTES" "$ANSWER_BYTES" "${forwarded:-0}" <<'PY'
import statistics, sys
path, runs, dur, conns, sessions, body, answer, forwarded = sys.argv[1:]
rows = {}
for line in open(path):
    name, rps = line.split()
    rows.setdefault(name, []).append(float(rps))
med = {k: statistics.median(v) for k, v in rows.items()}
print(f"licence gate benchmark: {runs} rounds x {dur} s per route, wrk -t1 -c{conns}, "
      f"{sessions} sessions, {body}-byte challenges, {answer}-byte licences")
print(f"{'route':<44} {'req/s (median)':>15}  runs")
for name, label in [("heartbeat", "heartbeat"), ("licence", "licence request through the gate"),
                    ("direct", "the same request straight to the upstream")]:
    runs_text = " ".join(f"{x:.0f}" for x in rows[name])
    print(f"{label:<44} {med[name]:>15.0f}  {runs_text}")
print(f"licence / heartbeat: {med['licence'] / med['heartbeat']:.2f}")
print(f"licence / direct:    {med['licence'] / med['direct']:.2f}")
print(f"forwarded_2xx counted by the server: {forwarded}")
PY
