"""Certificates that live one minute, rotating for minutes under steady traffic through a
STRICT mTLS mesh, then a root rotation under the same traffic: not one request may fail.

The slowest tests of the suite (about three minutes together): rotation happens at half the
lifetime, and the shortest lifetime the MeshConfig accepts is Istio's minimum of one minute.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.integration.mesh_harness import RunningMesh, echo_workload, gateway, http_get, write_yaml
from tests.waiting import wait_until

from pilotfish.agent.ports import free_port

pytestmark = pytest.mark.integration

STRICT_MESH = """
apiVersion: pilotfish.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec:
  certificates: {workloadTTL: 1m}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route:
    - destination: {host: frontend, port: {number: 8080}}
---
"""
# gateway -> frontend's sidecar -> frontend -> its sidecar -> backend's sidecar -> backend:
# two mTLS hops, each renewing certificates on both ends.
THROUGH_TWO_HOPS = "/call?url=http://backend:8080/"


@dataclass
class SteadyTraffic:
    """Requests one after another from a thread until stopped; every outcome is counted."""

    url: str
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Bounded in count as well as by stop(), so that a hung test cannot loop forever.
        for _ in range(20_000):
            if self._stop.is_set():
                return
            reply = http_get(self.url, timeout=5)
            if reply.status == 200 and "answer" in reply.body:
                self.outcomes["ok"] += 1
            else:
                self.outcomes["failed"] += 1
                self.failures.append(f"{time.strftime('%X')} {reply.status} {reply.body}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    directory: Path = tmp_path_factory.mktemp("rotation") / "mesh"
    directory.mkdir()
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        STRICT_MESH
        + gateway(gateway_port)
        + echo_workload("frontend", "frontend", 8080)
        + echo_workload("backend", "backend", 8080, replicas=2),
    )
    running = RunningMesh(directory, gateway_port)
    try:
        running.wait_serving(THROUGH_TWO_HOPS)
        yield running
    finally:
        running.stop()


def signed_per_node(mesh: RunningMesh) -> Counter[str]:
    signed = mesh.admin("/api/ca")["recently_signed"]
    assert isinstance(signed, list)
    return Counter(str(record["node_id"]) for record in signed)


def both_hops_answer(mesh: RunningMesh) -> None:
    # The echo app's /call answers with the status of the call it made and the backend's
    # answer: a failure of the inner hop cannot hide behind the outer one.
    reply = mesh.get(THROUGH_TWO_HOPS)
    assert reply.status == 200, reply
    answer = reply.body["answer"]
    assert isinstance(answer, dict) and str(answer["replica"]).startswith("backend-"), reply
    # The backend learnt who called it from the mTLS peer certificate.
    headers = answer["headers"]
    assert isinstance(headers, dict)
    assert "URI=spiffe://cluster.local/ns/default/sa/default" in headers["x-forwarded-client-cert"]


def test_one_minute_certificates_rotate_for_minutes_without_a_failed_request(
    mesh: RunningMesh,
) -> None:
    both_hops_answer(mesh)
    proxies = ("frontend-0", "backend-0", "backend-1", "ingressgateway")
    before = signed_per_node(mesh)
    traffic = SteadyTraffic(mesh.gateway_url + THROUGH_TWO_HOPS)
    traffic.start()
    try:
        # Two renewals of every proxy at half of the one-minute lifetime: about 70 s.
        wait_until(
            lambda: all(signed_per_node(mesh)[p] >= before[p] + 2 for p in proxies),
            timeout=110,
            what=f"two renewals of each of {proxies}",
            interval=2.0,
        )
    finally:
        traffic.stop()
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.outcomes["ok"] > 100, traffic.outcomes


def test_a_root_rotation_under_traffic_fails_no_request(mesh: RunningMesh) -> None:
    traffic = SteadyTraffic(mesh.gateway_url + THROUGH_TWO_HOPS)
    traffic.start()
    try:
        time.sleep(2)
        started = http_get(
            mesh.admin_url + "/api/ca/rotate", {"X-Pilotfish-Admin": "1"}, method="POST"
        )
        assert started.status == 200, started
        overlap = mesh.admin("/api/ca")
        assert len(overlap["roots"]) == 2, overlap  # type: ignore[arg-type]

        def old_root_dropped() -> bool:
            status = mesh.admin("/api/ca")
            rotation = status["rotation"]
            assert isinstance(rotation, dict)
            return rotation["phase"] == "steady" and len(status["roots"]) == 1  # type: ignore[arg-type]

        wait_until(old_root_dropped, timeout=60, what="the old root dropped", interval=1.0)
        time.sleep(3)  # traffic on the new root alone
    finally:
        traffic.stop()
    assert traffic.failures == [], traffic.failures[:5]
    assert mesh.admin("/api/ca")["issuer_epoch"] == 2
