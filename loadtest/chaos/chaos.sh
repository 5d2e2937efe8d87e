#!/usr/bin/env bash
# chaos.sh: simulated players keep playing while the streamcap server is
# SIGKILLed at random moments and restarted on the same port, several times
# over. Every player within its account's limit must play on (no wrong
# stop), the server must heal every session within about one poll of each
# restart, and extras started while it knew nothing must be stopped.
#
# Loopback only (127.0.0.1), bounded: about 10 s per round plus a minute at
# most. Exits non-zero on a wrong stop or a round that did not converge.
#
#   loadtest/chaos/chaos.sh                 # 5 rounds
#   CHAOS_ROUNDS=10 CHAOS_SEED=7 loadtest/chaos/chaos.sh
#
# Knobs (environment): CHAOS_ROUNDS (5), CHAOS_POLL (2 s), CHAOS_TTL_FACTOR (3),
# CHAOS_DOWN_MAX (1.5 s), CHAOS_SEED (time), STREAMCAP_BIN (default: a
# release build of this repo, built if missing or older than src/), CHAOS_ARGS
# (more players.py flags, e.g. "--users-per-group 20").
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

rounds=${CHAOS_ROUNDS:-5}
poll=${CHAOS_POLL:-2}
ttl_factor=${CHAOS_TTL_FACTOR:-3}
down_max=${CHAOS_DOWN_MAX:-1.5}
seed=${CHAOS_SEED:-$(date +%s)}

bin=${STREAMCAP_BIN:-}
if [[ -z $bin ]]; then
    bin=$root/target/release/streamcap
    if [[ ! -x $bin ]] || [[ -n $(find "$root/src" "$root/Cargo.toml" "$root/Cargo.lock" -newer "$bin" -print -quit) ]]; then
        echo "chaos: building the release binary" >&2
        (cd "$root" && cargo build --release --quiet)
    fi
fi
[[ -x $bin ]] || { echo "chaos: no server binary at $bin" >&2; exit 2; }

# Two ports that were free a moment ago.
read -r port admin_port < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])
')

out=$here/out
mkdir -p "$out"
report=$out/report-$seed.json
log=$out/server-$seed.log
pidfile=$out/server-$seed.pid
: > "$log"

echo "chaos: $bin on 127.0.0.1:$port (admin $admin_port), $rounds rounds, seed $seed"
status=0
# shellcheck disable=SC2086
timeout --signal=KILL $((rounds * 30 + 120)) \
    python3 "$here/players.py" --bin "$bin" --port "$port" --admin-port "$admin_port" \
        --rounds "$rounds" --poll "$poll" --ttl-factor "$ttl_factor" --down-max "$down_max" \
        --seed "$seed" --report "$report" --server-log "$log" --pid-file "$pidfile" ${CHAOS_ARGS:-} || status=$?

# Whatever happened, leave no server of ours behind (players.py records its pid).
if [[ -s $pidfile ]]; then
    pid=$(cat "$pidfile")
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "127.0.0.1:$port"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
fi
rm -f "$pidfile"
echo "chaos: report $report, server log $log"
if [[ $status -ne 0 ]]; then
    echo "chaos: FAILED (exit $status)" >&2
fi
exit "$status"
