#!/usr/bin/env bash
# Proves that the grant-minting examples (Python, Node, Rust) produce grants
# the real server accepts: each language mints one grant for the dev tenant,
# and a start with it must get 201 from a throwaway streamcap server on
# 127.0.0.1 (free ports); the label, device and poll must come through. A
# grant signed with a wrong key must get 401.
#
#   bash clients/mint/check.sh
#   STREAMCAP_BIN=target/release/streamcap bash clients/mint/check.sh
#
# Installs what it needs: blake3 from PyPI (pip), @noble/hashes from npm
# (npm ci in clients/). The Rust example builds with CARGO_TARGET_DIR=target
# (the repo's), so it reuses the server's compiled dependencies; the
# repo's Cargo.lock is copied in so the versions are the same.
# Bounded: about 15 s when everything is built (plus one Rust compile).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$(pwd)
BIN=${STREAMCAP_BIN:-target/debug/streamcap}
DEV_KEY=64656d6f2d74656e616e742d6b65792d6e6f742d612d7365637265742d212121
WRONG_KEY=$(printf '%064d' 7)
PASSED=0
FAILED=0

say() { printf 'mint-check: %s\n' "$*"; }
die() { printf 'mint-check: FAIL: %s\n' "$*" >&2; exit 1; }

# The server must run in dev mode, whatever this shell has set.
for v in $(compgen -e); do
  case $v in STREAMCAP_BIN) ;; STREAMCAP_*) unset "$v" ;; esac
done

command -v node >/dev/null || die "node 20+ is required"
command -v python3 >/dev/null || die "python3 is required"
command -v curl >/dev/null || die "curl is required"
if [ ! -x "$BIN" ]; then
  say "building streamcap"
  cargo build -q
fi

say "installing: blake3 (PyPI), npm ci (clients/)"
python3 -c 'import blake3' 2>/dev/null || python3 -m pip install -q blake3 \
  || python3 -m pip install -q --break-system-packages blake3
(cd clients && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

say "building the Rust example"
cp Cargo.lock clients/mint/rust/Cargo.lock
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target} \
  timeout 900 cargo build -q --manifest-path clients/mint/rust/Cargo.toml
RUST_MINT=${CARGO_TARGET_DIR:-$ROOT/target}/debug/streamcap-mint-example

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
ADMIN=$(free_port)
LOG=$(mktemp)
BODY=$(mktemp)
"$BIN" serve --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" >"$LOG" 2>&1 &
SERVER=$!
cleanup() {
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  rm -f "$LOG" "$BODY"
}
trap cleanup EXIT
for _ in $(seq 1 150); do
  curl -fsS --max-time 1 "http://127.0.0.1:$ADMIN/healthz" >/dev/null 2>&1 && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$LOG" >&2; die "server exited"; }
  sleep 0.1
done
curl -fsS --max-time 2 "http://127.0.0.1:$ADMIN/healthz" >/dev/null || die "server not healthy"
API="http://127.0.0.1:$PORT"
say "server on $API (dev mode)"

# start USER GRANT: prints the status; the body goes to $BODY
start() {
  curl -sS --max-time 5 -o "$BODY" -w '%{http_code}' -X POST \
    "$API/v1/users/$1/sessions" -H "Authorization: Bearer $2"
}

check() { # LANG USER GRANT
  local lang=$1 user=$2 grant=$3 status
  status=$(start "$user" "$grant")
  if [ "$status" != 201 ]; then
    say "$lang: start got $status: $(cat "$BODY")"; FAILED=$((FAILED + 1)); return
  fi
  # The optional fields came through: poll, label (UTF-8) and device in the session list.
  local listed
  listed=$(curl -sS --max-time 5 "$API/v1/users/$user/sessions" -H "Authorization: Bearer $grant")
  if python3 - "$listed" "$(cat "$BODY")" <<'PY'
import json, sys
listed, started = json.loads(sys.argv[1]), json.loads(sys.argv[2])
s = listed["sessions"][0]
assert started["poll_after"] == 7, started
assert started["limit"] == 2, started
assert s["label"] == "Wohnzimmer – TV", s
assert s["device"] == "tv-1", s
assert s["content"] == "Ep. 1", s
PY
  then
    say "$lang: 201, fields intact"; PASSED=$((PASSED + 1))
  else
    say "$lang: fields did not come through: $listed"; FAILED=$((FAILED + 1))
  fi
}

FIELDS=(--limit 2 --device tv-1 --label "Wohnzimmer – TV" --content "Ep. 1" --poll 7 --policy reject_new)

G=$(STREAMCAP_TENANT_KEY=$DEV_KEY python3 clients/mint/python/mint_grant.py --tenant demo --user mint-py "${FIELDS[@]}")
check python mint-py "$G"

G=$(STREAMCAP_TENANT_KEY=$DEV_KEY node clients/mint/node/mint_grant.mjs --tenant demo --user mint-node "${FIELDS[@]}")
check node mint-node "$G"

G=$(STREAMCAP_TENANT_KEY=$DEV_KEY "$RUST_MINT" --tenant demo --user mint-rust "${FIELDS[@]}")
check rust mint-rust "$G"

# A wrong key is refused, in every language.
for lang in python node rust; do
  case $lang in
    python) G=$(python3 clients/mint/python/mint_grant.py --key-hex "$WRONG_KEY" --tenant demo --user mint-bad --limit 1) ;;
    node) G=$(node clients/mint/node/mint_grant.mjs --key-hex "$WRONG_KEY" --tenant demo --user mint-bad --limit 1) ;;
    rust) G=$("$RUST_MINT" --key-hex "$WRONG_KEY" --tenant demo --user mint-bad --limit 1) ;;
  esac
  status=$(start mint-bad "$G")
  if [ "$status" = 401 ]; then
    say "$lang: wrong key refused (401)"; PASSED=$((PASSED + 1))
  else
    say "$lang: wrong key got $status"; FAILED=$((FAILED + 1))
  fi
done
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
