"""Locality failover in `pilotfish up`, judged by real traffic through real sidecars.

A caller in r1/za calls a backend with a replica in r1/za and one in r1/zb; its
DestinationRule has outlier detection, so the caller's sidecar prefers its own zone. Traffic
stays in za while za is healthy, moves to zb while za's replica answers 503 (ejected) or is
gone, and comes back when za is healthy again (after the ejection time). With regions r1
(the caller's), r2 and r3 and ``failover: [{from: r1, to: r2}]``, r1's failure sends the
traffic to r2, never to r3.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.mesh_harness import (
    ECHO_COMMAND,
    RunningMesh,
    free_port,
    gateway,
    running_mesh,
    write_yaml,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

BACKEND_URL = "http://backend:9000/"
BATCH = 20


def workload(name: str, service: str, locality: str, env: str = "{}") -> str:
    return f"""
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {{name: {name}}}
spec:
  service: {service}
  port: {9000 if service == "backend" else 8080}
  labels: {{app: {service}}}
  locality: {locality}
  command: {ECHO_COMMAND}
  env: {env}
---
"""


ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: front}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend]
  http: [{route: [{destination: {host: backend}}], retries: {attempts: 0}}]
"""

RULES = (
    ROUTES
    + """---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 2s
      maxEjectionPercent: 100
"""
)


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """While this file exists, za's backend answers 503."""
    return tmp_path_factory.mktemp("switch") / "za-fails"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, failing: Path) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("locality")
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(gateway_port)
        + workload("front", "front", "r1/za")
        + workload("backend-a", "backend", "r1/za", f'{{FAIL_WHILE_EXISTS: "{failing}"}}')
        + workload("backend-b", "backend", "r1/zb")
        + RULES,
    )
    with running_mesh(directory, gateway_port) as running:
        running.wait_serving("/")
        running.wait_endpoints("backend.default.svc.cluster.local", 2)
        running.wait_synced()
        yield running


def answered_by(mesh: RunningMesh) -> str:
    """Which backend replica answered one call from the caller in za (or the failure)."""
    reply = mesh.get(f"/call?url={BACKEND_URL}")
    answer = reply.body.get("answer")
    if reply.status != 200 or not isinstance(answer, dict):
        return f"status {reply.status}"
    return str(answer["replica"])


def batch(mesh: RunningMesh) -> Counter[str]:
    return Counter(answered_by(mesh) for _ in range(BATCH))


def wait_answered_by(mesh: RunningMesh, replica: str, timeout: float = 30.0) -> None:
    """Until one call is answered by ``replica`` (each try is one real call)."""
    wait_until(lambda: answered_by(mesh) == replica, timeout, f"a call answered by {replica}")


def test_traffic_stays_in_the_callers_zone_while_it_is_healthy(mesh: RunningMesh) -> None:
    # Without locality priorities least-request would spread these over both zones.
    assert batch(mesh) == Counter({"backend-a-0": BATCH})


def test_traffic_moves_to_the_other_zone_when_the_zone_fails_and_comes_back(
    mesh: RunningMesh, failing: Path
) -> None:
    failing.touch()
    try:
        wait_answered_by(mesh, "backend-b-0")
        # za's replica is ejected: everything goes to zb, no call sees its 503s.
        assert batch(mesh) == Counter({"backend-b-0": BATCH})
    finally:
        failing.unlink()
    # Healthy again: once its ejection ends (2 s base), za gets the traffic back.
    wait_answered_by(mesh, "backend-a-0")
    assert batch(mesh) == Counter({"backend-a-0": BATCH})


def test_traffic_moves_while_the_zones_replica_is_down_and_returns_with_it(
    mesh: RunningMesh,
) -> None:
    pid = _app_pid(mesh, "backend-a-0")
    os.kill(pid, signal.SIGKILL)
    # The runner withdraws the endpoint at once: zb is all there is until the app is back.
    wait_answered_by(mesh, "backend-b-0")
    # Its supervisor restarts it; re-registered, it is the caller's zone again.
    wait_answered_by(mesh, "backend-a-0", timeout=60.0)
    assert _app_pid(mesh, "backend-a-0") != pid
    assert batch(mesh) == Counter({"backend-a-0": BATCH})


def _app_pid(mesh: RunningMesh, replica: str) -> int:
    """The app process of ``replica`` (its environment names it), below `pilotfish up`."""
    found: list[int] = []

    def present() -> bool:
        found[:] = [
            pid
            for pid in mesh.descendants()
            if f"PILOTFISH_REPLICA={replica}".encode() in _environment(pid)
            and b"echo.py" in _command_line(pid)
        ]
        return len(found) == 1

    wait_until(present, 30.0, f"the app process of {replica}")
    return found[0]


def _environment(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# --- failover to a named region -------------------------------------------------------------

REGION_FAILOVER_RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 60s
      maxEjectionPercent: 100
    loadBalancer:
      localityLbSetting:
        failover: [{from: r1, to: r2}]
"""


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory, failing: Path) -> Iterator[RunningMesh]:
    """The caller and one backend replica in r1, one in r2 (its failover target), one in r3."""
    directory = tmp_path_factory.mktemp("regions")
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(gateway_port)
        + workload("front", "front", "r1/za")
        + workload("backend-a", "backend", "r1/za", f'{{FAIL_WHILE_EXISTS: "{failing}"}}')
        + workload("backend-r2", "backend", "r2/zc")
        + workload("backend-r3", "backend", "r3/zd")
        + ROUTES
        + "---\n"
        + REGION_FAILOVER_RULE,
    )
    with running_mesh(directory, gateway_port) as running:
        running.wait_serving("/")
        running.wait_endpoints("backend.default.svc.cluster.local", 3)
        running.wait_synced()
        yield running


def test_failover_goes_to_the_named_region_not_any_other(
    regions: RunningMesh, failing: Path
) -> None:
    assert batch(regions) == Counter({"backend-a-0": BATCH})
    failing.touch()
    try:
        wait_answered_by(regions, "backend-r2-0")
        # r1's replica is ejected (for 60 s): r2 is the next priority, r3 only the one after.
        assert batch(regions) == Counter({"backend-r2-0": BATCH})
    finally:
        failing.unlink()
