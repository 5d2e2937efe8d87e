# Shared by the scripts in loadtest/profile; sourced, not run.

# A loopback port that was free a moment ago.
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# shuffle_lines FILE: puts FILE's lines in a random order, the same order on
# every run (a fixed seed). The driver writes targets in the order
# the sessions were created, which is the order their records sit in memory;
# players' heartbeats arrive in no such order (a player's turn in a poll
# window is its start time modulo the poll), and walking memory in order
# flatters the map's caches (~3-6% of heartbeat throughput at 1M sessions).
shuffle_lines() {
    python3 -c 'import random, sys
with open(sys.argv[1], "rb") as f:
    lines = f.readlines()
random.Random(1).shuffle(lines)
with open(sys.argv[1], "wb") as f:
    f.writelines(lines)' "$1"
}

# cpu_ticks PID: the process's user + system CPU time so far, in clock ticks
# (getconf CLK_TCK per second).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# start_server BIN LOG: starts BIN in dev mode on free loopback ports
# (--max-poll-secs 3600) with its log in LOG and waits until it answers.
# Sets PORT, ADMIN and P (the server's pid); the caller stops it.
start_server() {
    local bin=$1 log=$2
    PORT=$(port) ADMIN=$(port)
    "$bin" --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" --max-poll-secs 3600 2>"$log" &
    P=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN/healthz" >/dev/null && break; sleep 0.1; done
}

# preload_sessions DRIVER SESSIONS TOKENS: creates SESSIONS sessions (poll
# 3600 s) on the server at PORT with DRIVER, writing their heartbeat targets
# to TOKENS in the order they were created.
preload_sessions() {
    "$1" preload --addr "127.0.0.1:$PORT" --sessions "$2" --poll 3600 --tokens-out "$3" --progress 0 >/dev/null
}

# start_preloaded BIN DRIVER SESSIONS TOKENS LOG: start_server, then
# preload_sessions, with the targets in TOKENS put in a random order.
start_preloaded() {
    start_server "$1" "$5"
    preload_sessions "$2" "$3" "$4"
    shuffle_lines "$4"
}
