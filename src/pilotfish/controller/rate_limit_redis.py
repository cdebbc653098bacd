"""The global rate limit counters in Redis (``MeshConfig.spec.rateLimit.redis``), so that
several control planes share them.

For each counter an INCRBY of its hits and an EXPIRE of the window's length, pipelined, not
a transaction, as envoyproxy/ratelimit does (the counter outlives its window by at most a
window, and a key never lingers without a TTL). The calls that arrive in one turn of the
event loop share one pipeline, as envoyproxy/ratelimit's write buffering makes its calls
share a write: a round trip and redis-py's cost per pipeline are paid once per turn, not per
request. redis-py reconnects by itself on the next call after Redis comes back; its own
retries are off, since a retried INCRBY may count a request twice, and each pipeline has
the proxies' deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from pilotfish.ratelimit.decisions import Increment
from pilotfish.ratelimit.stores import CounterStoreError

# Connections kept open to Redis; calls beyond them wait for one (under the deadline).
MAX_CONNECTIONS = 64


class RedisCounters:
    def __init__(self, address: str, timeout: float) -> None:
        host, _, port = address.rpartition(":")
        self.address = address
        self.timeout = timeout
        self._pending: list[tuple[Sequence[Increment], asyncio.Future[list[int]]]] = []
        self._flush_scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()
        self._client = Redis(
            host=host.strip("[]"),
            port=int(port),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=MAX_CONNECTIONS,
        )

    @property
    def name(self) -> str:
        return f"redis {self.address}"

    async def increment(self, increments: Sequence[Increment]) -> list[int]:
        if not increments:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._pending.append((increments, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._start_flush)
        return await future

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(
        self, batch: Sequence[tuple[Sequence[Increment], asyncio.Future[list[int]]]]
    ) -> None:
        try:
            counts = await self._send([item for increments, _ in batch for item in increments])
        except Exception as exc:  # whatever happened, no caller of the batch may hang
            problem = str(exc) if isinstance(exc, CounterStoreError) else f"{self.name}: {exc!r}"
            for _, future in batch:
                if not future.done():  # a caller that gave up cancelled its own
                    future.set_exception(CounterStoreError(problem))
            return
        start = 0
        for increments, future in batch:
            if not future.done():
                future.set_result(counts[start : start + len(increments)])
            start += len(increments)

    async def _send(self, increments: Sequence[Increment]) -> list[int]:
        try:
            async with asyncio.timeout(self.timeout):
                async with self._client.pipeline(transaction=False) as pipe:
                    for item in increments:
                        pipe.incrby(item.key, item.hits)
                        pipe.expire(item.key, item.ttl_seconds)
                    replies = await pipe.execute()
        except TimeoutError as exc:
            await self._drop_connections()
            raise CounterStoreError(
                f"{self.name} did not answer within {self.timeout * 1000:g} ms"
            ) from exc
        except (RedisError, OSError) as exc:
            await self._drop_connections()
            raise CounterStoreError(f"{self.name}: {exc}") from exc
        return [int(value) for value in replies[::2]]

    async def _drop_connections(self) -> None:
        """Close the idle pooled connections: after a crash of Redis they are dead too, and
        each would fail one call after Redis is back, as a second outage. Connections in use
        by other pipelines are left to fail (or not) on their own: closing one under a
        pipeline breaks redis-py itself."""
        with contextlib.suppress(RedisError, OSError):
            await self._client.connection_pool.disconnect(inuse_connections=False)

    async def close(self) -> None:
        await asyncio.gather(*self._flushes, return_exceptions=True)
        await self._client.aclose()
