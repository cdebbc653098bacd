"""The admin client against real loopback servers that are no Envoy: an answer past the
size limit is an error, not read to the end."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

import pytest

from pilotfish.agent.admin_client import AdminError, EnvoyAdmin

LIMIT = 64 * 1024


async def _answer(
    body_bytes: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    sent = 0
    # The client gives up past its limit, as it should.
    with contextlib.suppress(ConnectionError):
        while sent < body_bytes:
            chunk = min(16 * 1024, body_bytes - sent)
            writer.write(b"x" * chunk)
            sent += chunk
            await writer.drain()
    writer.close()


@pytest.fixture
async def server_of() -> AsyncIterator[dict[int, int]]:
    """Body size -> port of a server that answers every request with that many bytes."""
    ports: dict[int, int] = {}
    servers: list[asyncio.Server] = []
    for size in (LIMIT // 2, 4 * LIMIT):
        server = await asyncio.start_server(functools.partial(_answer, size), "127.0.0.1", 0)
        servers.append(server)
        ports[size] = server.sockets[0].getsockname()[1]
    yield ports
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_an_answer_within_the_limit_is_read(server_of: dict[int, int]) -> None:
    admin = EnvoyAdmin("127.0.0.1", server_of[LIMIT // 2], max_response_bytes=LIMIT)
    response = await admin.get("/clusters?format=json")
    assert response.status == 200 and len(response.body) == LIMIT // 2


async def test_an_answer_past_the_limit_is_an_error(server_of: dict[int, int]) -> None:
    admin = EnvoyAdmin("127.0.0.1", server_of[4 * LIMIT], max_response_bytes=LIMIT)
    with pytest.raises(AdminError, match=f"more than {LIMIT} bytes"):
        await admin.get("/clusters?format=json")
