"""A tiny client for Envoy's admin API, enough to probe readiness and request a drain.

Plain HTTP/1.1 over asyncio streams: one short request per connection, so there is no client
session to open and close around every process lifetime.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pilotfish.errors import PilotfishError

# Far above any config dump of a mesh run on one machine; only a peer that is no Envoy (or a
# broken one) sends more, and reading it all would exhaust memory.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class AdminError(PilotfishError):
    """Envoy's admin endpoint could not be reached or answered nonsense."""


@dataclass(frozen=True)
class AdminResponse:
    status: int
    body: str


@dataclass(frozen=True)
class EnvoyAdmin:
    host: str
    port: int
    timeout: float = 2.0
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def get(self, path: str) -> AdminResponse:
        return await self.request("GET", path)

    async def post(self, path: str) -> AdminResponse:
        return await self.request("POST", path)

    async def is_ready(self) -> bool:
        """True when Envoy reports LIVE (initial xDS fetch done or timed out)."""
        try:
            return (await self.get("/ready")).status == 200
        except AdminError:
            return False

    async def request(self, method: str, path: str) -> AdminResponse:
        try:
            return await asyncio.wait_for(self._exchange(method, path), self.timeout)
        except (OSError, TimeoutError, ValueError, IndexError) as exc:
            raise AdminError(f"{method} {self.url}{path}: {exc!r}") from exc

    async def _exchange(self, method: str, path: str) -> AdminResponse:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("ascii"))
            await writer.drain()
            raw = await _read_at_most(reader, self.max_response_bytes)
        finally:
            writer.close()
            await writer.wait_closed()
        header_block, _, body = raw.partition(b"\r\n\r\n")
        status_line = header_block.split(b"\r\n", 1)[0].decode("latin-1")
        status = int(status_line.split(" ", 2)[1])
        if b"transfer-encoding: chunked" in header_block.lower():
            body = _dechunk(body)
        return AdminResponse(status, body.decode("utf-8", "replace"))


async def _read_at_most(reader: asyncio.StreamReader, limit: int) -> bytes:
    """All the peer sends until it closes, headers included, or ``ValueError`` as soon as
    that passes ``limit`` bytes."""
    chunks: list[bytes] = []
    total = 0
    while chunk := await reader.read(64 * 1024):
        total += len(chunk)
        if total > limit:
            raise ValueError(f"the answer is more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _dechunk(data: bytes) -> bytes:
    parts: list[bytes] = []
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            break
        parts.append(rest[:size])
        data = rest[size + 2 :]
    return b"".join(parts)
