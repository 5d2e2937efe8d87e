# Shared by the scripts in loadtest/profile; sourced, not run.

# A loopback port that was free a moment ago.
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_preloaded BIN DRIVER SESSIONS TOKENS LOG: starts BIN in dev mode on
# free loopback ports (--max-poll-secs 3600) with its log in LOG, waits until
# it answers, and preloads SESSIONS sessions (poll 3600 s) with DRIVER,
# writing their heartbeat targets to TOKENS. Sets PORT, ADMIN and P (the
# server's pid); the caller stops it.
start_preloaded() {
    local bin=$1 driver=$2 sessions=$3 tokens=$4 log=$5
    PORT=$(port) ADMIN=$(port)
    "$bin" --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" --max-poll-secs 3600 2>"$log" &
    P=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN/healthz" >/dev/null && break; sleep 0.1; done
    "$driver" preload --addr "127.0.0.1:$PORT" --sessions "$sessions" --poll 3600 --tokens-out "$tokens" \
        --progress 0 >/dev/null
}
