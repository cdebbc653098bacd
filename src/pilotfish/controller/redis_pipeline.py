"""A minimal asyncio Redis client for the global rate limit counters: RESP arrays of bulk
strings written on one long-lived connection, integer and error replies read back in order.

Why not redis-py: measured with ``benchmarks/rate_limit.py --skip-envoys`` (2026-12-01, a
loaded shared 2-core machine), Redis cost the service ~135 us of CPU per call more than
counting in memory with redis-py's asyncio pipeline, ~114 us with this client and the same
one write per loop turn, and ~43 us once one write is in flight at a time (see
benchmarks/README.md). Most of what remains per write is the kernel's (a profile put a
loopback ``send`` near 90 us), so fewer writes matter more than a leaner client; this one
costs little in Python: a batch is one ``write`` of bytes encoded up front, and its replies
are parsed by a small sans-IO ``ReplyParser``.

Only what the counters need: commands are pipelined on one connection and their replies
matched first in, first out; a reply that is neither an integer nor an error, a closed
socket or a deadline passed leaves the replies misaligned or unknown, so the connection is
dropped, every caller waiting on it fails, and the next call connects again. Nothing is
retried: a retried INCRBY may count a request twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from dataclasses import dataclass, field

from pilotfish.errors import PilotfishError

# A reply line longer than this without its CRLF is garbage, not a slow integer.
MAX_REPLY_LINE = 64 * 1024
READ_SIZE = 64 * 1024
_INTEGER = re.compile(rb"-?[0-9]+")


class RedisConnectionError(PilotfishError):
    """The connection failed or spoke something other than RESP replies; it was closed."""


@dataclass(frozen=True)
class ReplyError:
    """An error reply (``-ERR ...``): Redis's own text, without the ``-``."""

    text: str


Reply = int | ReplyError


def encode_command(*args: bytes | str | int) -> bytes:
    """One command as a RESP array of bulk strings, as Redis reads every client's."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class ReplyParser:
    """Bytes in, replies out, in order; a reply split across reads waits for its end.
    Raises ``RedisConnectionError`` on anything but ``:<integer>`` and ``-<error>``."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Reply]:
        self._buffer += data
        replies: list[Reply] = []
        start = 0
        while (end := self._buffer.find(b"\r\n", start)) >= 0:
            kind, body = self._buffer[start : start + 1], bytes(self._buffer[start + 1 : end])
            start = end + 2
            if kind == b":" and _INTEGER.fullmatch(body):
                replies.append(int(body))
            elif kind == b"-":
                replies.append(ReplyError(body.decode("utf-8", "replace")))
            else:
                raise RedisConnectionError(f"unexpected reply {bytes(kind + body)[:40]!r}")
        del self._buffer[:start]
        if len(self._buffer) > MAX_REPLY_LINE:
            raise RedisConnectionError(
                f"a reply line of more than {MAX_REPLY_LINE} bytes: {bytes(self._buffer[:40])!r}"
            )
        return replies


@dataclass
class _Waiter:
    count: int
    future: asyncio.Future[list[Reply]]
    replies: list[Reply] = field(default_factory=list)


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    parser: ReplyParser = field(default_factory=ReplyParser)
    waiters: deque[_Waiter] = field(default_factory=deque)
    reading: asyncio.Task[None] | None = None
    closed: bool = False


class RedisPipeline:
    """One connection to ``host:port``, opened on the first call and after each failure."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()

    async def execute(
        self, payload: bytes, count: int, deadline: float | None = None
    ) -> list[Reply]:
        """Send ``payload`` (``count`` encoded commands) and return their ``count`` replies.
        Raises ``TimeoutError`` past ``deadline`` (in loop time; default ``timeout`` from
        now), connecting included, and ``RedisConnectionError``; either way the connection
        is closed."""
        connection: _Connection | None = None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(
                loop.time() + self.timeout if deadline is None else deadline
            ):
                connection = await self._connected()
                future: asyncio.Future[list[Reply]] = loop.create_future()
                connection.waiters.append(_Waiter(count, future))
                connection.writer.write(payload)
                await connection.writer.drain()
                return await future
        except TimeoutError:
            if connection is not None:
                self._drop(connection, "a call timed out: its replies would be misaligned")
            raise
        except OSError as exc:
            if connection is not None:
                self._drop(connection, str(exc))
            raise RedisConnectionError(str(exc) or repr(exc)) from exc

    async def _connected(self) -> _Connection:
        async with self._connecting:
            if self._connection is None:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                connection = _Connection(reader, writer)
                connection.reading = asyncio.get_running_loop().create_task(self._read(connection))
                self._connection = connection
            return self._connection

    async def _read(self, connection: _Connection) -> None:
        try:
            while not connection.closed:
                data = await connection.reader.read(READ_SIZE)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                for reply in connection.parser.feed(data):
                    self._deliver(connection, reply)
        except (OSError, RedisConnectionError) as exc:
            self._drop(connection, str(exc) or repr(exc))

    def _deliver(self, connection: _Connection, reply: Reply) -> None:
        if not connection.waiters:
            raise RedisConnectionError(f"a reply nobody asked for: {reply!r}")
        waiter = connection.waiters[0]
        waiter.replies.append(reply)
        if len(waiter.replies) == waiter.count:
            connection.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_result(waiter.replies)

    def _drop(self, connection: _Connection, reason: str) -> None:
        if connection.closed:
            return
        connection.closed = True
        if self._connection is connection:
            self._connection = None
        for waiter in connection.waiters:
            if not waiter.future.done():
                waiter.future.set_exception(RedisConnectionError(reason))
        connection.waiters.clear()
        connection.writer.close()
        if connection.reading is not None and connection.reading is not asyncio.current_task():
            connection.reading.cancel()

    async def close(self) -> None:
        connection = self._connection
        if connection is None:
            return
        self._drop(connection, "closed")
        if connection.reading is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await connection.reading
        with contextlib.suppress(OSError):
            await connection.writer.wait_closed()
