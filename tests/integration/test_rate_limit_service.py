"""The global rate limit service through real gRPC: grpcio clients (one channel each, as
several proxies) call the real servicer on a free port, with its counters in memory or in
a real ``redis-server``; two servicers sharing one Redis stand for two control-plane
replicas. Redis is killed, restarted and hung under traffic.

The services' clock is fixed at the test's start, so no window ends during a test.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import redis
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from tests.waiting import eventually

from pilotfish.controller.control_plane import ControlPlane
from pilotfish.controller.rate_limit_service import RateLimitService, rate_limit_method_handlers
from pilotfish.model.rate_limits import RateLimitSettings
from pilotfish.model.resources import MeshConfig, MeshSettings
from pilotfish.ratelimit.decisions import Increment, selector_digest
from pilotfish.ratelimit.stores import CounterStore, MemoryCounters
from pilotfish.telemetry.prometheus import render
from rate_limit_policies import global_policy, mesh_with, rule
from redis_server import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(not REDIS_SERVER.exists(), reason="needs Debian redis-server")

RULE = "default/backend-per-user/global/0"
LIMIT = 50
CLIENTS = 4
PER_CLIENT = 30  # 120 requests for a limit of 50
# Generous for a shared 2-core machine: a test must not see a slow Redis where there is none.
TEST_TIMEOUT = 0.5
OK = rls_pb2.RateLimitResponse.OK
OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT
CONFIG = mesh_with(global_policy("backend-per-user", rule(LIMIT, "Hour", distinct_header="x-user")))


def with_redis(config: MeshConfig, address: str, timeout: float = TEST_TIMEOUT) -> MeshConfig:
    settings = RateLimitSettings(redis_address=address, failure_mode="deny", timeout=timeout)
    return replace(config, mesh=MeshSettings(rate_limit=settings))


def ask(user: str) -> rls_pb2.RateLimitRequest:
    entries = [("pilotfish_rule", RULE), ("header:x-user", user)]
    descriptor = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )
    return rls_pb2.RateLimitRequest(domain="pilotfish", descriptors=[descriptor])


class Replica:
    """One control plane's rate limit service on its own gRPC server."""

    def __init__(
        self,
        config: Callable[[], MeshConfig | None],
        clock: Callable[[], float],
        memory: CounterStore | None = None,
    ):
        self.service = RateLimitService(config, clock=clock, memory=memory)
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers(rate_limit_method_handlers(self.service))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def stop(self) -> None:
        await self.server.stop(0)
        await self.service.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def now() -> float:
    """The services' clock, fixed."""
    return time.time()


@pytest.fixture
async def replicas(now: float) -> AsyncIterator[Callable[..., Replica]]:
    started: list[Replica] = []

    def start(
        config: Callable[[], MeshConfig | None], memory: CounterStore | None = None
    ) -> Replica:
        replica = Replica(config, lambda: now, memory)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        await replica.stop()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[int], rls_pb2_grpc.RateLimitServiceStub]]:
    channels: list[grpc.aio.Channel] = []

    def connect(port: int) -> rls_pb2_grpc.RateLimitServiceStub:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return rls_pb2_grpc.RateLimitServiceStub(channel)  # type: ignore[no-untyped-call]

    yield connect
    for channel in channels:
        await channel.close()


async def burst(stubs: list[rls_pb2_grpc.RateLimitServiceStub], user: str) -> Counter[int]:
    """``PER_CLIENT`` requests from each stub, all stubs at once: the codes seen."""

    async def client(stub: rls_pb2_grpc.RateLimitServiceStub) -> list[int]:
        return [
            (await stub.ShouldRateLimit(ask(user), timeout=10)).overall_code
            for _ in range(PER_CLIENT)
        ]

    results = await asyncio.gather(*(client(stub) for stub in stubs))
    return Counter(code for codes in results for code in codes)


async def start_all(*replicas: Replica) -> None:
    for replica in replicas:
        await replica.server.start()


def redis_key(user: str, now: float) -> str:
    window = int(now) // 3600 * 3600
    return f"pilotfish_{RULE}_{selector_digest((('header:x-user', user),))}_{window}"


def decided(replica: Replica) -> int:
    return sum(replica.service.decisions.values())


async def test_in_memory_several_clients_share_one_exact_count(
    replicas: Callable[..., Replica], clients: Callable[[int], rls_pb2_grpc.RateLimitServiceStub]
) -> None:
    replica = replicas(lambda: CONFIG)
    await start_all(replica)
    stubs = [clients(replica.port) for _ in range(CLIENTS)]
    assert await burst(stubs, "alice") == {OK: LIMIT, OVER_LIMIT: CLIENTS * PER_CLIENT - LIMIT}
    assert await burst(stubs[:1], "bob") == {OK: PER_CLIENT}

    refused = await stubs[0].ShouldRateLimit(ask("alice"))
    assert refused.overall_code == OVER_LIMIT
    (status,) = refused.statuses
    assert status.current_limit.requests_per_unit == LIMIT
    assert status.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.HOUR
    assert status.limit_remaining == 0
    assert 0 < status.duration_until_reset.seconds <= 3600
    assert [(h.key, h.value) for h in refused.response_headers_to_add] == [
        ("x-pilotfish-ratelimit", RULE)
    ]
    assert refused.raw_body.decode() == (
        "pilotfish: rate limit default/backend-per-user global/0 (50 per Hour) exceeded "
        "for x-user=alice [RL]"
    )
    admitted = await stubs[0].ShouldRateLimit(ask("carol"))
    assert admitted.statuses[0].limit_remaining == LIMIT - 1
    assert not admitted.response_headers_to_add and not admitted.raw_body

    metrics = render(replica.service.families())
    assert (
        f'pilotfish_ratelimit_decisions_total{{rule="{RULE}",code="OK"}} {LIMIT + PER_CLIENT + 1}'
        in metrics
    )
    assert f'pilotfish_ratelimit_decisions_total{{rule="{RULE}",code="OVER_LIMIT"}} 71' in metrics
    assert 'pilotfish_ratelimit_store_up{store="memory"} 1' in metrics


async def test_two_replicas_sharing_one_redis_share_one_exact_count(
    redis_server: RedisServer,
    replicas: Callable[..., Replica],
    clients: Callable[[int], rls_pb2_grpc.RateLimitServiceStub],
    now: float,
) -> None:
    config = with_redis(CONFIG, redis_server.address)
    first, second = replicas(lambda: config), replicas(lambda: config)
    await start_all(first, second)
    stubs = [clients(replica.port) for replica in (first, second) for _ in range(CLIENTS // 2)]
    assert await burst(stubs, "alice") == {OK: LIMIT, OVER_LIMIT: CLIENTS * PER_CLIENT - LIMIT}

    # The counter is Redis's, under the key every control plane computes, and it expires.
    direct = redis.Redis(port=redis_server.port)
    (key,) = direct.keys("*")
    assert key.decode() == redis_key("alice", now)
    assert int(direct.get(key) or 0) == CLIENTS * PER_CLIENT
    assert 0 < direct.ttl(key) <= 3600
    direct.close()
    metrics = render(second.service.families())
    assert f'pilotfish_ratelimit_store_up{{store="redis {redis_server.address}"}} 1' in metrics
    assert 'pilotfish_ratelimit_failure_mode{mode="deny"} 1' in metrics


async def test_redis_killed_and_restarted_under_traffic(
    redis_server: RedisServer,
    replicas: Callable[..., Replica],
    clients: Callable[[int], rls_pb2_grpc.RateLimitServiceStub],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pilotfish.ratelimit")
    config = with_redis(CONFIG, redis_server.address)
    replica = replicas(lambda: config)
    await start_all(replica)
    stubs = [clients(replica.port) for _ in range(CLIENTS)]
    seen: Counter[str] = Counter()
    details: set[str] = set()
    refused_clients: set[int] = set()
    running = True

    async def traffic(index: int, stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
        deadline = time.monotonic() + 60  # bounded, whatever happens below
        sent = 0
        while running and time.monotonic() < deadline and sent < 50_000:
            sent += 1
            try:
                await stub.ShouldRateLimit(ask("traffic"), timeout=10)
            except grpc.aio.AioRpcError as error:
                seen[error.code().name] += 1
                details.add(error.details() or "")
                refused_clients.add(index)
            else:
                seen["answered"] += 1
            await asyncio.sleep(0.002)

    tasks = [asyncio.create_task(traffic(i, stub)) for i, stub in enumerate(stubs)]
    try:
        await eventually(lambda: seen["answered"] > 20, "answers while Redis is up")
        redis_server.kill()
        refused_clients.clear()
        # Once every client was refused, none has a call in flight from before the kill.
        await eventually(
            lambda: len(refused_clients) == CLIENTS, "UNAVAILABLE for every client after the kill"
        )
        assert "pilotfish_ratelimit_store_up" in render(replica.service.families())
        assert f'store_up{{store="redis {redis_server.address}"}} 0' in render(
            replica.service.families()
        )
        # Nothing is decided while Redis is away: 20 more requests of our own, each refused,
        # and not one decision taken meanwhile, the traffic's included.
        decided_before, errors_before = decided(replica), replica.service.store_errors
        for _ in range(20):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stubs[0].ShouldRateLimit(ask("traffic"), timeout=10)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            seen["UNAVAILABLE"] += 1
        assert decided(replica) == decided_before
        assert replica.service.store_errors >= errors_before + 20
        redis_server.start()
        answered = seen["answered"]
        await eventually(lambda: seen["answered"] > answered + 20, "answers after the restart")
    finally:
        running = False
        await asyncio.gather(*tasks)

    assert set(seen) == {"answered", "UNAVAILABLE"}
    assert all(redis_server.address in text for text in details)
    # Exact again: the restarted Redis counts from nothing, and shares one count.
    assert await burst(stubs, "after") == {OK: LIMIT, OVER_LIMIT: CLIENTS * PER_CLIENT - LIMIT}
    failing = [r for r in caplog.records if "until it answers again" in r.getMessage()]
    back = [r for r in caplog.records if "answers again after" in r.getMessage()]
    assert len(failing) == 1 and len(back) == 1
    assert "failureMode deny" in failing[0].getMessage()
    assert replica.service.store_errors == seen["UNAVAILABLE"]
    assert 'pilotfish_ratelimit_store_up{store="redis ' in render(replica.service.families())


async def test_a_hung_redis_is_answered_unavailable_then_counted_again(
    redis_server: RedisServer,
    replicas: Callable[..., Replica],
    clients: Callable[[int], rls_pb2_grpc.RateLimitServiceStub],
    now: float,
) -> None:
    config = with_redis(CONFIG, redis_server.address, timeout=0.1)
    replica = replicas(lambda: config)
    await start_all(replica)
    stub = clients(replica.port)
    assert (await stub.ShouldRateLimit(ask("alice"))).statuses[0].limit_remaining == LIMIT - 1
    redis_server.pause()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ShouldRateLimit(ask("alice"), timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "did not answer within 100 ms" in (raised.value.details() or "")
    finally:
        redis_server.resume()

    async def counted() -> bool:
        try:
            response = await stub.ShouldRateLimit(ask("bob"), timeout=10)
        except grpc.aio.AioRpcError:
            return False
        return response.overall_code == OK

    await eventually(counted, "a decision once Redis answers again")
    # The hung call's INCRBY may still be in Redis's socket buffer when it resumes (a timeout
    # cannot take it back): Redis's own count, read once every call has ended, is the truth,
    # and the service's answer must agree with it.
    direct = redis.Redis(port=redis_server.port)
    try:
        counted_by_redis = int(direct.get(redis_key("alice", now)) or 0)
        remaining = (await stub.ShouldRateLimit(ask("alice"))).statuses[0].limit_remaining
        assert remaining == LIMIT - counted_by_redis - 1
        assert int(direct.get(redis_key("alice", now)) or 0) == counted_by_redis + 1
    finally:
        direct.close()


async def test_full_memory_counters_refuse_only_requests_needing_a_new_counter(
    replicas: Callable[..., Replica],
    clients: Callable[[int], rls_pb2_grpc.RateLimitServiceStub],
    caplog: pytest.LogCaptureFixture,
    now: float,
) -> None:
    replica = replicas(lambda: CONFIG, MemoryCounters(clock=lambda: now, max_keys=3))
    await start_all(replica)
    stub = clients(replica.port)
    for user in ("ann", "bob", "cy"):
        assert (await stub.ShouldRateLimit(ask(user))).overall_code == OK
    # A flood of new values, far more than the 3 failures in a row that start an outage.
    flood = [await stub.ShouldRateLimit(ask(f"flood-{i}")) for i in range(10)]
    assert [r.overall_code for r in flood] == [OVER_LIMIT] * 10
    assert flood[0].raw_body.decode() == (
        "pilotfish: rate limit default/backend-per-user global/0 (50 per Hour) not counted "
        "for x-user=flood-0: the control plane's rate limit counters are full [RL]"
    )
    assert [(h.key, h.value) for h in flood[0].response_headers_to_add] == [
        ("x-pilotfish-ratelimit", RULE)
    ]
    # Every client already counted goes on being counted.
    for user in ("ann", "bob", "cy"):
        answer = await stub.ShouldRateLimit(ask(user))
        assert answer.overall_code == OK and answer.statuses[0].limit_remaining == LIMIT - 2
    assert replica.service.store_errors == 0
    metrics = render(replica.service.families())
    assert 'pilotfish_ratelimit_store_up{store="memory"} 1' in metrics
    assert "pilotfish_ratelimit_counters_full_total 10" in metrics
    full = [r for r in caplog.records if "counters are full" in r.getMessage()]
    assert len(full) == 1
    assert not [r for r in caplog.records if "until it answers again" in r.getMessage()]


class BrokenCounters:
    """A store with a bug: it raises what no store should. Nothing real does today, which
    is why this one stands in."""

    name = "broken-store"

    async def increment(self, increments: Sequence[Increment]) -> list[int]:
        raise RuntimeError("a bug in the store")

    async def close(self) -> None:
        pass


async def test_a_store_raising_anything_else_is_answered_unavailable_with_its_name(
    replicas: Callable[..., Replica],
    clients: Callable[[int], rls_pb2_grpc.RateLimitServiceStub],
    caplog: pytest.LogCaptureFixture,
) -> None:
    replica = replicas(lambda: CONFIG, BrokenCounters())
    await start_all(replica)
    stub = clients(replica.port)
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ShouldRateLimit(ask("alice"), timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "broken-store failed: RuntimeError('a bug in the store')" in (
            raised.value.details() or ""
        )
    assert replica.service.store_errors == 3
    # It went through the outage machine: 3 in a row start an outage.
    assert 'store_up{store="broken-store"} 0' in render(replica.service.families())
    failing = [r for r in caplog.records if "until it answers again" in r.getMessage()]
    assert len(failing) == 1


async def test_the_control_plane_serves_it_on_the_xds_port(
    tmp_path: Path,
    clients: Callable[[int], rls_pb2_grpc.RateLimitServiceStub],
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "mesh.yaml").write_text(
        "apiVersion: pilotfish.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\n"
        "spec:\n  rateLimit: {failureMode: deny}\n"
    )
    control_plane = ControlPlane(tmp_path)
    await control_plane.start()
    try:
        stub = clients(control_plane.xds_port)
        # The folder has no RateLimitPolicy: a proxy asking about a rule is let through,
        # and that is logged once.
        for user in ("alice", "bob"):
            response = await stub.ShouldRateLimit(ask(user))
            assert response.overall_code == OK
            assert not response.statuses[0].HasField("current_limit")
        unknown = [r for r in caplog.records if "served config does not have" in r.getMessage()]
        assert len(unknown) == 1 and RULE in unknown[0].getMessage()
        metrics = render(control_plane.metric_families())
        assert 'pilotfish_ratelimit_failure_mode{mode="deny"} 1' in metrics
        assert 'pilotfish_ratelimit_failure_mode{mode="allow"} 0' in metrics
        assert "pilotfish_ratelimit_store_errors_total 0" in metrics
    finally:
        await control_plane.stop()
