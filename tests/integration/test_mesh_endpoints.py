"""`pilotfish endpoints` in a real mesh: a backend with one always-failing replica and outlier
detection; the caller's sidecar ejects it, and the CLI shows it ejected, since when and why,
from the caller's view, while a proxy that never called the backend sees both healthy."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from tests.integration.mesh_harness import (
    RunningMesh,
    echo_workload,
    free_port,
    gateway,
    running_mesh,
    write_yaml,
)
from tests.waiting import wait_until

BACKEND = "backend.default.svc.cluster.local"
THROUGH_FRONTEND = "/call?url=http://backend:9000/"

MESH = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 0.5s
      baseEjectionTime: 60s
      maxEjectionPercent: 100
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{destination: {host: frontend}}]
---
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("endpoints")
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(gateway_port)
        + echo_workload("frontend", "frontend", 8080)
        + echo_workload("healthy", "backend", 9000)
        + echo_workload("broken", "backend", 9000, env={"ALWAYS_FAIL": "1"})
        + MESH,
    )
    with running_mesh(directory, gateway_port) as running:
        running.wait_serving("/")
        running.wait_endpoints(BACKEND, 2)
        running.wait_synced()
        yield running


def endpoints(mesh: RunningMesh, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pilotfish.cli.main", "endpoints", str(mesh.directory), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )


def seen_by(mesh: RunningMesh, proxy: str) -> dict[str, dict[str, Any]]:
    """Each backend endpoint as ``proxy`` sees it, by replica name."""
    body = json.loads(endpoints(mesh, "backend", "--proxy", proxy, "--json").stdout)
    (entry,) = body["proxies"]
    assert entry["error"] is None, entry
    return {e["endpoint"]: e for c in entry["clusters"] for e in c["endpoints"]}


@pytest.fixture(scope="module")
def ejected(mesh: RunningMesh) -> RunningMesh:
    """Requests through the frontend until its sidecar ejected the broken replica (bounded)."""

    def ejected_in_the_log() -> bool:
        for _ in range(4):
            mesh.get(THROUGH_FRONTEND)
        # Under load the frontend's Envoy may not list the replica yet: not yet, not a failure.
        broken = seen_by(mesh, "frontend-0").get("broken-0")
        if broken is None:
            return False
        return broken["health"] == "EJECTED" and broken["ejection"]["since"] is not None

    wait_until(ejected_in_the_log, 20, "the frontend's sidecar to eject broken-0", interval=0.2)
    return mesh


def test_the_caller_sees_the_failing_replica_ejected_with_since_and_why(
    ejected: RunningMesh,
) -> None:
    seen = seen_by(ejected, "frontend-0")
    broken, healthy = seen["broken-0"], seen["healthy-0"]
    assert broken["ejection"]["reason"] == "CONSECUTIVE_5XX"
    assert broken["ejection"]["ejections"] >= 1
    assert broken["rq_error"] >= 2
    assert healthy["health"] == "HEALTHY" and "ejection" not in healthy
    assert healthy["rq_total"] >= 1 and healthy["rq_error"] == 0
    # The ejected replica gets no more traffic: every request now succeeds.
    assert [ejected.get(THROUGH_FRONTEND).status for _ in range(5)] == [200] * 5


def test_the_table_shows_it_and_a_proxy_that_never_called_sees_both_healthy(
    ejected: RunningMesh,
) -> None:
    text = endpoints(ejected, "backend").stdout
    rows = {tuple(line.split()[:1] + line.split()[3:4]): line for line in text.splitlines()}
    broken = rows[("frontend-0", "broken-0")]
    assert "EJECTED" in broken and "CONSECUTIVE_5XX (ejection #" in broken and "s ago)" in broken
    assert "HEALTHY" in rows[("frontend-0", "healthy-0")]
    # The gateway has the backend's clusters but never sent it a request.
    assert "HEALTHY" in rows[("ingressgateway", "broken-0")]
    assert "HEALTHY" in rows[("ingressgateway", "healthy-0")]
    assert "not seen" not in text


def test_proxy_status_counts_the_ejection(ejected: RunningMesh) -> None:
    status = subprocess.run(
        [sys.executable, "-m", "pilotfish.cli.main", "proxy-status", str(ejected.directory)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    lines = status.splitlines()
    assert lines[0].split()[-1] == "EJECTED"
    counts = {line.split()[0]: line.split()[-1] for line in lines[1:] if line and line[0] != " "}
    assert counts["frontend-0"] == "1"
    assert counts["ingressgateway"] == "0" and counts["healthy-0"] == "0"
