#!/usr/bin/env python3
"""Smoke test of a TLS proxy in front of streamcap nodes (Python stdlib only).

  proxy_smoke.py --proxy 127.0.0.1:PORT --kill-pid PID --node API_HOSTPORT...
                 --grants FILE

Through the proxy (TLS, certificate not verified): one start per grant (one
user each), then each user must be live on exactly one node (every node's list,
queried directly); then the process --kill-pid (the first node) is killed and
every session heartbeats once more through the proxy: all must get 200
(rebuilt from the token on the node the proxy now sends the user to).
Exit status 1 when any of it fails.
"""

import argparse
import http.client
import json
import os
import signal
import ssl
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--kill-pid", type=int, required=True)
    ap.add_argument("--node", action="append", required=True)
    ap.add_argument("--grants", required=True)
    a = ap.parse_args()
    host, port = a.proxy.rsplit(":", 1)
    ctx = ssl._create_unverified_context()

    def proxy():
        return http.client.HTTPSConnection(host, int(port), context=ctx, timeout=5)

    def call(conn, method, path, bearer):
        conn.request(method, path, headers={"Authorization": "Bearer " + bearer, "Content-Length": "0"})
        r = conn.getresponse()
        body = r.read()
        return r.status, (json.loads(body) if body else None)

    grants = [json.loads(l) for l in open(a.grants) if l.strip()]
    c = proxy()
    sessions = []
    for g in grants:
        status, d = call(c, "POST", f"/v1/users/{g['user']}/sessions", g["grant"])
        if status != 201:
            print(f"FAIL start of {g['user']} through the proxy: {status} {d}")
            return 1
        sessions.append((g, d))
    tls = c.sock.version() if c.sock else "?"
    per_node = {n: 0 for n in a.node}
    split = 0
    for g, _ in sessions:
        on = []
        for n in a.node:
            h, p = n.rsplit(":", 1)
            d = http.client.HTTPConnection(h, int(p), timeout=5)
            status, body = call(d, "GET", f"/v1/users/{g['user']}/sessions", g["grant"])
            d.close()
            if body and body.get("active"):
                on.append(n)
        split += len(on) != 1
        if len(on) == 1:
            per_node[on[0]] += 1
    print(f"  {len(sessions)} starts through the proxy ({tls}); users per node {per_node}; "
          f"users not on exactly one node: {split}")
    os.kill(a.kill_pid, signal.SIGKILL)
    time.sleep(0.2)
    answers = {}
    for g, d in sessions:
        path = f"/v1/users/{g['user']}/sessions/{d['session_id']}/heartbeat"
        for attempt in range(3):
            try:
                status, _ = call(c, "POST", path, d["token"])
                break
            except (OSError, http.client.HTTPException):
                c.close()
                c = proxy()
                status = "net error"
        answers[status] = answers.get(status, 0) + 1
    print(f"  after SIGKILL of the first node, heartbeats through the proxy: {answers}")
    ok = split == 0 and answers == {200: len(sessions)}
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
