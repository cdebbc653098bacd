"""A test client app that reaches other services through its sidecar's ``upstreams`` ports
(``PILOTFISH_UPSTREAM_<SERVICE>_<PORT>``, never HTTP_PROXY). An HTTP server on ``PORT``:

``/psql?sql=S``: runs ``psql`` (the real client) with S against ``PILOTFISH_UPSTREAM_DB_5432``;
``/redis?cmd=C&cmd=...``: sends each Redis command (RESP) on one connection to
``PILOTFISH_UPSTREAM_CACHE_6379`` and returns the replies;
``/lines?env=E&count=N&text=T``: N connections to the address in E, each sending T and
returning the line it got back.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TIMEOUT = 10.0


def _address(env: str) -> tuple[str, int]:
    host, _, port = os.environ[env].rpartition(":")
    return host, int(port)


def psql(sql: str) -> dict[str, object]:
    host, port = _address("PILOTFISH_UPSTREAM_DB_5432")
    done = subprocess.run(
        ["psql", "-h", host, "-p", str(port), "-U", "postgres", "-d", "postgres", "-tAc", sql],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PGCONNECT_TIMEOUT": "5", "PGSSLMODE": "disable"},
    )
    return {"code": done.returncode, "out": done.stdout.strip(), "err": done.stderr.strip()}


def _resp(command: str) -> bytes:
    parts = command.split()
    return f"*{len(parts)}\r\n".encode() + b"".join(
        f"${len(p.encode())}\r\n{p}\r\n".encode() for p in parts
    )


def redis(commands: list[str]) -> dict[str, object]:
    replies = []
    with socket.create_connection(_address("PILOTFISH_UPSTREAM_CACHE_6379"), TIMEOUT) as conn:
        stream = conn.makefile("rb")
        for command in commands:
            conn.sendall(_resp(command))
            first = stream.readline().decode().rstrip("\r\n")
            if first.startswith("$") and first != "$-1":
                first = stream.read(int(first[1:]) + 2).decode().rstrip("\r\n")
            replies.append(first)
    return {"replies": replies}


def lines(env: str, count: int, text: str) -> dict[str, object]:
    answers = []
    for _ in range(count):
        with socket.create_connection(_address(env), TIMEOUT) as conn:
            conn.sendall(text.encode() + b"\n")
            answers.append(conn.makefile("rb").readline().decode().rstrip("\n"))
    return {"lines": answers}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        try:
            if url.path == "/psql":
                body = psql(query["sql"][0])
            elif url.path == "/redis":
                body = redis(query["cmd"])
            elif url.path == "/lines":
                body = lines(query["env"][0], int(query["count"][0]), query["text"][0])
            else:
                body = {"replica": os.environ.get("PILOTFISH_REPLICA")}
            status = 200
        except (OSError, KeyError, subprocess.SubprocessError) as exc:
            body, status = {"error": f"{type(exc).__name__}: {exc}"}, 502
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
