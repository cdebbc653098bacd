"""A test backend that speaks HTTP/1.1 and a line protocol on one port (``PORT``), as an
unnamed (AUTO) port may carry both. Standard library only.

HTTP: every GET answers JSON ``{version, replica, protocol: "http", path, headers}``.
Anything else: each line ``L`` is answered ``tcp <VERSION> <REPLICA> L``, until the client
closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re

VERSION = os.environ.get("VERSION", "v1")
REPLICA = os.environ.get("PILOTFISH_REPLICA", "dual")
REQUEST_LINE = re.compile(rb"^[A-Z]+ \S+ HTTP/1\.[01]\r?\n$")


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await reader.readline()
        if REQUEST_LINE.match(line):
            await _http(line, reader, writer)
        else:
            while line:
                text = line.decode(errors="replace").rstrip("\r\n")
                writer.write(f"tcp {VERSION} {REPLICA} {text}\n".encode())
                await writer.drain()
                line = await reader.readline()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _http(line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line:
        path = line.split()[1].decode()
        headers: dict[str, str] = {}
        while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = header.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if length:
            await reader.readexactly(length)
        body = json.dumps(
            {
                "version": VERSION,
                "replica": REPLICA,
                "protocol": "http",
                "path": path,
                "headers": headers,
            }
        ).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        line = await reader.readline()


async def main() -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", int(os.environ["PORT"]))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
