"""`pilotfish up` with mutual TLS: every sidecar and the gateway get certificates from the
control plane's CA over SDS, auto mTLS carries every mesh call, and a PeerAuthentication
turns plain text away."""

from __future__ import annotations

import urllib.error
from collections.abc import Iterator

import pytest
from tests.integration.mesh_harness import (
    RunningMesh,
    echo_workload,
    free_port,
    gateway,
    http_get,
    running_mesh,
    write_yaml,
)
from tests.waiting import wait_until

from pilotfish.model.identity import GATEWAY_SERVICE_ACCOUNT

pytestmark = pytest.mark.integration

ROUTING = """
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
STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
"""
CALLER = "spiffe://cluster.local/ns/default/sa/default"
GATEWAY_ID = f"spiffe://cluster.local/ns/default/sa/{GATEWAY_SERVICE_ACCOUNT}"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("mtls")
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(gateway_port)
        + echo_workload("frontend", "frontend", 8080)
        + echo_workload("backend", "backend", 9090)
        + ROUTING
        + STRICT,
    )
    with running_mesh(directory, gateway_port) as running:
        running.wait_serving()
        running.wait_endpoints("backend.default.svc.cluster.local", 1)
        yield running


def inbound_port(mesh: RunningMesh, hostname: str) -> int:
    services = mesh.admin("/api/services")["services"]
    assert isinstance(services, list)
    (service,) = [s for s in services if s["hostname"] == hostname]
    (endpoint,) = service["endpoints"]
    return int(next(iter(endpoint["ports"].values())))


def test_the_gateway_and_the_sidecars_call_each_other_over_mtls(mesh: RunningMesh) -> None:
    reply = mesh.get("/")
    assert reply.status == 200
    headers = reply.body["headers"]
    assert isinstance(headers, dict)
    assert f"URI={GATEWAY_ID}" in headers["x-forwarded-client-cert"]

    reply = mesh.get("/call?url=http://backend:9090/")
    assert reply.status == 200, reply.body
    answer = reply.body["answer"]
    assert isinstance(answer, dict)
    assert f"URI={CALLER}" in answer["headers"]["x-forwarded-client-cert"]


def test_plain_text_to_a_strict_workload_is_refused(mesh: RunningMesh) -> None:
    port = inbound_port(mesh, "backend.default.svc.cluster.local")
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        http_get(f"http://127.0.0.1:{port}/", timeout=5)


def test_permissive_for_one_workload_lets_plain_text_in(mesh: RunningMesh) -> None:
    permissive = """
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: backend}
spec:
  selector: {matchLabels: {app: backend}}
  portLevelMtls:
    9090: {mode: PERMISSIVE}
"""
    write_yaml(mesh.directory / "backend-policy.yaml", permissive)
    try:
        port = inbound_port(mesh, "backend.default.svc.cluster.local")
        mesh.wait_synced()
        reply = wait_until(
            lambda: (r := http_get(f"http://127.0.0.1:{port}/", timeout=5)).status == 200 and r,
            30,
            "plain text accepted once the policy applies",
        )
        headers = reply.body["headers"]
        assert isinstance(headers, dict)
        assert "x-forwarded-client-cert" not in headers
        # mTLS callers still get in on the same port.
        assert mesh.get("/call?url=http://backend:9090/").status == 200
    finally:
        (mesh.directory / "backend-policy.yaml").unlink()
        mesh.wait_synced()
