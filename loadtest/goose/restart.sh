#!/usr/bin/env bash
# restart.sh: players keep playing while the streamcap server is SIGKILLed and
# restarted; they must see nothing but retries, and every session must heal.
#
# Starts the server on a free 127.0.0.1 port, runs the goose load test in the
# restart scenario, kills the server with SIGKILL in the middle of the run,
# starts it again on the same port, then checks:
#   - the goose binary exited 0 (no unexpected outcome, no lost session);
#   - the goose report shows no failed request;
#   - players saw at least one retry (the outage was noticed) and no 410/401;
#   - the restarted server's streamcap_heartbeats_healed_total > 0
#     (and, with every player started before the kill, equals the number of players);
#   - once the players have stopped, the server holds no live session.
#
# Only ever targets 127.0.0.1. Bounded in time: about RESTART_RUN_SECS plus a
# minute at most. Every knob is an environment variable (see README.md).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

run_secs=${RESTART_RUN_SECS:-30}
kill_at=${RESTART_KILL_AT:-$((run_secs / 2))}
down_secs=${RESTART_DOWN_SECS:-2}
users=${RESTART_USERS:-20}
poll=${STREAMCAP_POLL:-3}
keep=${RESTART_KEEP:-0}

server_bin=${STREAMCAP_BIN:-}
if [[ -z $server_bin ]]; then
    for b in "$root/target/release/streamcap" "$root/target/debug/streamcap"; do
        if [[ -x $b ]]; then server_bin=$b; break; fi
    done
fi
[[ -n $server_bin && -x $server_bin ]] || {
    echo "restart.sh: no server binary: build it (cargo build --release in $root) or set STREAMCAP_BIN" >&2
    exit 2
}
goose_bin=${GOOSE_BIN:-$here/target/release/streamcap-goose}
[[ -x $goose_bin ]] || {
    echo "restart.sh: no load test binary at $goose_bin: run cargo build --release in $here or set GOOSE_BIN" >&2
    exit 2
}
if (( kill_at + down_secs + 5 > run_secs )); then
    echo "restart.sh: RESTART_KILL_AT + RESTART_DOWN_SECS must leave at least 5 s of the run after the restart" >&2
    exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/streamcap-restart.XXXXXX")
server_pid=""
goose_pid=""

cleanup() {
    local rc=$?
    if [[ -n $goose_pid ]] && kill -0 "$goose_pid" 2>/dev/null; then kill "$goose_pid" 2>/dev/null || true; fi
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [[ $keep == 1 || $rc != 0 ]]; then
        echo "restart.sh: logs and reports kept in $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# A port nothing listens on, from a range the kernel does not hand out to clients.
free_port() {
    local p
    for _ in $(seq 1 50); do
        p=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "restart.sh: no free port found" >&2
    return 1
}

port=$(free_port)
admin_port=$(free_port)
while [[ $admin_port == "$port" ]]; do admin_port=$(free_port); done
host="http://127.0.0.1:$port"
admin="http://127.0.0.1:$admin_port"

start_server() {
    "$server_bin" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin_port" \
        >>"$work/server.log" 2>&1 &
    server_pid=$!

    for _ in $(seq 1 100); do
        if curl -fsS --max-time 1 "$admin/healthz" >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "restart.sh: server did not come up on $host; its log:" >&2
    tail -n 30 "$work/server.log" >&2
    return 1
}

echo "restart.sh: server $server_bin on $host (operator $admin)"
echo "restart.sh: $users players, poll ${poll}s, run ${run_secs}s, SIGKILL at ${kill_at}s, down ${down_secs}s"
start_server

STREAMCAP_SCENARIO=restart STREAMCAP_POLL=$poll STREAMCAP_SUMMARY="$work/summary.json" \
    timeout --kill-after=10 $((run_secs + 60)) \
    "$goose_bin" -H "$host" -u "$users" -r "$users" -t "${run_secs}s" --scenarios restart \
    --no-telnet --report-file "$work/report.json" --report-file "$work/report.html" \
    >"$work/goose.log" 2>&1 &
goose_pid=$!

sleep "$kill_at"
kill -0 "$goose_pid" 2>/dev/null || { echo "restart.sh: goose ended early:" >&2; tail -n 40 "$work/goose.log" >&2; exit 1; }
before=$(curl -fsS --max-time 2 "$admin/metrics" | awk '$1 == "streamcap_live_sessions" {print $2}')
echo "restart.sh: live sessions before the kill: ${before:-?}; SIGKILL server pid $server_pid"
# The shell reports a killed child on its own stderr ("Killed …"): hide that line.
exec 3>&2 2>/dev/null
kill -KILL "$server_pid"
wait "$server_pid" || true
exec 2>&3 3>&-
server_pid=""
sleep "$down_secs"
start_server
echo "restart.sh: server restarted on $host (pid $server_pid)"

goose_rc=0
wait "$goose_pid" || goose_rc=$?
goose_pid=""

# Players stop their sessions when the run ends; the live-session gauge is
# refreshed by the server's sweep (every second by default).
sleep 2
metrics=$(curl -fsS --max-time 2 "$admin/metrics")
metric() { awk -v m="$1" '$1 == m {print $2; found=1} END {if (!found) print 0}' <<<"$metrics"; }
healed=$(metric streamcap_heartbeats_healed_total)
live_after=$(metric streamcap_live_sessions)

fail=0
check() { # check DESCRIPTION CONDITION...
    local what=$1
    shift
    if "$@"; then echo "  ok    $what"; else echo "  FAIL  $what"; fail=1; fi
}

echo "restart.sh: goose exit code $goose_rc"
if [[ -f $work/summary.json ]]; then
    jq -c '{requests_total, requests_failed, players}' "$work/summary.json"
else
    echo "restart.sh: goose wrote no summary; its log:" >&2
    tail -n 40 "$work/goose.log" >&2
    exit 1
fi
p() { jq -r ".players.$1" "$work/summary.json"; }
report_failed=$(jq '[.. | objects | select(has("fail_count")) | .fail_count] | add // 0' "$work/report.json" 2>/dev/null || echo "?")

echo "restart.sh: server after restart: healed $healed, live sessions $live_after"
check "goose exited 0" test "$goose_rc" -eq 0
check "goose report: no failed request ($report_failed)" test "$report_failed" = 0
check "summary: no failed request" test "$(jq .requests_failed "$work/summary.json")" -eq 0
check "every player started ($(p starts_ok) >= $users)" test "$(p starts_ok)" -ge "$users"
check "no unexpected outcome ($(p unexpected))" test "$(p unexpected)" -eq 0
check "no session lost ($(p lost))" test "$(p lost)" -eq 0
check "no 410 ($(p heartbeats_410_evicted)+$(p heartbeats_410_limit_exceeded)+$(p heartbeats_410_other))" \
    test "$(( $(p heartbeats_410_evicted) + $(p heartbeats_410_limit_exceeded) + $(p heartbeats_410_other) ))" -eq 0
check "the outage was seen: retries ($(p retries)) > 0" test "$(p retries)" -gt 0
check "sessions healed on the restarted server ($healed > 0)" test "${healed%.*}" -gt 0
check "every player's session healed once ($healed == $users)" test "${healed%.*}" -eq "$users"
check "no live session left after the players stopped ($live_after)" test "${live_after%.*}" -eq 0

if [[ $fail != 0 ]]; then
    echo "restart.sh: FAILED; last goose output:" >&2
    tail -n 40 "$work/goose.log" >&2
    exit 1
fi
echo "restart.sh: PASSED"
