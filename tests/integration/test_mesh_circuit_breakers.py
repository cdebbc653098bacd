"""Circuit breakers, retry budgets and outlier detection of DestinationRules, judged by real
traffic through `pilotfish up`'s gateway and sidecars."""

from __future__ import annotations

import re
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
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

pytestmark = pytest.mark.integration

FLAKY = "flaky.default.svc.cluster.local"
REPLICAS = "replicas.default.svc.cluster.local"
BASE_EJECTION_SECONDS = 3.0
EJECTION_INTERVAL_SECONDS = 0.5

RULES = f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: flaky}}
spec:
  host: flaky
  subsets:
  - name: pooled
    labels: {{version: v1}}
    trafficPolicy:
      connectionPool:
        tcp: {{maxConnections: 1}}
        http: {{http1MaxPendingRequests: 1}}
  - name: budgeted
    labels: {{version: v1}}
    trafficPolicy:
      retryBudget: {{percent: 10, minRetryConcurrency: 1}}
  - name: client-protocol
    labels: {{version: v1}}
    trafficPolicy:
      connectionPool:
        http: {{useClientProtocol: true}}
  - name: upgraded
    labels: {{version: v1}}
    trafficPolicy:
      connectionPool:
        http: {{h2UpgradePolicy: UPGRADE, maxRequestsPerConnection: 100, idleTimeout: 30s}}
  - name: picky
    labels: {{version: v1}}
    trafficPolicy:
      outlierDetection:
        consecutive5xxErrors: 1
        outlierDetectionHttpErrorCodes: [404]
        baseEjectionTime: 600s
        maxEjectionPercent: 100
  - name: ejecting
    labels: {{version: v1}}
    trafficPolicy:
      outlierDetection:
        consecutive5xxErrors: 1
        baseEjectionTime: 600s
        maxEjectionPercent: 100
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: replicas}}
spec:
  host: replicas
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: {int(EJECTION_INTERVAL_SECONDS * 1000)}ms
      baseEjectionTime: {int(BASE_EJECTION_SECONDS)}s
      maxEjectionPercent: 100
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /pool/}}}}]
    rewrite: {{uri: /}}
    route: [{{destination: {{host: flaky, subset: pooled}}}}]
    retries: {{attempts: 0}}
  - match: [{{uri: {{prefix: /budget/}}}}]
    rewrite: {{uri: /}}
    route: [{{destination: {{host: flaky, subset: budgeted}}}}]
    retries: {{attempts: 3, retryOn: 5xx}}
  - match: [{{uri: {{prefix: /open/}}}}]
    rewrite: {{uri: /}}
    route: [{{destination: {{host: flaky}}}}]
    retries: {{attempts: 3, retryOn: 5xx}}
  - match: [{{uri: {{prefix: /client-protocol/}}}}]
    rewrite: {{uri: /}}
    route: [{{destination: {{host: flaky, subset: client-protocol}}}}]
  - match: [{{uri: {{prefix: /upgraded/}}}}]
    rewrite: {{uri: /}}
    route: [{{destination: {{host: flaky, subset: upgraded}}}}]
  - match: [{{uri: {{prefix: /picky/}}}}]
    rewrite: {{uri: /}}
    route: [{{destination: {{host: flaky, subset: picky}}}}]
    retries: {{attempts: 0}}
  - match: [{{uri: {{prefix: /ejecting/}}}}]
    rewrite: {{uri: /}}
    route: [{{destination: {{host: flaky, subset: ejecting}}}}]
    retries: {{attempts: 0}}
  - match: [{{uri: {{prefix: /replicas/}}}}]
    rewrite: {{uri: /}}
    route: [{{destination: {{host: replicas}}}}]
    retries: {{attempts: 0}}
  - route: [{{destination: {{host: flaky}}}}]
---
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("circuit-breakers")
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(gateway_port)
        # Declared HTTP: h2UpgradePolicy speaks HTTP/2 between the sidecars and HTTP/1.1 to
        # the app; a detected port would pass the upgraded HTTP/2 on to it, as in Istio.
        + echo_workload("flaky", "flaky", 9000, protocol="HTTP")
        + echo_workload("healthy", "replicas", 9100, replicas=2)
        + echo_workload("broken", "replicas", 9100, env={"ALWAYS_FAIL": "1"})
        + RULES,
    )
    with running_mesh(directory, gateway_port) as running:
        running.wait_serving("/")
        running.wait_endpoints(REPLICAS, 3)
        running.wait_synced()
        yield running


def burst(mesh: RunningMesh, path: str, count: int) -> list[Reply]:
    """``count`` requests at once, each on its own connection: no thread sends before every
    thread is ready to."""
    ready = threading.Barrier(count)

    def one(_: int) -> Reply:
        ready.wait(timeout=20)
        return mesh.get(path, timeout=20)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def test_a_burst_over_a_pool_of_one_is_shed_with_a_503_naming_the_limits(
    mesh: RunningMesh,
) -> None:
    # The one connection is open first (else the first request of the burst waits for it in
    # the one pending place); then one request on it and one waiting: each slow call holds
    # both for 5 s, long past the time six threads take to send theirs.
    assert mesh.get("/pool/").status == 200
    replies = burst(mesh, "/pool/slow?ms=5000", 6)
    statuses = Counter(reply.status for reply in replies)
    assert statuses == {200: 2, 503: 4}, [r.body for r in replies]
    cluster = f"outbound|9000|pooled|{FLAKY}"
    for reply in replies:
        if reply.status != 503:
            continue
        text = str(reply.body.get("text"))
        assert text.startswith("pilotfish: ingressgateway"), text
        assert (
            f"answered 503: circuit breaker of {cluster} is full "
            "(maxConnections=1, http1MaxPendingRequests=1)"
        ) in text
        assert text.rstrip().endswith("[UO]"), text


def seen_paths(mesh: RunningMesh, tag: str) -> int:
    body = mesh.get("/seen").body
    seen = body.get("seen")
    assert isinstance(seen, list)
    return sum(1 for entry in seen if f"run={tag}" in str(entry.get("path")))


def test_a_retry_budget_caps_retries_under_a_failing_backend(mesh: RunningMesh) -> None:
    # Eight requests fail together after 300 ms; each may be retried 3 times.
    budgeted = burst(mesh, "/budget/fail?ms=300&run=budget", 8)
    open_ = burst(mesh, "/open/fail?ms=300&run=open", 8)
    assert {r.status for r in budgeted + open_} == {503}
    # Istio leaves max_retries unlimited (Envoy's own default of 3 would cap this burst):
    # every request got all its attempts.
    assert seen_paths(mesh, "open") == 8 * 4
    # A budget of 10% of 8 active requests is below minRetryConcurrency, so one retry at a time
    # (at least one happens, and at most one per request is in flight at once).
    hits = seen_paths(mesh, "budget")
    assert 9 <= hits <= 16, hits


def replica_of(reply: Reply) -> str:
    return str(reply.body.get("replica"))


def test_an_always_failing_replica_is_ejected_and_comes_back_after_base_ejection_time(
    mesh: RunningMesh,
) -> None:
    def until_failure(limit: int) -> Reply | None:
        for _ in range(limit):
            reply = mesh.get("/replicas/")
            if reply.status != 200:
                return reply
        return None

    first = until_failure(60)
    assert first is not None and first.status == 503, "the broken replica never got traffic"
    assert first.body.get("failed") is True  # the replica's own answer, not the proxy's
    admin = gateway_envoy_admin(mesh)
    ejected = ejected_hosts(admin, REPLICAS)
    assert len(ejected) == 1, ejected
    before = ejections(admin, REPLICAS)
    after = [mesh.get("/replicas/") for _ in range(20)]
    # Judged by Envoy's own view, not by the clock: still the same one ejection.
    assert (ejected_hosts(admin, REPLICAS), ejections(admin, REPLICAS)) == (ejected, before), (
        "the ejection ended during the 20 requests: raise BASE_EJECTION_SECONDS"
    )
    assert [r.status for r in after] == [200] * 20
    assert {replica_of(r) for r in after} <= {"healthy-0", "healthy-1"}, after

    # Back in the pool once its ejection time is over (checked at each interval).
    wait_until(
        lambda: not ejected_hosts(admin, REPLICAS),
        BASE_EJECTION_SECONDS + 10 * EJECTION_INTERVAL_SECONDS + 10,
        "the broken replica to come back",
    )
    again = until_failure(60)
    assert again is not None and again.status == 503, "the replica never got traffic again"


def test_unset_thresholds_are_unlimited_in_the_gateway_envoys_own_view(mesh: RunningMesh) -> None:
    admin = gateway_envoy_admin(mesh)
    clusters = http_get(admin + "/clusters").body.get("text")
    assert isinstance(clusters, str)
    plain = f"outbound|9000||{FLAKY}"
    for limit in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
        assert f"{plain}::default_priority::{limit}::4294967295" in clusters, limit
    pooled = f"outbound|9000|pooled|{FLAKY}"
    assert f"{pooled}::default_priority::max_connections::1\n" in clusters
    assert f"{pooled}::default_priority::max_pending_requests::1\n" in clusters


def ejected_hosts(admin: str, service: str) -> set[str]:
    """The hosts of ``service``'s cluster that the gateway's Envoy has ejected."""
    text = http_get(admin + "/clusters").body.get("text")
    assert isinstance(text, str)
    prefix = f"outbound|9100||{service}::"
    return {
        line.split("::")[1]
        for line in text.splitlines()
        if line.startswith(prefix) and "::health_flags::" in line and "failed_outlier_check" in line
    }


def ejections(admin: str, service: str) -> int:
    name = f"cluster.outbound|9100||{service}.outlier_detection.ejections_enforced_total"
    text = http_get(admin + f"/stats?filter=^{re.escape(name)}$").body.get("text")
    assert isinstance(text, str) and text.startswith(name), text
    return int(text.split(":")[1])


def test_a_reply_with_every_endpoint_ejected_names_the_outlier_detection(
    mesh: RunningMesh,
) -> None:
    failed = mesh.get("/ejecting/fail?ms=0")
    assert failed.status == 503 and failed.body.get("failed") is True  # the app's own answer

    def proxy_reply() -> Reply | None:
        reply = mesh.get("/ejecting/")
        return reply if reply.status == 503 and "text" in reply.body else None

    reply = wait_until(proxy_reply, 10, "the gateway to answer for the ejected endpoint")
    text = str(reply.body.get("text"))
    assert (
        "answered 503: no healthy upstream (outlier detection: consecutive5xxErrors=1, "
        "baseEjectionTime=600s, maxEjectionPercent=100; see `pilotfish endpoints`)"
    ) in text, text
    assert f"cluster outbound|9000|ejecting|{FLAKY}" in text, text
    assert text.rstrip().endswith("[UH]"), text


def test_with_http_error_codes_only_those_statuses_eject(mesh: RunningMesh) -> None:
    for _ in range(3):
        failed = mesh.get("/picky/fail?ms=0")
        assert failed.status == 503 and failed.body.get("failed") is True
    assert mesh.get("/picky/").status == 200  # a 503 is not one of the codes: still there
    assert mesh.get("/picky/status?code=404").status == 404

    def proxy_reply() -> Reply | None:
        reply = mesh.get("/picky/")
        return reply if reply.status == 503 and "text" in reply.body else None

    text = str(wait_until(proxy_reply, 10, "the 404 to eject the endpoint").body.get("text"))
    assert "no healthy upstream (outlier detection: consecutive5xxErrors=1" in text, text
    assert "outlierDetectionHttpErrorCodes=404; see" in text, text


def gateway_envoy_admin(mesh: RunningMesh) -> str:
    """The gateway Envoy's admin URL, from the address file named on its command line."""

    def find() -> str | None:
        for pid in mesh.descendants():
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            decoded = [a.decode(errors="replace") for a in args]
            if "--admin-address-path" not in decoded:
                continue
            path = Path(decoded[decoded.index("--admin-address-path") + 1])
            if path.parent.name == "ingressgateway" and path.exists():
                return "http://" + path.read_text().strip()
        return None

    return wait_until(find, 10, "the gateway Envoy's admin address")


def test_h2_upgrade_policy_upgrade_speaks_http2_to_an_http1_port(mesh: RunningMesh) -> None:
    assert [mesh.get("/upgraded/").status for _ in range(3)] == [200] * 3
    admin = gateway_envoy_admin(mesh)
    stats = http_get(admin + "/stats?filter=upstream_cx_http[12]_total").body.get("text")
    assert isinstance(stats, str)
    upgraded = f"cluster.outbound|9000|upgraded|{FLAKY}"
    assert f"{upgraded}.upstream_cx_http2_total: 1" in stats, stats
    assert f"{upgraded}.upstream_cx_http1_total: 0" in stats, stats


def test_use_client_protocol_speaks_each_callers_protocol_upstream(mesh: RunningMesh) -> None:
    assert mesh.get("/client-protocol/").status == 200
    # An HTTP/2 caller (cleartext, prior knowledge): curl from Debian's package.
    h2 = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "--http2-prior-knowledge",
            "--noproxy",
            "*",
            mesh.gateway_url + "/client-protocol/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert h2.stdout == "2 200", h2
    admin = gateway_envoy_admin(mesh)
    stats = http_get(admin + "/stats?filter=upstream_cx_http[12]_total").body.get("text")
    assert isinstance(stats, str)
    cluster = f"cluster.outbound|9000|client-protocol|{FLAKY}"
    assert f"{cluster}.upstream_cx_http1_total: 1" in stats, stats
    assert f"{cluster}.upstream_cx_http2_total: 1" in stats, stats
