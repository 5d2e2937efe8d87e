#!/usr/bin/env bash
# Everything in clients/, as CI runs it: the player module against a real
# server, the demo page in headless Chromium, the licence gate in headless
# Chromium with Shaka Player and encrypted content, and the grant-minting
# examples. Installs what it needs (Debian's chromium, npm ci, pip blake3).
# Bounded: about two minutes once the server binary is built.
#
#   bash clients/ci.sh        # from anywhere; STREAMCAP_BIN overrides target/debug/streamcap
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export STREAMCAP_BIN=${STREAMCAP_BIN:-target/debug/streamcap}
[ -x "$STREAMCAP_BIN" ] || cargo build -q

command -v node >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; }
if ! command -v npm >/dev/null; then apt-get update -qq && apt-get install -y -qq npm >/dev/null; fi
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
(cd clients && npm ci --no-audit --no-fund --loglevel=error)

echo "== clients: player module (node --test clients/js/test/)"
timeout 300 node --test clients/js/test/
echo "== clients: demo page in headless Chromium (node --test clients/demo/test/)"
timeout 300 node --test clients/demo/test/
echo "== clients: the licence gate in headless Chromium, Shaka Player, key rotation (node --test clients/drm/test/)"
timeout 300 node --test clients/drm/test/
echo "== clients: grant minting in Python, Node and Rust"
timeout 900 bash clients/mint/check.sh
