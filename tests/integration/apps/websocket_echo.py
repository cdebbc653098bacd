"""A WebSocket test backend (aiohttp) on $PORT: ``/ws`` answers each text message with
"<replica>: <message>" and closes when the client does; ``/wsready`` answers 200."""

from __future__ import annotations

import os

from aiohttp import WSMsgType, web

REPLICA = os.environ.get("PILOTFISH_REPLICA", "websocket-echo")


async def echo(request: web.Request) -> web.WebSocketResponse:
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    async for message in socket:
        if message.type == WSMsgType.TEXT:
            await socket.send_str(f"{REPLICA}: {message.data}")
    return socket


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"replica": REPLICA})


def main() -> None:
    app = web.Application()
    app.router.add_get("/ws", echo)
    app.router.add_get("/wsready", hello)
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None)


if __name__ == "__main__":
    main()
