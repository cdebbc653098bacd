"""The live views of a real `pilotfish up` mesh: stat, graph and series from its proxies'
access-log streams, tap while requests happen, and each proxy's log lines."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
from tests.integration.mesh_harness import (
    RunningMesh,
    echo_workload,
    gateway,
    running_mesh,
    write_yaml,
)
from tests.waiting import wait_until

from pilotfish.agent.ports import free_port
from pilotfish.telemetry.live import NOT_REACHED_FLAGS

BACKEND = "backend.default.svc.cluster.local"
CLOSED = "closed.example.internal"
GATEWAY_ID = "ingressgateway"
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def mesh_yaml(gateway_port: int, closed_port: int) -> str:
    return (
        f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: closed}}
spec:
  hosts: [{CLOSED}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {closed_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /closed}}}}]
    route: [{{destination: {{host: {CLOSED}}}}}]
  - route: [{{destination: {{host: frontend}}}}]
---
# Calls to /broken never reach backend: frontend's sidecar aborts them (FI).
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend}}
spec:
  hosts: [backend]
  http:
  - match: [{{uri: {{prefix: /broken}}}}]
    fault: {{abort: {{httpStatus: 500, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: backend}}}}]
  - route: [{{destination: {{host: backend}}}}]
---
"""
        + gateway(gateway_port)
        + echo_workload("frontend", "frontend", 9000)
        + echo_workload("backend", "backend", 9001)
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("live")
    gateway_port = free_port()
    write_yaml(directory / "mesh.yaml", mesh_yaml(gateway_port, free_port()))
    with running_mesh(directory, gateway_port) as running:
        running.wait_serving("/")
        running.wait_synced()
        yield running


def pilotfish(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pilotfish.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stat_rows(mesh: RunningMesh, by: str = "service") -> dict[str, dict[str, object]]:
    rows = mesh.admin(f"/api/stat?by={by}&window=600")["rows"]
    assert isinstance(rows, list)
    return {str(row["name"]): row for row in rows}


def call_backend(mesh: RunningMesh, path: str) -> int:
    """A request through the gateway to frontend, which calls backend through its sidecar."""
    return mesh.get(f"/call?url=http://backend:9001{path}").status


def logged(mesh: RunningMesh, proxy: str) -> list[dict[str, object]]:
    """Every record ``proxy`` reported, as /api/logs has them."""
    url = f"{mesh.admin_url}/api/logs?proxy={proxy}&format=json&limit=10000"
    with _direct.open(url, timeout=10) as response:
        return [json.loads(line) for line in response.read().decode().splitlines()]


def backend_records(mesh: RunningMesh, path: str = "") -> tuple[int, int, int]:
    """Requests to backend as its own sidecar reported them, as frontend's sidecar did, and
    those of frontend's that never reached backend (its flags say so)."""
    callee = [e for e in logged(mesh, "backend-0") if str(e["path"]).startswith(path)]
    caller = [
        e
        for e in logged(mesh, "frontend-0")
        if e["destination_service"] == BACKEND and str(e["path"]).startswith(path)
    ]
    not_reached = [
        e for e in caller if set(str(e["response_flags"]).split(",")) & NOT_REACHED_FLAGS
    ]
    return len(callee), len(caller), len(not_reached)


def failures(row: dict[str, object]) -> int:
    requests, success_rate = row["requests"], row["success_rate"]
    assert isinstance(requests, int) and isinstance(success_rate, float)
    return round(requests * (1 - success_rate))


def test_stat_counts_each_call_once_and_its_failures(mesh: RunningMesh) -> None:
    mesh.wait_endpoints(BACKEND, 1)
    wait_until(lambda: call_backend(mesh, "/warm-up") == 200, 30, "backend to answer")
    assert [call_backend(mesh, "/good") for _ in range(4)] == [200] * 4
    # Both sidecars' records of the four calls have arrived: a double count would show now.
    wait_until(lambda: backend_records(mesh, "/good")[:2] == (4, 4), 15, "the calls' records")
    callee, caller, not_reached = backend_records(mesh)
    backend = stat_rows(mesh)[BACKEND]
    # Each request once: the callee's record, or the caller's when the callee never got it.
    assert backend["requests"] == callee + not_reached, (callee, caller, not_reached)
    assert caller >= 4 and callee >= 4
    failed_before = failures(backend)

    assert [call_backend(mesh, "/broken") for _ in range(4)] == [500] * 4
    wait_until(lambda: backend_records(mesh, "/broken") == (0, 4, 4), 15, "the records")
    callee, _, not_reached = backend_records(mesh)
    backend = stat_rows(mesh)[BACKEND]
    assert backend["requests"] == callee + not_reached
    assert failures(backend) == failed_before + 4
    assert isinstance(backend["success_rate"], float) and backend["success_rate"] < 1.0
    assert isinstance(backend["p99_ms"], float) and backend["p99_ms"] > 0
    assert stat_rows(mesh, "workload")["backend"]["requests"] == callee

    shown = pilotfish("stat", str(mesh.directory), "--window", "10m")
    assert shown.returncode == 0, shown.stderr
    row = next(line.split() for line in shown.stdout.splitlines() if line.startswith(BACKEND))
    assert row[-1] == str(backend["requests"])
    assert row[2] == f"{float(backend['success_rate']) * 100:.2f}%"


def test_a_refused_connection_is_a_failure_of_the_service_outside_the_mesh(
    mesh: RunningMesh,
) -> None:
    assert mesh.get("/closed/stat").status == 503
    wait_until(lambda: CLOSED in stat_rows(mesh), 15, f"{CLOSED} in stat")
    closed = stat_rows(mesh)[CLOSED]
    assert (closed["requests"], closed["success_rate"]) == (1, 0.0)
    graph = mesh.admin("/api/graph?window=600")
    listed = graph["edges"]
    assert isinstance(listed, list)
    edges = {(e["source"], e["target"]): e for e in listed}
    assert (
        edges[("workload:default/pilotfish-ingressgateway", f"service:{CLOSED}")]["success_rate"]
        == 0.0
    )
    assert edges[("workload:default/frontend", f"service:{BACKEND}")]["requests"] >= 1


def test_series_has_the_requests_of_the_last_minutes(mesh: RunningMesh) -> None:
    assert call_backend(mesh, "/series") == 200
    wait_until(lambda: BACKEND in stat_rows(mesh), 15, f"{BACKEND} in stat")
    series = mesh.admin(f"/api/series?service={BACKEND}&minutes=15")
    points = series["points"]
    assert isinstance(points, list) and len(points) == 90
    assert sum(int(p["requests"]) for p in points) >= 1


def test_tap_prints_a_request_made_while_tapping(mesh: RunningMesh) -> None:
    tap = subprocess.Popen(
        [sys.executable, "-m", "pilotfish.cli.main", "tap", str(mesh.directory),
         "--path", "/tapped", "--max", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        # The tap subscribes once its process has started: call until it has seen one.
        deadline = time.monotonic() + 30
        while tap.poll() is None and time.monotonic() < deadline:
            assert call_backend(mesh, "/tapped") == 200
            time.sleep(0.5)
        out, err = tap.communicate(timeout=10)
    finally:
        tap.kill()
    assert tap.returncode == 0, err
    (line,) = out.splitlines()
    assert f" frontend -> {BACKEND} GET /tapped 200 " in line


def test_logs_show_a_line_with_the_flags_in_words(mesh: RunningMesh) -> None:
    assert mesh.get("/closed/logged").status == 503

    def logged() -> str | None:
        shown = pilotfish("logs", str(mesh.directory), GATEWAY_ID)
        assert shown.returncode == 0, shown.stderr
        lines = [
            line for line in shown.stdout.splitlines() if '"GET /closed/logged HTTP/1.1"' in line
        ]
        return lines[0] if lines else None

    line = wait_until(logged, 15, "the gateway's log line")
    assert '"GET /closed/logged HTTP/1.1" 503 ' in line
    assert "UF=upstream connection failure" in line
    assert f"outbound|80||{CLOSED}" in line
    unknown = pilotfish("logs", str(mesh.directory), "nobody")
    assert unknown.returncode == 2
    assert "no proxy 'nobody'; the proxies are: " in unknown.stderr
