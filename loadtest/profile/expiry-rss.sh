#!/usr/bin/env bash
# RSS of a server after N sessions (default 1M) expire with no other traffic.
#
#   bash loadtest/profile/expiry-rss.sh [BINARY]     # default: target/release/streamcap
#
# Starts BINARY on free loopback ports, reads its baseline RSS, preloads N
# sessions with poll POLL s (default 3: tokens live 9 s; give N / 100,000 s
# or more for large N, so that none expires during the preload), waits until
# streamcap_records is 0, then prints RSS 5, 15 and 30 s later and the
# largest mappings by RSS.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${1:-$ROOT/target/release/streamcap}
N=${N:-1000000}
POLL=${POLL:-3}
DRIVER=$ROOT/loadtest/driver/target/release/streamcap-driver
# shellcheck source=loadtest/profile/lib.sh
source "$ROOT/loadtest/profile/lib.sh"
PORT=$(port) ADMIN=$(port)
"$BIN" --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" 2>/dev/null &
P=$!
trap 'kill $P 2>/dev/null || true' EXIT
sleep 1
rss() { awk '/^VmRSS/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$P/status"; }
records() { curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '$1 == "streamcap_records" { print $2 }'; }
echo "baseline $(rss)"
"$DRIVER" preload --addr "127.0.0.1:$PORT" --sessions "$N" --poll "$POLL" >/dev/null 2>&1
echo "$N sessions: $(rss) (peak $(awk '/^VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$P/status"))"
for i in $(seq 900); do [[ $(records) == 0 ]] && break; sleep 1; done
echo "records 0 after ${i}s: $(rss)"
for t in 5 10 15; do sleep "$t"; echo "  +$t s: $(rss)"; done
echo "largest mappings (kB):"
awk '/^[0-9a-f]+-[0-9a-f]+ / { m = $1 " " $6 } /^Rss:/ { if ($2 > 1024) print "  " $2 "  " m }' "/proc/$P/smaps" | sort -rn | head -5
