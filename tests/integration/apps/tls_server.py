"""A TLS server with its own certificate (``TLS_CERT``, ``TLS_KEY``) on ``PORT``: each line
``L`` is answered ``tls <VERSION> L``. For TLS passed through the mesh unterminated."""

from __future__ import annotations

import asyncio
import os
import ssl

VERSION = os.environ.get("VERSION", "v1")


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            text = line.decode(errors="replace").rstrip("\r\n")
            writer.write(f"tls {VERSION} {text}\n".encode())
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def main() -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(os.environ["TLS_CERT"], os.environ["TLS_KEY"])
    server = await asyncio.start_server(serve, "127.0.0.1", int(os.environ["PORT"]), ssl=context)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
