#!/usr/bin/env bash
# Validate the deployment kit with the real tools, then smoke-test both proxy
# configurations as written (TLS, consistent hash on {user}, failover) in
# front of three real nodes on loopback. About 15 s.
#
#   cargo build --release && bash deploy/check-configs.sh
#
# A missing tool is reported as SKIP (INSTALL=1 installs it with apt-get:
# haproxy, nginx-light, prometheus for promtool, openssl). Exit status 1 when
# a check failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
BIN=${STREAMCAP_BIN:-$ROOT/target/release/streamcap}
[ -x "$BIN" ] || { echo "build first: cargo build --release (or set STREAMCAP_BIN)" >&2; exit 2; }

if [ "${INSTALL:-0}" = 1 ]; then
    pkgs=()
    command -v haproxy >/dev/null || pkgs+=(haproxy)
    command -v nginx >/dev/null || pkgs+=(nginx-light)
    command -v promtool >/dev/null || pkgs+=(prometheus)
    command -v openssl >/dev/null || pkgs+=(openssl)
    if ((${#pkgs[@]})); then
        SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    fi
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/streamcap-check.XXXXXX")
cleanup() {
    for f in "$WORK"/*.pid; do [ -e "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

failed=0
pass() { printf 'PASS  %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; failed=1; }
skip() { printf 'SKIP  %s\n' "$*"; }
# run NAME CMD...: PASS/FAIL by exit status, with the tool's last line.
run() {
    local name=$1; shift
    local out
    if out=$("$@" 2>&1); then pass "$name: $(tail -n 1 <<<"$out")"; else fail "$name:"; sed 's/^/      /' <<<"$out" | tail -n 8; fi
}
free_ports() { python3 -c '
import socket, sys
s = [socket.socket() for _ in range(int(sys.argv[1]))]
[x.bind(("127.0.0.1", 0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"; }

# ------------------------------------------------------------ static checks
run "grafana/streamcap.json is valid JSON" bash -c "python3 -m json.tool '$HERE/grafana/streamcap.json' >/dev/null && echo ok"
if command -v promtool >/dev/null; then
    run "promtool check rules" promtool check rules "$HERE/prometheus/alerts.yml"
    run "promtool test rules" promtool test rules "$HERE/prometheus/alerts.test.yml"
else
    skip "promtool (Debian package prometheus)"
fi

# The region example, placeholders filled with fresh keys, must load.
sed "s/<64 hex: streamcap keygen>/$("$BIN" keygen)/" "$HERE/config/region.example.toml" >"$WORK/region.toml"
read -r P1 P2 <<<"$(free_ports 2)"
"$BIN" serve --config "$WORK/region.toml" --listen "127.0.0.1:$P1" --admin-listen "127.0.0.1:$P2" \
    --log-level warn >"$WORK/example.log" 2>&1 &
echo $! >"$WORK/example.pid"
ok=0
for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$P2/healthz" >/dev/null 2>&1 && { ok=1; break; }; sleep 0.1; done
kill -TERM "$(cat "$WORK/example.pid")" 2>/dev/null || true
rm -f "$WORK/example.pid"
[ $ok = 1 ] && pass "config/region.example.toml loads (keys filled in) and serves /healthz" ||
    { fail "config/region.example.toml does not load:"; sed 's/^/      /' "$WORK/example.log"; }

if command -v systemd-analyze >/dev/null; then
    sed "s#/usr/local/bin/streamcap#$BIN#" "$HERE/systemd/streamcap.service" >"$WORK/streamcap.service"
    run "systemd-analyze verify streamcap.service (ExecStart pointed at $BIN)" \
        bash -c "systemd-analyze verify '$WORK/streamcap.service' && echo ok"
    out=$(systemd-analyze security --offline=true "$WORK/streamcap.service" 2>&1 | tail -n 1 || true)
    [ -n "$out" ] && printf 'INFO  systemd-analyze security: %s\n' "$(sed 's/\x1b\[[0-9;]*m//g' <<<"$out")"
else
    skip "systemd-analyze"
fi

if command -v openssl >/dev/null; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=streamcap.test \
        -keyout "$WORK/key.pem" -out "$WORK/cert.pem" >/dev/null 2>&1
    cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/haproxy.pem"
else
    skip "openssl (no test certificate: proxy checks skipped)"
fi

# ------------------------------------------------- proxies, static + smoke
# start_nodes: three nodes of the example region on free loopback ports.
start_nodes() {
    read -r -a API <<<"$(free_ports 3)"
    read -r -a ADM <<<"$(free_ports 3)"
    for i in 0 1 2; do
        "$BIN" serve --config "$WORK/region.toml" --listen "127.0.0.1:${API[$i]}" \
            --admin-listen "127.0.0.1:${ADM[$i]}" --log-level warn >"$WORK/node$i.log" 2>&1 &
        echo $! >"$WORK/node$i.pid"
        disown $!   # the smoke test kills one on purpose
    done
    for i in 0 1 2; do
        for _ in $(seq 50); do curl -fsS "http://127.0.0.1:${ADM[$i]}/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
    done
}
stop_nodes() {
    for i in 0 1 2; do
        [ -e "$WORK/node$i.pid" ] && { kill -TERM "$(cat "$WORK/node$i.pid")" 2>/dev/null || true; rm -f "$WORK/node$i.pid"; }
    done
}
"$BIN" mint --config "$WORK/region.toml" --tenant acme --user smoke --count 300 --limit 2 >"$WORK/grants.jsonl"
smoke() { # NAME PROXY_PORT
    if python3 "$HERE/cluster/proxy_smoke.py" --proxy "127.0.0.1:$2" --kill-pid "$(cat "$WORK/node0.pid")" \
        --node "127.0.0.1:${API[0]}" --node "127.0.0.1:${API[1]}" --node "127.0.0.1:${API[2]}" \
        --grants "$WORK/grants.jsonl" >"$WORK/smoke.out" 2>&1; then
        pass "$1 smoke: TLS, one node per user, failover heals"
    else
        fail "$1 smoke:"
    fi
    sed 's/^/      /' "$WORK/smoke.out"
}

if command -v haproxy >/dev/null && [ -e "$WORK/haproxy.pem" ]; then
    sed "s#/etc/haproxy/certs/streamcap.pem#$WORK/haproxy.pem#g" "$HERE/haproxy/haproxy.cfg" >"$WORK/haproxy-c.cfg"
    run "haproxy -c haproxy/haproxy.cfg (certificate path pointed at a test certificate)" haproxy -c -f "$WORK/haproxy-c.cfg"
    start_nodes
    read -r LB STATS <<<"$(free_ports 2)"
    # The file as written, with loopback addresses and ports, a test
    # certificate, no daemon, logs on stdout, and maxconn within this
    # shell's descriptor limit.
    sed -e "s#/etc/haproxy/certs/streamcap.pem#$WORK/haproxy.pem#g" \
        -e "s#/run/haproxy/admin.sock#$WORK/haproxy.sock#" \
        -e 's#^    daemon$##' -e 's#^    user haproxy$##' -e 's#^    group haproxy$##' \
        -e 's#^    log /dev/log local0#    log stdout format raw local0#' \
        -e "s#^    maxconn 100000#    maxconn 2000#" \
        -e "s#bind :443 #bind 127.0.0.1:$LB #" -e 's#^    bind :::443 .*##' \
        -e "s#bind 127.0.0.1:8404#bind 127.0.0.1:$STATS#" \
        -e "s#^    server n1 10.0.1.11:8080 id 1#    server n1 127.0.0.1:${API[0]} id 1 port ${ADM[0]}#" \
        -e "s#^    server n2 10.0.1.12:8080 id 2#    server n2 127.0.0.1:${API[1]} id 2 port ${ADM[1]}#" \
        -e "s#^    server n3 10.0.1.13:8080 id 3#    server n3 127.0.0.1:${API[2]} id 3 port ${ADM[2]}#" \
        "$HERE/haproxy/haproxy.cfg" >"$WORK/haproxy-run.cfg"
    haproxy -db -f "$WORK/haproxy-run.cfg" >"$WORK/haproxy.log" 2>&1 &
    echo $! >"$WORK/haproxy.pid"
    sleep 1.5 # first health checks (inter 2s, rise 2 only applies after a failure)
    smoke "haproxy/haproxy.cfg" "$LB"
    kill -TERM "$(cat "$WORK/haproxy.pid")" 2>/dev/null || true
    rm -f "$WORK/haproxy.pid"
    stop_nodes
else
    skip "haproxy (Debian package haproxy)"
fi

if command -v nginx >/dev/null && [ -e "$WORK/cert.pem" ]; then
    mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
    start_nodes
    read -r LB <<<"$(free_ports 1)"
    nginx_conf() { # EXTRA_SED...: the file with test paths, then the caller's edits
        sed -e "s#/etc/nginx/certs/streamcap.fullchain.pem#$WORK/cert.pem#" \
            -e "s#/etc/nginx/certs/streamcap.key.pem#$WORK/key.pem#" \
            -e "s#/var/log/nginx/#$WORK/nginx/logs/#" "$@" "$HERE/nginx/streamcap.conf" >"$WORK/nginx/streamcap.conf"
        cat >"$WORK/nginx/nginx.conf" <<EOF
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log;
events {}
http {
    access_log $WORK/nginx/logs/access.log;
    client_body_temp_path $WORK/nginx/tmp; proxy_temp_path $WORK/nginx/tmp;
    fastcgi_temp_path $WORK/nginx/tmp; uwsgi_temp_path $WORK/nginx/tmp; scgi_temp_path $WORK/nginx/tmp;
    include $WORK/nginx/streamcap.conf;
}
EOF
    }
    nginx_conf -e 's#^x##'
    run "nginx -t nginx/streamcap.conf (throwaway prefix, test certificate)" \
        nginx -t -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
    # Loopback upstreams and port; the per-address rate limit raised, since
    # the whole smoke test comes from one address.
    nginx_conf -e "s#listen 443 ssl http2;#listen 127.0.0.1:$LB ssl http2;#" -e 's#listen \[::\]:443 ssl http2;##' \
        -e "s#server 10.0.1.11:8080#server 127.0.0.1:${API[0]}#" -e "s#server 10.0.1.12:8080#server 127.0.0.1:${API[1]}#" \
        -e "s#server 10.0.1.13:8080#server 127.0.0.1:${API[2]}#" -e 's#rate=100r/s#rate=100000r/s#'
    nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
    for _ in $(seq 20); do [ -s "$WORK/nginx/nginx.pid" ] && break; sleep 0.1; done
    cp "$WORK/nginx/nginx.pid" "$WORK/nginx-master.pid"
    smoke "nginx/streamcap.conf" "$LB"
    nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -s stop 2>/dev/null || true
    rm -f "$WORK/nginx-master.pid"
    stop_nodes
else
    skip "nginx (Debian package nginx-light)"
fi

printf 'Containerfile: not built by this check (it needs an OCI engine).\n'
[ $failed = 0 ] && echo "check-configs: all checks passed" || echo "check-configs: FAILED"
exit $failed
