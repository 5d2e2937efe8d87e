#!/usr/bin/env bash
# streamcap soak: a fixed request rate for SOAK_MINUTES against one server,
# sampling its RSS, open file descriptors and the minute's p99 every minute;
# then, once the load stops and every session has expired, RSS against the
# baseline. Everything runs on 127.0.0.1 and stops by itself.
#
#   bash loadtest/soak.sh                      # 30 minutes (~36 min in all)
#   SOAK_MINUTES=3 SESSIONS=30000 bash loadtest/soak.sh   # a smoke run
#
# The load, from loadtest/driver (streamcap-driver), two open-model streams:
#   - players: SESSIONS preloaded sessions, each heartbeating once per POLL
#     seconds (SESSIONS / POLL heartbeats/s: 10,000/s by default), each with
#     the newest token it was given (`rate --follow-tokens`), as a player does,
#     in a random order (a fixed seed) rather than the order of creation;
#   - churn: CHURN_RATE starts/s of other users whose sessions are never
#     renewed: they expire 3 x CHURN_POLL s later, so records are allocated
#     and freed all along (about CHURN_RATE x 3 x CHURN_POLL live at a time).
# Latency is measured from each request's intended send time (coordinated
# omission corrected) in one-minute windows.
#
# Verdicts: RSS, descriptors and p99 of the last five minutes against the
# five minutes ending at mid-run (the first half is warm-up): RSS at most
# +5% (and +8 MiB), descriptors at most +2, p99 at most 1.5x and +1 ms;
# after expiry, RSS within 16 MiB (or 25% of the peak's growth) of the
# baseline. The first five minutes after minute 1 are printed beside them.
# Why the first half is warm-up: under churn the map's table reaches its
# steady size only at its first resize, when deleted slots have filled it
# (about minute 12 with the defaults): papaya doubles a table that is at
# least half live, so a map of 300,000 users grows once from 2^19 to 2^20
# slots, then rehashes in place (BENCHMARKS.md, "Soak"). So a run shorter
# than ~25 minutes at the default rates reads that one-time growth as drift
# (a 15-minute run does), and one under 11 minutes compares single minutes.
#
# Environment (defaults in brackets):
#   SOAK_MINUTES [30]  measured minutes
#   SESSIONS [300000]  players
#   POLL [30]          their poll, seconds (tokens live 3 x POLL)
#   CONNS [64]         connections of the players' stream
#   CHURN_RATE [200]   starts per second of short-lived sessions (0: none)
#   CHURN_POLL [5]     their poll, seconds
#   AFTER_SECS [30]    RSS read this long after the last session expired
#   SKIP_BUILD [0]     1: use the binaries already built
#   WORKDIR [mktemp]   scratch files; removed at the end unless KEEP=1
#   OUT [unset]        also write the report to this file
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SOAK_MINUTES=${SOAK_MINUTES:-30}
SESSIONS=${SESSIONS:-300000}
POLL=${POLL:-30}
CONNS=${CONNS:-64}
CHURN_RATE=${CHURN_RATE:-200}
CHURN_POLL=${CHURN_POLL:-5}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}
AFTER_SECS=${AFTER_SECS:-30}

log() { echo "[soak $(date +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 is required (apt-get install $1)"; }
need jq
need curl

if [[ -n ${WORKDIR:-} ]]; then WORK=$WORKDIR; mkdir -p "$WORK"; else WORK=$(mktemp -d); fi
SERVER_BIN=$ROOT/target/release/streamcap
DRIVER_BIN=$ROOT/loadtest/driver/target/release/streamcap-driver
if [[ $SKIP_BUILD != 1 ]]; then
    log "building the server and the driver (release)"
    cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
    cargo build --release --quiet --manifest-path "$ROOT/loadtest/driver/Cargo.toml"
fi

# shellcheck source=profile/lib.sh
source "$ROOT/loadtest/profile/lib.sh"
PORT=$(port)
ADMIN=$(port)
ADDR=127.0.0.1:$PORT
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [[ -n ${SERVER:-} ]] && kill "$SERVER" 2>/dev/null || true
    if [[ -z ${WORKDIR:-} && $KEEP != 1 ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

"$SERVER_BIN" --listen "$ADDR" --admin-listen "127.0.0.1:$ADMIN" --max-poll-secs 3600 \
    >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$ADMIN/healthz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$ADMIN/healthz" >/dev/null || die "the server did not start: $(tail -3 "$WORK/server.log")"

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$SERVER/status"; }
fds() { find "/proc/$SERVER/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
metric() { curl -sf "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

sleep 2
RSS_BASE=$(rss_kib)
FDS_BASE=$(fds)
log "baseline: RSS $(mib "$RSS_BASE") MiB, $FDS_BASE descriptors"

log "preloading $SESSIONS players (poll $POLL s)"
"$DRIVER_BIN" preload --addr "$ADDR" --sessions "$SESSIONS" --poll "$POLL" --user-prefix soak \
    --tokens-out "$WORK/players.tsv" --progress 0 --json >"$WORK/preload.txt" ||
    die "preload: $(tail -3 "$WORK/preload.txt")"
# Players beat in no relation to where their records sit in memory.
shuffle_lines "$WORK/players.tsv"
if ((CHURN_RATE > 0)); then
    # Limit 3 each and a lifetime of 3 x CHURN_POLL: a user's earlier sessions
    # have expired before the list comes round to it again.
    CHURN_USERS=$((CHURN_RATE * CHURN_POLL * 3 * 2))
    "$DRIVER_BIN" preload --addr "$ADDR" --sessions 0 --poll "$CHURN_POLL" --user-prefix churn \
        --grants-out "$WORK/churn.tsv" --grants "$CHURN_USERS" --progress 0 >/dev/null ||
        die "cannot write the churn grants"
fi

RATE=$(awk -v n="$SESSIONS" -v p="$POLL" 'BEGIN { printf "%.3f", n / p }')
SECS=$((SOAK_MINUTES * 60))
log "load: $RATE heartbeats/s and $CHURN_RATE starts/s for $SOAK_MINUTES min"
"$DRIVER_BIN" rate --addr "$ADDR" --targets "$WORK/players.tsv" --rate "$RATE" --duration "$SECS" \
    --warmup 0 --conns "$CONNS" --follow-tokens --window-secs 60 --json \
    >"$WORK/players.txt" 2>"$WORK/players.err" &
PIDS+=($!)
if ((CHURN_RATE > 0)); then
    "$DRIVER_BIN" rate --addr "$ADDR" --targets "$WORK/churn.tsv" --rate "$CHURN_RATE" --duration "$SECS" \
        --warmup 0 --conns 4 --window-secs 60 --json >"$WORK/churn.txt" 2>"$WORK/churn.err" &
    PIDS+=($!)
fi

# One sample a minute, at the end of each minute of load.
SAMPLES=$WORK/samples.tsv
: >"$SAMPLES"
T0=$(date +%s)
for m in $(seq "$SOAK_MINUTES"); do
    sleep $((T0 + 60 * m - 2 - $(date +%s)))
    printf '%s\t%s\t%s\t%s\t%s\n' "$m" "$(rss_kib)" "$(fds)" "$(metric streamcap_live_sessions)" \
        "$(metric streamcap_records)" >>"$SAMPLES"
    log "minute $m: RSS $(mib "$(rss_kib)") MiB, $(fds) descriptors, $(metric streamcap_records) records"
done
for p in "${PIDS[@]}"; do wait "$p" || die "a load stream failed: $(tail -3 "$WORK"/*.err)"; done
PIDS=()
PLAYERS=$(tail -1 "$WORK/players.txt")
CHURN='{}'
if ((CHURN_RATE > 0)); then CHURN=$(tail -1 "$WORK/churn.txt"); fi
RSS_PEAK=$(awk '/^VmHWM/ { print $2 }' "/proc/$SERVER/status")

# After the load: every session expires 3 x POLL after its last heartbeat.
log "load stopped; waiting for every session to expire (~$((3 * POLL)) s)"
deadline=$(($(date +%s) + 3 * POLL + 120))
while [[ $(metric streamcap_records) != 0 ]]; do
    (($(date +%s) < deadline)) || { log "gave up waiting: $(metric streamcap_records) records left"; break; }
    sleep 5
done
sleep "$AFTER_SECS"
RSS_AFTER=$(rss_kib)
FDS_AFTER=$(fds)
RECORDS_AFTER=$(metric streamcap_records)

REPORT=$WORK/report.md
python3 - "$SAMPLES" "$RSS_BASE" "$FDS_BASE" "$RSS_PEAK" "$RSS_AFTER" "$FDS_AFTER" "$RECORDS_AFTER" \
    "$PLAYERS" "$CHURN" "$SOAK_MINUTES" "$SESSIONS" "$POLL" "$CHURN_RATE" "$CHURN_POLL" >"$REPORT" <<'EOF'
import json, statistics, sys
(samples, base, fds_base, peak, after, fds_after, records_after, players, churn,
 minutes, sessions, poll, churn_rate, churn_poll) = sys.argv[1:]
rows = [line.split("\t") for line in open(samples).read().splitlines() if line]
players, churn = json.loads(players), json.loads(churn)
p99 = players.get("window_p99_ms", [])
mib = lambda kib: int(kib) / 1024
base, peak, after = mib(base), mib(peak), mib(after)
print(f"soak: {minutes} min, {sessions} players at poll {poll} s ({players['rate']:.0f} heartbeats/s, "
      f"newest token each time) + {churn_rate} starts/s expiring after {3 * int(churn_poll)} s\n")
print("| minute | RSS (MiB) | descriptors | live sessions | records | heartbeat p99 (ms) | answers |")
print("|---|---|---|---|---|---|---|")
for i, (m, rss, fd, live, rec) in enumerate(rows):
    w = p99[i] if i < len(p99) else float("nan")
    n = players.get("window_answers", [])[i] if i < len(players.get("window_answers", [])) else 0
    print(f"| {m} | {mib(rss):.1f} | {fd} | {live} | {rec} | {w:.2f} | {n} |")
errors = players["errors"] + churn.get("errors", 0)
churn_ok = churn.get("statuses", {}).get("201", 0)
print(f"\nplayers: sent {players['sent']}, answered {players['answered']}, errors {players['errors']} "
      f"(statuses {players['statuses']}); p50 {players['p50_ms']:.2f} ms, p99 {players['p99_ms']:.2f} ms, "
      f"p99.9 {players['p999_ms']:.2f} ms, max {players['max_ms']:.1f} ms")
if churn:
    print(f"churn: sent {churn['sent']}, 201 {churn_ok}, errors {churn['errors']} (statuses {churn['statuses']})")

half = len(rows) // 2
def drift(values, name, rel, absolute):
    early, mid, last = values[1:6], values[max(half - 5, 0):half], values[-5:]
    if len(values) < 11:
        early, mid, last = values[1:2] or values[:1], values[half - 1:half] or values[:1], values[-1:]
    e, a, b = (statistics.mean(w) for w in (early, mid, last))
    ok = b <= a * (1 + rel) + absolute
    return f"| {name} | {e:.2f} | {a:.2f} | {b:.2f} | {b - a:+.2f} | {'yes' if ok else '**no**'} |", ok

rss = [mib(r[1]) for r in rows]
fd = [int(r[2]) for r in rows]
lines, oks = [], []
for line, ok in [drift(rss, "RSS (MiB)", 0.05, 8), drift(fd, "descriptors", 0, 2), drift(p99[:len(rows)], "p99 (ms)", 0.5, 1)]:
    lines.append(line); oks.append(ok)
print(f"\n| drift (5 min to mid-run vs last 5) | minutes 2-6 | minutes {max(half - 4, 1)}-{half} | last 5 "
      f"| change | flat |")
print("|---|---|---|---|---|---|")
print("\n".join(lines))
back = after - base <= max(16, 0.25 * (peak - base))
print(f"\nafter the load stopped and every session expired (records {records_after}): RSS {after:.1f} MiB "
      f"(baseline {base:.1f}, peak {peak:.1f}; {after - base:+.1f} MiB); descriptors {fds_after} (baseline {fds_base}); "
      f"back near the baseline: {'yes' if back else '**no**'}")
print(f"errors: {errors}; verdict: {'PASS' if all(oks) and back and errors == 0 else 'FAIL'}")
EOF
cat "$REPORT"
if [[ -n ${OUT:-} ]]; then cp "$REPORT" "$OUT"; fi
grep -q 'verdict: PASS' "$REPORT"
