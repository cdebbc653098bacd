"""A test backend started by `pilotfish up` in integration tests. Standard library only.

It answers with who it is (``VERSION``, ``PILOTFISH_REPLICA``) and can misbehave on request:
``/fail-every-other`` answers 503 on every other call; ``/slow?ms=N`` waits N ms;
``/call?url=U`` calls another service through the mesh (its HTTP_PROXY) and returns that answer;
``/busy`` waits ``BUSY_MS`` (env) before answering, so one replica is slower than the others;
``/seen`` lists the path and Host of the last requests it received (to see mirrored copies);
``/status?code=N`` answers with status N; ``/fail?ms=N`` waits N ms, then answers 503; with
``ALWAYS_FAIL=1`` (env), or while the file ``FAIL_WHILE_EXISTS`` (env) names exists, every path
but ``/seen`` answers 503, as a broken replica would.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("VERSION", "v1")
REPLICA = os.environ.get("PILOTFISH_REPLICA", "echo")
BUSY_MS = int(os.environ.get("BUSY_MS", "0"))
ALWAYS_FAIL = os.environ.get("ALWAYS_FAIL") == "1"
FAIL_WHILE_EXISTS = os.environ.get("FAIL_WHILE_EXISTS")
_calls = itertools.count()
_calls_lock = threading.Lock()
_seen: collections.deque[dict[str, str | None]] = collections.deque(maxlen=200)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/seen":
            self._answer(200, {"replica": REPLICA, "seen": list(_seen)})
            return
        _seen.append({"path": self.path, "host": self.headers.get("host")})
        if ALWAYS_FAIL or (FAIL_WHILE_EXISTS and os.path.exists(FAIL_WHILE_EXISTS)):
            self._answer(503, {"replica": REPLICA, "failed": True})
            return
        if url.path == "/fail":
            time.sleep(int(query.get("ms", "0")) / 1000)
            self._answer(503, {"replica": REPLICA, "failed": True})
            return
        if url.path == "/status":
            self._answer(int(query["code"]), {"replica": REPLICA, "status": query["code"]})
            return
        if url.path == "/fail-every-other":
            with _calls_lock:
                call = next(_calls)
            if call % 2 == 0:
                self._answer(503, {"replica": REPLICA, "failed": True})
                return
        elif url.path == "/slow":
            time.sleep(int(query.get("ms", "0")) / 1000)
        elif url.path == "/busy":
            time.sleep(BUSY_MS / 1000)
        elif url.path == "/call":
            self._answer(*_call_through_mesh(query["url"], self.headers.get("x-canary")))
            return
        self._answer(
            200,
            {
                "version": VERSION,
                "replica": REPLICA,
                "path": self.path,
                "host": self.headers.get("host"),
                "headers": {k.lower(): v for k, v in self.headers.items()},
            },
        )

    def _answer(self, status: int, body: dict[str, object]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _call_through_mesh(url: str, canary: str | None) -> tuple[int, dict[str, object]]:
    headers = {"x-canary": canary} if canary else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return 200, {"via": REPLICA, "answer": json.load(r)}
    except urllib.error.HTTPError as exc:
        return exc.code, {"via": REPLICA, "error": exc.code}


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
