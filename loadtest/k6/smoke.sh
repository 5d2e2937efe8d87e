#!/usr/bin/env bash
# Smoke check of the k6 player script, run for real on the Node k6 shim
# against a throwaway streamcap server on 127.0.0.1. Bounded: about 15 s when
# the binary exists (it is built with `cargo build` only when missing).
#
#   bash loadtest/k6/smoke.sh                 # from anywhere in the repo
#   STREAMCAP_BIN=target/release/streamcap bash loadtest/k6/smoke.sh
#
# Steps: syntax-check player.js and the shim; start the server in dev mode on
# free 127.0.0.1 ports; mint grants (some users over their limit under
# reject_new -> 409s, some under evict_oldest -> 410s); run player.js on the
# shim; require every threshold to pass, 409s, 410s and renewed heartbeats to
# have happened, and the server's /metrics to agree with the client's counts;
# run once more with an impossible threshold and require the shim to fail
# (exit 99); stop the server (also on any failure, by the EXIT trap).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$(pwd)
K6_DIR=loadtest/k6
SHIM=$K6_DIR/shim/k6-run.mjs
BIN=${STREAMCAP_BIN:-target/debug/streamcap}

say() { printf 'smoke: %s\n' "$*"; }
die() { printf 'smoke: FAIL: %s\n' "$*" >&2; exit 1; }

# The server and mint must run in dev mode, whatever this shell has set.
for v in $(compgen -e); do
  case $v in STREAMCAP_BIN) ;; STREAMCAP_*) unset "$v" ;; esac
done

command -v node >/dev/null || die "node (20+) is required"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "node 20+ is required, found $(node --version)"
command -v curl >/dev/null || die "curl is required"

say "syntax check"
node --check "$K6_DIR/player.js"
for f in "$K6_DIR"/shim/*.mjs "$K6_DIR"/shim/modules/*.mjs; do node --check "$f"; done

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
  node -e '
    const net = require("net");
    const one = () => new Promise((ok, ko) => {
      const s = net.createServer().on("error", ko);
      s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => ok(p)); });
    });
    (async () => { const a = await one(); let b; do { b = await one(); } while (b === a); console.log(a, b); })();'
}

http_get() { curl --noproxy '*' -fsS --max-time 2 "$1"; }

# Start the server; retry with new ports if one was taken meanwhile.
for attempt in 1 2 3; do
  read -r PORT ADMIN_PORT < <(free_ports)
  "$BIN" --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" >"$TMP/server.log" 2>&1 &
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

say "run: 16 VUs x 2 iterations x 2 heartbeats"
set +e
timeout -k 5 45 node "$SHIM" -q --include-system-env-vars=false -e "BASE_URL=$BASE_URL" -e "GRANTS=$GRANTS" -e VUS=16 -e ITERATIONS=2 \
  -e BEATS=2 -e MAX_DURATION=40s --summary-json "$TMP/summary.json" "$K6_DIR/player.js"
rc=$?
set -e
[ "$rc" -eq 0 ] || die "the shim run failed (exit $rc)"

http_get "http://127.0.0.1:$ADMIN_PORT/metrics" >"$TMP/metrics.txt"

# Client summary vs expectations and vs the server's own counters.
node - "$TMP/summary.json" "$TMP/metrics.txt" <<'EOF'
const fs = require('fs');
const sum = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const prom = fs.readFileSync(process.argv[3], 'utf8');
const count = (m) => (sum.metrics[m] ? sum.metrics[m].values.count : 0);
const server = (name, label) => {
  let total = 0;
  for (const line of prom.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m && m[1] === name && (!label || (m[2] || '').includes(label))) total += Number(m[3]);
  }
  return total;
};
const problems = [];
const need = (ok, what) => { if (!ok) problems.push(what); };
need(sum.passed === true, 'summary says the run did not pass');
for (const t of sum.thresholds) need(t.ok, `threshold ${t.metric} ${t.expression} failed (value ${t.value})`);
need(count('http_reqs') > 0, 'no HTTP requests');
need(count('starts_admitted') > 0, 'no start was admitted');
need(count('starts_rejected') > 0, 'no start got 409 (users over their limit)');
need(count('heartbeats_ok') > 0, 'no heartbeat was renewed');
need(count('heartbeats_stopped') > 0, 'no heartbeat got 410 (evicted sessions)');
need(count('stops_ok') > 0, 'no stop got 204');
need(sum.iteration_errors === 0, `${sum.iteration_errors} iterations threw`);
const pairs = [
  ['starts admitted', count('starts_admitted'), server('streamcap_starts_admitted_total')],
  ['starts rejected (limit_reached)', count('starts_rejected'), server('streamcap_starts_rejected_total', 'reason="limit_reached"')],
  ['heartbeats renewed', count('heartbeats_ok'), server('streamcap_heartbeats_ok_total')],
  ['heartbeats answered 410', count('heartbeats_stopped'), server('streamcap_heartbeats_stopped_total')],
];
for (const [what, client, srv] of pairs) {
  console.log(`smoke: ${what}: client ${client}, server ${srv}`);
  need(client === srv, `${what}: the client counted ${client}, the server's /metrics says ${srv}`);
}
need(server('streamcap_heartbeats_ok_total') > 0, "the server's /metrics shows no heartbeats");
const c = sum.metrics.checks.values;
const d = sum.metrics.http_req_duration.values;
console.log(`smoke: ${count('http_reqs')} requests, checks ${c.passes}/${c.passes + c.fails}, ` +
  `http_req_duration p(99) ${d['p(99)'].toFixed(2)} ms, thresholds ${sum.thresholds.filter((t) => t.ok).length}/${sum.thresholds.length} passed`);
if (problems.length) {
  for (const p of problems) console.error(`smoke: FAIL: ${p}`);
  process.exit(1);
}
EOF

say "negative run: an impossible threshold (P99_MS=0.001) must fail the shim"
set +e
timeout -k 5 30 node "$SHIM" -q --include-system-env-vars=false -e "BASE_URL=$BASE_URL" -e "GRANTS=$GRANTS" -e VUS=2 -e ITERATIONS=1 \
  -e BEATS=1 -e P99_MS=0.001 "$K6_DIR/player.js" >"$TMP/negative.out" 2>&1
rc=$?
set -e
[ "$rc" -eq 99 ] || { cat "$TMP/negative.out"; die "expected exit 99 (threshold crossed), got $rc"; }
grep -q '✗ http_req_duration p(99)<0.001' "$TMP/negative.out" || { cat "$TMP/negative.out"; die "the failed threshold is not reported"; }
say "negative run failed as it should (exit 99: http_req_duration p(99)<0.001 crossed)"

stop_server
[ "$SERVER_STATUS" -eq 0 ] || say "warning: the server exited with status $SERVER_STATUS on SIGTERM (SPEC §8: 0)"
say "PASS"
