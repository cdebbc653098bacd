"""Global rate limits end to end in `pilotfish up`: real Envoys (a gateway and the sidecars of
two replicas of the target) ask the control plane's rate limit service, which counts in its
memory or in a real ``redis-server``; Redis killed under ``failureMode`` deny, then allow,
then restarted.

The proxies' timeout is 1 s here, not the default 20 ms: the count is exact for the requests
the service answers in time, and this machine is shared.
"""

from __future__ import annotations

import re
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from tests.integration.mesh_harness import (
    Reply,
    RunningMesh,
    echo_workload,
    free_port,
    gateway,
    http_get,
    running_mesh,
    write_yaml,
)
from tests.waiting import wait_until

from pilotfish.ratelimit.decisions import selector_digest
from redis_server import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(not REDIS_SERVER.exists(), reason="needs Debian redis-server")

BACKEND = "backend.default.svc.cluster.local"
RULE = "default/backend-per-user/global/0"
LIMIT = 20
SENT = 50
# A day's window: the test cannot straddle two windows unless it runs across midnight UTC.
MESH = f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: backend}}}}]
    retries: {{attempts: 0}}
---
apiVersion: pilotfish.io/v1alpha1
kind: RateLimitPolicy
metadata: {{name: backend-per-user}}
spec:
  targetRef: {{kind: Service, name: backend}}
  global:
    rules:
    - clientSelectors:
      - headers: [{{name: x-user, type: Distinct}}]
      limit: {{requests: {LIMIT}, unit: Day}}
"""


def mesh_config(rate_limit: str) -> str:
    return f"""
apiVersion: pilotfish.io/v1alpha1
kind: MeshConfig
metadata: {{name: mesh}}
spec:
  rateLimit: {rate_limit}
"""


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("global-rate-limits")
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(gateway_port) + echo_workload("backend", "backend", 9000, replicas=2) + MESH,
    )
    write_yaml(directory / "meshconfig.yaml", mesh_config("{timeout: 1s}"))
    with running_mesh(directory, gateway_port) as running:
        running.wait_serving("/")
        running.wait_endpoints(BACKEND, 2)
        running.wait_synced()
        yield running


def metrics(mesh: RunningMesh) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(mesh.admin_url + "/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def serve_mesh_config(mesh: RunningMesh, rate_limit: str, *served: str) -> None:
    """Save a MeshConfig and wait until it is served (``/metrics`` shows each of ``served``),
    every proxy has taken it, and no proxy still drains the connections it had opened under
    the previous filters (they would keep the previous failureMode and timeout)."""
    write_yaml(mesh.directory / "meshconfig.yaml", mesh_config(rate_limit))
    wait_until(lambda: all(line in metrics(mesh) for line in served), 30, f"{served} served")
    mesh.wait_synced()
    admins = envoy_admins(mesh)
    wait_until(lambda: not any(draining(admin) for admin in admins), 60, "old filters drained")


def envoy_admins(mesh: RunningMesh) -> list[str]:
    """The Envoy admin address of every connected proxy, as the admin API reports it."""
    proxies = mesh.admin("/api/proxies")["proxies"]
    assert isinstance(proxies, list)
    found = []
    for proxy in proxies:
        node = urllib.parse.quote(str(proxy["node_id"]))
        (entry,) = mesh.admin(f"/api/endpoints?service={BACKEND}&proxy={node}")["proxies"]  # type: ignore[misc]
        found.append(str(entry["admin"]))
    return found


def draining(admin: str) -> bool:
    text = str(http_get(f"http://{admin}/stats?filter=_draining$").body["text"])
    return any(int(value) for value in re.findall(r"_draining: (\d+)", text))


def failure_mode(mode: str) -> str:
    return f'pilotfish_ratelimit_failure_mode{{mode="{mode}"}} 1'


def redis_store(server: RedisServer, up: int) -> str:
    return f'pilotfish_ratelimit_store_up{{store="redis {server.address}"}} {up}'


def burst(mesh: RunningMesh, user: str) -> list[Reply]:
    """``SENT`` requests as ``user`` through the gateway, four at a time."""
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda _: mesh.get("/", {"x-user": user}), range(SENT)))


def assert_shared_exactly(replies: list[Reply]) -> None:
    assert Counter(r.status for r in replies) == {200: LIMIT, 429: SENT - LIMIT}
    # Both replicas admitted some: one count, not one per replica.
    assert len({r.body["replica"] for r in replies if r.status == 200}) == 2


def test_a_global_limit_is_shared_exactly_by_two_replicas_in_memory(mesh: RunningMesh) -> None:
    replies = burst(mesh, "ann")
    assert_shared_exactly(replies)
    refused = next(r for r in replies if r.status == 429)
    assert refused.headers["x-pilotfish-ratelimit"] == RULE
    assert refused.headers["x-ratelimit-limit"].startswith(f"{LIMIT}, {LIMIT};w=86400")
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert "rate limit default/backend-per-user global/0 (20 per Day)" in str(refused.body)
    assert mesh.get("/", {"x-user": "bob"}).status == 200
    text = metrics(mesh)
    assert f'pilotfish_ratelimit_decisions_total{{rule="{RULE}",code="OVER_LIMIT"}} 30' in text
    assert 'pilotfish_ratelimit_store_up{store="memory"} 1' in text


def test_with_redis_two_replicas_share_one_exact_count_in_redis(
    mesh: RunningMesh, redis_server: RedisServer
) -> None:
    redis_config = f"{{redis: {{address: {redis_server.address}}}, timeout: 1s}}"
    serve_mesh_config(mesh, redis_config, redis_store(redis_server, 1), failure_mode("allow"))
    assert_shared_exactly(burst(mesh, "bea"))
    direct = redis.Redis(port=redis_server.port)
    bea = f"pilotfish_{RULE}_{selector_digest((('header:x-user', 'bea'),))}_".encode()
    (key,) = [k for k in direct.keys("*") if k.startswith(bea)]
    assert int(direct.get(key) or 0) == SENT
    direct.close()
    assert redis_store(redis_server, 1) in metrics(mesh)


def test_redis_down_is_decided_by_failure_mode_deny_then_allow(
    mesh: RunningMesh, redis_server: RedisServer
) -> None:
    redis_config = f"{{redis: {{address: {redis_server.address}}}, timeout: 1s"
    serve_mesh_config(
        mesh,
        redis_config + ", failureMode: deny}",
        redis_store(redis_server, 1),
        failure_mode("deny"),
    )
    assert mesh.get("/", {"x-user": "cy"}).status == 200
    redis_server.kill()
    try:
        denied = [mesh.get("/", {"x-user": "cy"}) for _ in range(5)]
        assert [r.status for r in denied] == [500] * 5
        assert "rate limit service" in str(denied[0].body)
        text = metrics(mesh)
        assert redis_store(redis_server, 0) in text
        assert "pilotfish_ratelimit_store_errors_total 0" not in text

        serve_mesh_config(mesh, redis_config + ", failureMode: allow}", failure_mode("allow"))
        # Undecided requests go through, over the limit or not.
        assert Counter(r.status for r in burst(mesh, "cy")) == {200: SENT}
    finally:
        redis_server.start()

    # The restarted Redis counts from nothing, exactly again.
    def counting() -> bool:
        mesh.get("/", {"x-user": "probe"})
        return redis_store(redis_server, 1) in metrics(mesh)

    wait_until(counting, 30, "Redis counting again")
    assert_shared_exactly(burst(mesh, "dee"))
    log = mesh.log()
    assert log.count("until it answers again the proxies refuse") == 1
    assert "answers again after" in log
