"""Config edits while traffic flows: a good edit applies with no failed request, a bad one
is rejected and reported while traffic keeps flowing on the last good config."""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.mesh_harness import (
    RunningMesh,
    echo_workload,
    free_port,
    gateway,
    running_mesh,
    wait_until,
    write_yaml,
)


def routing(v1_weight: int, v2_weight: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route:
    - {{destination: {{host: backend, subset: v1}}, weight: {v1_weight}}}
    - {{destination: {{host: backend, subset: v2}}, weight: {v2_weight}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend}}
spec:
  host: backend
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


class Traffic:
    """Requests in a loop on a thread, bounded in count and time, recording every answer."""

    def __init__(
        self, mesh: RunningMesh, max_requests: int = 20_000, max_seconds: float = 60
    ) -> None:
        self.mesh = mesh
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._limits = (max_requests, max_seconds)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        max_requests, max_seconds = self._limits
        deadline = time.monotonic() + max_seconds
        while not self._stop.is_set() and len(self.answers) < max_requests:
            if time.monotonic() > deadline:
                break
            try:
                reply = self.mesh.get("/", timeout=5)
                self.answers.append((reply.status, str(reply.body.get("version"))))
            except OSError as exc:
                self.answers.append((0, f"connection error: {exc}"))

    def versions_since(self, index: int) -> collections.Counter[str]:
        return collections.Counter(version for _, version in self.answers[index:])

    def failures(self) -> list[tuple[int, str]]:
        return [answer for answer in self.answers if answer[0] != 200]


@pytest.fixture(params=["delta", "sotw"])
def mesh(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningMesh]:
    """Both xDS variants: Delta (the default) and state-of-the-world (``up --sotw``)."""
    directory = tmp_path / "mesh"
    directory.mkdir()
    gateway_port = free_port()
    write_yaml(
        directory / "workloads.yaml",
        gateway(gateway_port)
        + echo_workload("backend-v1", "backend", 8080, version="v1")
        + echo_workload("backend-v2", "backend", 8080, version="v2"),
    )
    write_yaml(directory / "routing.yaml", routing(100, 0))
    extra_args = ("--sotw",) if request.param == "sotw" else ()
    with running_mesh(directory, gateway_port, extra_args=extra_args) as running:
        running.wait_serving("/")
        running.wait_endpoints("backend.default.svc.cluster.local", 2)
        running.wait_synced()
        streams = {p["stream"] for p in running.admin("/api/proxies")["proxies"]}  # type: ignore[union-attr,index]
        assert streams == {request.param}
        yield running


def test_weight_change_under_traffic_fails_no_request(mesh: RunningMesh) -> None:
    routing_file = mesh.directory / "routing.yaml"
    with Traffic(mesh) as traffic:
        wait_until(lambda: len(traffic.answers) > 50, 30, "traffic to flow")
        assert traffic.versions_since(0) == {"v1": len(traffic.answers)} or traffic.failures()
        write_yaml(routing_file, routing(0, 100))
        edited_at = len(traffic.answers)

        def all_v2_lately() -> bool:
            recent = traffic.answers[-50:]
            return len(traffic.answers) > edited_at + 50 and all(v == "v2" for _, v in recent)

        wait_until(all_v2_lately, 10, "the new weights to take effect")
        write_yaml(routing_file, routing(50, 50))
        edited_again_at = len(traffic.answers)
        wait_until(lambda: len(traffic.answers) > edited_again_at + 300, 30, "more traffic")
    assert traffic.failures() == []
    late = traffic.versions_since(edited_again_at + 100)
    assert late["v1"] > 0 and late["v2"] > 0, late


def test_bad_edit_is_rejected_reported_and_traffic_keeps_flowing(mesh: RunningMesh) -> None:
    routing_file = mesh.directory / "routing.yaml"
    with Traffic(mesh) as traffic:
        wait_until(lambda: len(traffic.answers) > 50, 30, "traffic to flow")
        # Weights that do not sum to 100, and a subset nobody defined.
        write_yaml(routing_file, routing(60, 30).replace("subset: v2", "subset: v9"))

        def rejected() -> list[dict[str, object]]:
            config = mesh.admin("/api/config")
            diagnostics = config.get("diagnostics")
            return diagnostics if config.get("rejected_at") and diagnostics else []  # type: ignore[return-value]

        diagnostics = wait_until(rejected, 10, "the bad edit to be reported")
        after_edit = len(traffic.answers)
        wait_until(lambda: len(traffic.answers) > after_edit + 200, 30, "more traffic")
    assert traffic.failures() == []
    assert traffic.versions_since(after_edit) == {"v1": len(traffic.answers) - after_edit}
    assert {d["file"] for d in diagnostics} == {str(routing_file)} or all(
        str(d["file"]).endswith("routing.yaml") for d in diagnostics
    )
    messages = " ".join(str(d["message"]) for d in diagnostics)
    assert "100" in messages and "v9" in messages, diagnostics

    status = subprocess.run(
        [sys.executable, "-m", "pilotfish.cli.main", "proxy-status", str(mesh.directory)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "routing.yaml:" in status.stdout, status.stdout
    assert "rejected" in status.stdout.lower(), status.stdout
