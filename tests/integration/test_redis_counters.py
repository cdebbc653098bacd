"""``RedisCounters`` and our RESP client against a real Debian ``redis-server``: counts and
TTLs, Redis's own errors, a kill and a restart, a hang (SIGSTOP), garbage from a server that
is not Redis, and ``close()``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from tests.waiting import eventually

from pilotfish.agent.ports import free_port
from pilotfish.controller.rate_limit_redis import RedisCounters
from pilotfish.controller.redis_pipeline import RedisConnectionError, RedisPipeline, encode_command
from pilotfish.ratelimit.decisions import Increment
from pilotfish.ratelimit.stores import CounterStoreError
from redis_server import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(not REDIS_SERVER.exists(), reason="needs Debian redis-server")

# Generous for a shared 2-core machine: a test must not see a slow Redis where there is none.
TIMEOUT = 0.5


def hit(key: str, hits: int = 1, ttl: int = 60) -> Increment:
    return Increment(key=key, hits=hits, ttl_seconds=ttl, expires_at=0)


def connections_received(server: RedisServer) -> int:
    with redis.Redis(port=server.port) as direct:
        return int(direct.info("stats")["total_connections_received"])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def counters(redis_server: RedisServer) -> AsyncIterator[RedisCounters]:
    store = RedisCounters(redis_server.address, TIMEOUT)
    yield store
    await store.close()


async def test_counts_and_expires_in_redis(
    redis_server: RedisServer, counters: RedisCounters
) -> None:
    assert counters.name == f"redis {redis_server.address}"
    assert (counters.address, counters.timeout) == (redis_server.address, TIMEOUT)
    assert await counters.increment([hit("a", 2), hit("b", 5, ttl=3600)]) == [2, 5]
    # Calls of one loop turn share a write; each gets its own counts, in its own order.
    results = await asyncio.gather(
        *(counters.increment([hit("b", ttl=3600), hit("a")]) for _ in range(50))
    )
    assert sorted(results) == [[6 + i, 3 + i] for i in range(50)]
    assert await counters.increment([]) == []
    with redis.Redis(port=redis_server.port) as direct:
        assert (direct.get("a"), direct.get("b")) == (b"52", b"55")
        assert 0 < direct.ttl("a") <= 60 and 60 < direct.ttl("b") <= 3600


async def test_an_error_reply_fails_its_call_with_redis_text_and_keeps_the_connection(
    redis_server: RedisServer, counters: RedisCounters
) -> None:
    with redis.Redis(port=redis_server.port) as direct:
        direct.set("word", "abc")
    assert await counters.increment([hit("n")]) == [1]
    before = connections_received(redis_server)
    bad, good = await asyncio.gather(
        counters.increment([hit("n"), hit("word")]),
        counters.increment([hit("n")]),
        return_exceptions=True,
    )
    assert isinstance(bad, CounterStoreError)
    assert str(bad) == f"redis {redis_server.address}: ERR value is not an integer or out of range"
    # The other call of the same write is answered, and the replies after stay in line.
    assert good == [3]
    assert await counters.increment([hit("n", 10)]) == [13]
    assert connections_received(redis_server) == before + 1  # only this test's probe


async def test_a_killed_redis_fails_calls_and_is_used_again_once_restarted(
    redis_server: RedisServer, counters: RedisCounters
) -> None:
    assert await counters.increment([hit("k")]) == [1]
    redis_server.kill()
    for _ in range(3):
        with pytest.raises(CounterStoreError, match=f"redis {redis_server.address}: "):
            await counters.increment([hit("k")])
    redis_server.start()
    # Nothing was saved: the restarted Redis counts from nothing, on a new connection.
    assert await counters.increment([hit("k")]) == [1]


async def test_a_hung_redis_times_out_and_its_connection_is_replaced(
    redis_server: RedisServer,
) -> None:
    counters = RedisCounters(redis_server.address, timeout=0.2)
    try:
        assert await counters.increment([hit("h")]) == [1]
        before = connections_received(redis_server)
        redis_server.pause()
        try:
            calls = [counters.increment([hit("h")]) for _ in range(3)]
            failures = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            redis_server.resume()
        assert all(isinstance(failure, CounterStoreError) for failure in failures)
        assert [str(f) for f in failures] == [
            f"redis {redis_server.address} did not answer within 200 ms"
        ] * 3
        # The late replies went to the dropped connection: the next call is answered on a
        # new one, with its own count (the hung INCRBY was counted once Redis resumed).
        # (13 if the dropped connection's end reached Redis before its commands did.)
        assert await counters.increment([hit("h", 10)]) in ([13], [14])
        assert connections_received(redis_server) == before + 2  # a new one, and this probe
    finally:
        await counters.close()


async def test_replies_go_to_their_calls_in_the_order_the_calls_were_written(
    redis_server: RedisServer,
) -> None:
    pipeline = RedisPipeline("127.0.0.1", redis_server.port, TIMEOUT)
    try:
        assert await pipeline.execute(encode_command(b"INCRBY", b"warm", 1), 1) == [1]
        redis_server.pause()  # every call below is written before any reply comes
        try:
            calls = []
            for hits in (1, 20, 300):
                command = encode_command(b"INCRBY", f"k{hits}", hits)
                calls.append(asyncio.ensure_future(pipeline.execute(command * 2, 2)))
                await asyncio.sleep(0)  # each in its own loop turn: its own write
        finally:
            redis_server.resume()
        assert await asyncio.gather(*calls) == [[1, 2], [20, 40], [300, 600]]
    finally:
        await pipeline.close()


async def test_calls_arriving_while_a_write_is_in_flight_go_in_the_next(
    redis_server: RedisServer, counters: RedisCounters
) -> None:
    assert await counters.increment([hit("w")]) == [1]
    redis_server.pause()  # the first write stays in flight while the others arrive
    try:
        calls = []
        for hits in (1, 20, 300):
            calls.append(asyncio.ensure_future(counters.increment([hit("w", hits)])))
            await asyncio.sleep(0)
    finally:
        redis_server.resume()
    async with asyncio.timeout(10):  # a held call that is never written would hang
        assert await asyncio.gather(*calls) == [[2], [22], [322]]


async def test_close_closes_the_connection(redis_server: RedisServer) -> None:
    counters = RedisCounters(redis_server.address, TIMEOUT)
    assert await counters.increment([hit("c")]) == [1]
    await counters.close()

    def only_the_probe_is_connected() -> bool:
        with redis.Redis(port=redis_server.port) as direct:
            return len(direct.client_list()) == 1

    await eventually(only_the_probe_is_connected, "Redis sees the connection closed")
    await counters.close()  # twice is harmless


async def test_garbage_fails_every_waiting_caller_and_the_next_call_reconnects() -> None:
    connections: list[bytes] = []
    writers: list[asyncio.StreamWriter] = []

    async def not_redis(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Waits for two batches on the first connection (one on later ones), then answers
        # as an HTTP server would.
        writers.append(writer)
        batches = 1 if connections else 2
        batch = len(encode_command(b"INCRBY", b"x", 1))
        connections.append(await reader.readexactly(batch * batches))
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()

    port = free_port()
    server = await asyncio.start_server(not_redis, "127.0.0.1", port)
    pipeline = RedisPipeline("127.0.0.1", port, TIMEOUT)
    try:
        first = asyncio.ensure_future(pipeline.execute(encode_command(b"INCRBY", b"x", 1), 1))
        await asyncio.sleep(0)  # the second call comes in another loop turn: its own write
        second = pipeline.execute(encode_command(b"INCRBY", b"x", 1), 1)
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert [type(result) for result in results] == [RedisConnectionError] * 2
        assert all("unexpected reply b'HTTP/1.1 400" in str(result) for result in results)
        with pytest.raises(RedisConnectionError):
            await pipeline.execute(encode_command(b"INCRBY", b"x", 1), 1)
        assert len(connections) == 2
    finally:
        await pipeline.close()
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
