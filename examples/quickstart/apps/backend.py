"""A tiny backend: says which version and replica answered. Standard library only."""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("VERSION", "v1")
REPLICA = os.environ.get("PILOTFISH_REPLICA", "backend")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # without it every response waits ~40 ms for delayed ACKs

    def do_GET(self) -> None:
        body = json.dumps({"service": "backend", "version": VERSION, "replica": REPLICA}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown the demo's output


if __name__ == "__main__":
    port = int(os.environ["PORT"])
    print(f"backend {VERSION} listening on 127.0.0.1:{port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
