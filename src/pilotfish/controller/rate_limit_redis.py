"""The global rate limit counters in Redis (``MeshConfig.spec.rateLimit.redis``), so that
several control planes share them.

Per request one pipeline, not a transaction: for each counter an INCRBY of its hits and an
EXPIRE of the window's length, as envoyproxy/ratelimit does (the counter outlives its
window by at most a window, and a key never lingers without a TTL). redis-py reconnects by
itself on the next call after Redis comes back; its own retries are off, since a retried
INCRBY may count a request twice, and the whole call has the proxies' deadline.
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
        """Forget every pooled connection: after a crash of Redis the idle ones are dead too,
        and each would fail one call after Redis is back, as a second outage."""
        with contextlib.suppress(RedisError, OSError):
            await self._client.connection_pool.disconnect()

    async def close(self) -> None:
        await self._client.aclose()
