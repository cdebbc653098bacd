"""A test client app that `pilotfish up` starts: it calls other services the way ordinary apps
do, with nothing but the environment the runner gives it (HTTP_PROXY, HTTPS_PROXY, NO_PROXY),
and answers (JSON, on $PORT) with what it saw.

- ``/grpc?target=backend:50051&calls=N``: N unary calls of /echo.Echo/Say on one plain
  ``grpc.insecure_channel(target)`` (grpcio sends CONNECT to its proxy); the answers and the
  error codes, counted.
- ``/websocket?authority=host:port&messages=N&interval=S``: one WebSocket to ``/ws`` of
  that host through the proxy (an Upgrade with that Host), N messages S seconds apart, then
  a close.
- ``/https?url=https://host:port/&ca=FILE``: one GET with urllib, which tunnels through
  $HTTPS_PROXY with CONNECT, verifying the server's certificate against FILE only.
- ``/curl?url=https://host:port/&ca=FILE``: the same with curl (which sends HTTP/1.1 CONNECT
  where urllib sends HTTP/1.0), through the proxy its environment names.
- ``/connect?authority=host:port``: a raw CONNECT to the proxy; its status line and body.
- ``/websocket-connect?authority=host:port&messages=N``: a WebSocket to ``/ws`` inside a
  CONNECT tunnel, as browsers reach a WebSocket through a proxy (a minimal client here:
  text frames of under 126 bytes).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import aiohttp
import grpc
from aiohttp import web


def grpc_calls(target: str, calls: int) -> dict[str, object]:
    answers: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    details: list[str] = []
    with grpc.insecure_channel(target) as channel:
        say = channel.unary_unary("/echo.Echo/Say")
        for _ in range(calls):
            try:
                answers[say(b"hi", timeout=10).decode()] += 1
            except grpc.RpcError as exc:
                errors[exc.code().name] += 1
                details.append(str(exc.details()))
    return {"answers": dict(answers), "errors": dict(errors), "details": details[:5]}


async def grpc_handler(request: web.Request) -> web.Response:
    target = request.query["target"]
    calls = int(request.query.get("calls", "1"))
    return web.json_response(await asyncio.to_thread(grpc_calls, target, calls))


async def websocket_handler(request: web.Request) -> web.Response:
    """aiohttp sends a proxy ``GET ws://host/...``, which Envoy refuses (an absolute URL must
    be http or https); like a raw client, it asks the proxy itself with the Host header."""
    authority = request.query["authority"]
    messages = int(request.query.get("messages", "3"))
    interval = float(request.query.get("interval", "0.5"))
    proxy = urllib.parse.urlsplit(os.environ["HTTP_PROXY"])
    url = f"ws://{proxy.netloc}{request.query.get('path', '/ws')}"
    received: list[str] = []
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            url, headers={"Host": authority}, timeout=aiohttp.ClientWSTimeout(ws_close=10)
        ) as ws,
    ):
        for index in range(messages):
            await ws.send_str(f"message {index}")
            reply = await ws.receive(timeout=10)
            received.append(str(reply.data))
            await asyncio.sleep(interval)
        await ws.close()
        close_code = ws.close_code
    return web.json_response(
        {"received": received, "close_code": close_code, "seconds": time.monotonic() - started}
    )


def https_get(url: str, ca: str) -> dict[str, object]:
    context = ssl.create_default_context(cafile=ca)
    # The environment's proxies, as any urllib app gets them: https_proxy for https URLs.
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(url, timeout=10) as response:
            return {"status": response.status, "body": response.read().decode()}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read().decode(errors="replace")}
    except (urllib.error.URLError, OSError) as exc:
        return {"error": str(exc)}


async def https_handler(request: web.Request) -> web.Response:
    result = await asyncio.to_thread(https_get, request.query["url"], request.query["ca"])
    return web.json_response(result)


def curl_get(url: str, ca: str) -> dict[str, object]:
    done = subprocess.run(
        ["curl", "-sS", "--cacert", ca, "-w", "\n%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    body, _, status = done.stdout.rpartition("\n")
    return {"returncode": done.returncode, "status": status, "body": body, "stderr": done.stderr}


async def curl_handler(request: web.Request) -> web.Response:
    result = await asyncio.to_thread(curl_get, request.query["url"], request.query["ca"])
    return web.json_response(result)


def raw_connect(authority: str) -> dict[str, object]:
    proxy = urllib.parse.urlsplit(os.environ["HTTP_PROXY"])
    assert proxy.hostname is not None and proxy.port is not None
    with socket.create_connection((proxy.hostname, proxy.port), timeout=10) as connection:
        connection.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = connection.recv(65536)
            if not chunk:
                break
            body += chunk
    return {"status_line": lines[0], "headers": headers, "body": body.decode(errors="replace")}


def _frame(opcode: int, payload: bytes) -> bytes:
    """A client frame: FIN, ``opcode``, masked (RFC 6455 wants every client frame masked)."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def _read_frame(connection: socket.socket) -> tuple[int, bytes]:
    head = _read_exactly(connection, 2)
    length = head[1] & 0x7F
    return head[0] & 0x0F, _read_exactly(connection, length)


def _read_exactly(connection: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def _read_head(connection: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        data += _read_exactly(connection, 1)
    return data.decode(errors="replace")


def websocket_in_tunnel(authority: str, messages: int, interval: float) -> dict[str, object]:
    proxy = urllib.parse.urlsplit(os.environ["HTTP_PROXY"])
    assert proxy.hostname is not None and proxy.port is not None
    with socket.create_connection((proxy.hostname, proxy.port), timeout=10) as connection:
        connection.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        tunnel = _read_head(connection).split("\r\n")[0]
        key = base64.b64encode(os.urandom(16)).decode()
        connection.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        upgrade = _read_head(connection).split("\r\n")[0]
        received = []
        for index in range(messages):
            connection.sendall(_frame(0x1, f"message {index}".encode()))
            opcode, payload = _read_frame(connection)
            received.append(payload.decode() if opcode == 0x1 else f"opcode {opcode}")
            time.sleep(interval)
        connection.sendall(_frame(0x8, (1000).to_bytes(2, "big")))
        opcode, payload = _read_frame(connection)
    return {
        "tunnel": tunnel,
        "upgrade": upgrade,
        "received": received,
        "close": [opcode, int.from_bytes(payload[:2], "big")],
    }


async def websocket_connect_handler(request: web.Request) -> web.Response:
    authority = request.query["authority"]
    messages = int(request.query.get("messages", "3"))
    interval = float(request.query.get("interval", "0.5"))
    result = await asyncio.to_thread(websocket_in_tunnel, authority, messages, interval)
    return web.json_response(result)


async def connect_handler(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(raw_connect, request.query["authority"]))


async def ready_handler(request: web.Request) -> web.Response:
    return web.json_response({"ready": True})


def main() -> None:
    app = web.Application()
    app.router.add_get("/grpc", grpc_handler)
    app.router.add_get("/websocket", websocket_handler)
    app.router.add_get("/https", https_handler)
    app.router.add_get("/connect", connect_handler)
    app.router.add_get("/curl", curl_handler)
    app.router.add_get("/websocket-connect", websocket_connect_handler)
    app.router.add_get("/ready", ready_handler)
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None)


if __name__ == "__main__":
    main()
