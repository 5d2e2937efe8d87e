"""A licence server for the Schemathesis run (run.sh): on 127.0.0.1, port
argv[3] (default: a free one), the port written to argv[1]; every POST gets 200 with a fixed binary licence
(`application/octet-stream`), and the number of POSTs so far is written to
argv[2]. HTTP/1.1 with keep-alive, so the gate's pooled connections are
used as in production. Runs until killed."""

import http.server
import os
import sys
import threading

LICENCE = bytes(range(255, -1, -1))  # every byte value
_lock = threading.Lock()
_count = 0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        global _count
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        with _lock:
            _count += 1
            with open(sys.argv[2], "w", encoding="ascii") as f:
                f.write(f"{_count}\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(LICENCE)))
        self.end_headers()
        self.wfile.write(LICENCE)

    def log_message(self, *args):
        pass


port = int(sys.argv[3]) if len(sys.argv) > 3 else 0
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
with open(sys.argv[1] + ".tmp", "w", encoding="ascii") as f:
    f.write(f"{server.server_address[1]}\n")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
server.serve_forever()
