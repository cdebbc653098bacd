"""The global rate limit counters in Redis (``MeshConfig.spec.rateLimit.redis``), so that
several control planes share them.

For each counter an INCRBY of its hits and an EXPIRE of the window's length, pipelined, not
a transaction, as envoyproxy/ratelimit does (the counter outlives its window by at most a
window, and a key never lingers without a TTL). Calls share writes on one connection
(``redis_pipeline``, our own small client): one write is in flight at a time, and the calls
that arrive meanwhile (or in the same turn of the event loop) go together in the next one
once its replies are in. The syscalls of a write, not its bytes, are what it costs the
service, so under load they are paid once per batch rather than once per request, and an
idle service writes at once. Each call has the proxies' deadline counted from its arrival,
waiting for the write before it included; a write that fails or times out drops the
connection and the next one connects again, so the counters come back by themselves after
Redis restarts. Nothing is retried, since a retried INCRBY may count a request twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pilotfish.controller.redis_pipeline import (
    RedisConnectionError,
    RedisPipeline,
    Reply,
    ReplyError,
    encode_command,
)
from pilotfish.ratelimit.decisions import Increment
from pilotfish.ratelimit.stores import CounterStoreError


class RedisCounters:
    def __init__(self, address: str, timeout: float) -> None:
        host, _, port = address.rpartition(":")
        self.address = address
        self.timeout = timeout
        self._pending: list[tuple[Sequence[Increment], asyncio.Future[list[int]]]] = []
        self._oldest_pending = 0.0  # when the oldest pending call came, in loop time
        self._flush_scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()
        self._pipeline = RedisPipeline(host.strip("[]"), int(port), timeout)

    @property
    def name(self) -> str:
        return f"redis {self.address}"

    async def increment(self, increments: Sequence[Increment]) -> list[int]:
        if not increments:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        if not self._pending:
            self._oldest_pending = loop.time()
        self._pending.append((increments, future))
        if not self._flush_scheduled and not self._flushes:
            self._flush_scheduled = True
            loop.call_soon(self._start_flush)
        return await future

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        if self._flushes or not self._pending:
            return
        batch, self._pending = self._pending, []
        deadline = self._oldest_pending + self.timeout
        task = asyncio.get_running_loop().create_task(self._flush(batch, deadline))
        self._flushes.add(task)
        task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        self._start_flush()  # the calls that came while it was in flight

    async def _flush(
        self,
        batch: Sequence[tuple[Sequence[Increment], asyncio.Future[list[int]]]],
        deadline: float,
    ) -> None:
        try:
            replies = await self._send([item for each, _ in batch for item in each], deadline)
        except Exception as exc:  # whatever happened, no caller of the batch may hang
            problem = str(exc) if isinstance(exc, CounterStoreError) else f"{self.name}: {exc!r}"
            for _, future in batch:
                if not future.done():  # a caller that gave up cancelled its own
                    future.set_exception(CounterStoreError(problem))
            return
        start = 0
        for increments, future in batch:
            own = replies[start : start + 2 * len(increments)]
            start += len(own)
            if future.done():
                continue
            # Redis refused one of this call's commands (an EXPIRE's too: that key would never
            # expire); the other calls of the write were answered on their own.
            refused = [reply.text for reply in own if isinstance(reply, ReplyError)]
            if refused:
                future.set_exception(CounterStoreError(f"{self.name}: {refused[0]}"))
            else:
                future.set_result([reply for reply in own[::2] if isinstance(reply, int)])

    async def _send(self, increments: Sequence[Increment], deadline: float) -> list[Reply]:
        """Each increment's two replies (INCRBY's, then EXPIRE's), in order."""
        payload = b"".join(
            encode_command(b"INCRBY", item.key, item.hits)
            + encode_command(b"EXPIRE", item.key, item.ttl_seconds)
            for item in increments
        )
        try:
            return await self._pipeline.execute(payload, 2 * len(increments), deadline)
        except TimeoutError as exc:
            raise CounterStoreError(
                f"{self.name} did not answer within {self.timeout * 1000:g} ms"
            ) from exc
        except RedisConnectionError as exc:
            raise CounterStoreError(f"{self.name}: {exc}") from exc

    async def close(self) -> None:
        while self._flushes:  # each may start the next
            await asyncio.gather(*self._flushes, return_exceptions=True)
        await self._pipeline.close()
