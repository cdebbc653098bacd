"""A tiny frontend: calls the backend through the mesh and reports who answered.

It calls ``http://backend:8080/`` like any plain HTTP client; ``HTTP_PROXY`` (set by
``pilotfish up``) sends the call through this replica's sidecar. It forwards the ``x-canary``
header so routing by header works end to end, and the trace headers so that its call to the
backend is part of the trace of the request it serves: a sidecar cannot tell which outgoing
call belongs to which incoming request, so apps propagate them (as Istio requires).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BACKEND_URL = os.environ.get("BACKEND_URL", "http://backend:8080/")
TRACE_HEADERS = (
    "traceparent",
    "tracestate",
    "x-request-id",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
)
FORWARDED_HEADERS = ("x-canary", *TRACE_HEADERS)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        headers = {h: v for h in FORWARDED_HEADERS if (v := self.headers.get(h)) is not None}
        request = urllib.request.Request(BACKEND_URL, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                backend = json.load(response)
            status = 200
        except urllib.error.HTTPError as exc:
            backend = {"error": f"backend answered {exc.code}"}
            status = 502
        except OSError as exc:
            backend = {"error": f"backend unreachable: {exc}"}
            status = 502
        body = json.dumps({"frontend": os.environ.get("PILOTFISH_REPLICA"), "backend": backend})
        payload = (body + "\n").encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    port = int(os.environ["PORT"])
    print(f"frontend listening on 127.0.0.1:{port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
