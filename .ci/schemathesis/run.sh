#!/usr/bin/env bash
# Holds the real server to docs/openapi.yaml with Schemathesis: generated
# requests for every operation, each answer checked for no 5xx, a documented
# status, a body matching its schema, its content type and its documented
# headers. Bounded: fixed seed, fixed examples per operation, one worker.
#
#   bash .ci/schemathesis/run.sh          # STREAMCAP_BIN overrides target/debug/streamcap
#   bash .ci/schemathesis/run.sh --checks all --max-examples 300   # more, by hand
#
# Installs Schemathesis (pinned, requirements.txt) into a virtual environment
# ($SCHEMATHESIS_VENV, default target/schemathesis-venv), starts a small
# licence server (licence-upstream.py) and the binary with a configuration
# file written for the run (fresh random keys; one tenant whose ClearKey,
# Widevine and PlayReady licences go to that licence server, FairPlay to
# none), all on free loopback ports, and runs `st run` with the hooks of
# streamcap_hooks.py (real grants from `streamcap mint --config`, and lease
# tokens from real starts). Then prints how often each operation answered
# each status and fails unless the run reached the answers that need real
# credentials (200, 201, 204, 403, 409, 410), not only 401, and licences
# through the gate (a 2xx of the licence route) as well as its 410.
# Reports (JUnit, NDJSON, and requests.log: one line per request with its
# credential kind) go to target/schemathesis-report/.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/../.."

SEED=${SCHEMATHESIS_SEED:-20260}
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-100}
# SCHEMATHESIS_PORT, SCHEMATHESIS_UPSTREAM_PORT: the server's and the licence
# server's ports (default: any free ones).

bin=${STREAMCAP_BIN:-target/debug/streamcap}
[ -x "$bin" ] || cargo build -q
bin=$(realpath "$bin")

venv=${SCHEMATHESIS_VENV:-target/schemathesis-venv}
if ! cmp -s "$here/requirements.txt" "$venv/.requirements.txt" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv" 2>/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$venv/.requirements.txt"
fi
"$venv/bin/st" --version

work=$(mktemp -d)
server_pid=
upstream_pid=
cleanup() {
  for pid in $server_pid $upstream_pid; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# The licence server behind the gate: 200 and a binary licence for every POST.
python3 "$here/licence-upstream.py" "$work/upstream.port" "$work/upstream.count" "${SCHEMATHESIS_UPSTREAM_PORT:-0}" \
  2>"$work/upstream.log" &
upstream_pid=$!
for _ in $(seq 100); do
  [ -s "$work/upstream.port" ] && break
  kill -0 "$upstream_pid" 2>/dev/null || { cat "$work/upstream.log"; echo "the licence server did not start" >&2; exit 1; }
  sleep 0.1
done
upstream_port=$(cat "$work/upstream.port")

# The server's configuration: fresh keys, tenant "fuzz" with licence upstreams.
hex() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
tenant=fuzz
cat >"$work/streamcap.toml" <<TOML
[[server_keys]]
kid = "s1"
secret = "$(hex)"

[[tenants]]
id = "$tenant"
keys = [{ kid = "k1", secret = "$(hex)" }]

[tenants.licence.clearkey]
upstream = "http://127.0.0.1:$upstream_port/clearkey"
headers = { "X-Vendor-Auth" = "{tenant}:{user}:{session_id}" }

[tenants.licence.widevine]
upstream = "http://127.0.0.1:$upstream_port/widevine"

[tenants.licence.playready]
upstream = "http://127.0.0.1:$upstream_port/playready"
pass_headers = ["SOAPAction"]
TOML

# Only the file and the flags configure the server: no STREAMCAP_* variable reaches it.
: >"$work/server.log"
env $(env | grep -o '^STREAMCAP_[A-Z_]*' | sed 's/^/-u /') \
  "$bin" serve --config "$work/streamcap.toml" \
  --listen "127.0.0.1:${SCHEMATHESIS_PORT:-0}" --admin-listen 127.0.0.1:0 2>"$work/server.log" &
server_pid=$!
port=
for _ in $(seq 100); do
  port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\),.*/\1/p' "$work/server.log" | head -1)
  [ -n "$port" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; echo "the server did not start" >&2; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "the server logged no address" >&2; exit 1; }
echo "server: $bin on 127.0.0.1:$port (tenant $tenant; licence server on 127.0.0.1:$upstream_port)"

report=$PWD/target/schemathesis-report
rm -rf "$report" && mkdir -p "$report"
status=0
# From the temporary directory: Schemathesis keeps a cache of past failures
# in .schemathesis/ of its working directory, and each run starts afresh.
schema=$PWD/docs/openapi.yaml
venv=$(realpath "$venv")
cd "$work"
STREAMCAP_BIN="$bin" STREAMCAP_URL="http://127.0.0.1:$port" STREAMCAP_TALLY="$work/tally.json" \
  STREAMCAP_HOOKS_CONFIG="$work/streamcap.toml" STREAMCAP_HOOKS_TENANT="$tenant" \
  STREAMCAP_HOOKS_LOG="$report/requests.log" PYTHONPATH="$here" SCHEMATHESIS_HOOKS=streamcap_hooks \
  timeout 600 "$venv/bin/st" run "$schema" \
  --url "http://127.0.0.1:$port" \
  --checks not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance,response_headers_conformance \
  --seed "$SEED" --max-examples "$MAX_EXAMPLES" --workers 1 \
  --generation-database none --request-timeout 10 \
  --report junit,ndjson --report-dir "$report" \
  --no-color "$@" || status=$?

echo "== answers by operation and status"
python3 - "$work/tally.json" "$work/upstream.count" <<'PY'
import json, os, sys
if not os.path.exists(sys.argv[1]):
    sys.exit("the hooks wrote no tally: Schemathesis did not finish")
tally = json.load(open(sys.argv[1]))
for key, n in tally.items():
    print(f"{n:6d}  {key}")
seen = {int(k.split(" ")[2]) for k in tally}
missing = sorted({200, 201, 204, 403, 409, 410} - seen)
print(f"{sum(tally.values())} requests; statuses seen: {sorted(seen)}")
licence = "POST /v1/users/{user}/sessions/{session_id}/licence/{system}"
by_licence = {int(k.split(" ")[2]) for k in tally if k.startswith(licence + " ")}
upstream = open(sys.argv[2]).read().strip() if os.path.exists(sys.argv[2]) else "0"
print(f"licence route: statuses {sorted(by_licence)}; {upstream} requests reached the licence server")
if missing:
    sys.exit(f"never answered {missing}: the credentials did not reach the interesting paths")
if not any(200 <= s < 300 for s in by_licence) or 410 not in by_licence or upstream in ("", "0"):
    sys.exit("the licence route never answered a licence (2xx) and a 410: the gate was not exercised")
PY
kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; echo "the server died during the run" >&2; exit 1; }
exit "$status"
