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

# start_preloaded BIN DRIVER SESSIONS TOKENS LOG: starts BIN in dev mode on
# free loopback ports (--max-poll-secs 3600) with its log in LOG, waits until
# it answers, and preloads SESSIONS sessions (poll 3600 s) with DRIVER,
# writing their heartbeat targets to TOKENS in a random order. Sets PORT,
# ADMIN and P (the server's pid); the caller stops it.
start_preloaded() {
    local bin=$1 driver=$2 sessions=$3 tokens=$4 log=$5
    PORT=$(port) ADMIN=$(port)
    "$bin" --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" --max-poll-secs 3600 2>"$log" &
    P=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN/healthz" >/dev/null && break; sleep 0.1; done
    "$driver" preload --addr "127.0.0.1:$PORT" --sessions "$sessions" --poll 3600 --tokens-out "$tokens" \
        --progress 0 >/dev/null
    shuffle_lines "$tokens"
}
