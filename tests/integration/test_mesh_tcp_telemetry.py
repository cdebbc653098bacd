"""TCP connections through `pilotfish up` count in Istio's ``istio_tcp_*`` metrics at both
sidecars, with the caller named at the callee by its certificate (STRICT mTLS), and are lines
of the callee's access log: the mesh's own TCP listeners (an ``upstreams`` port, the inbound's
TCP chain) with their telemetry, a line server and a client app of the TCP tests.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator

import pytest
from test_mesh_metrics import scrape, total
from tests.integration.mesh_harness import APPS, RunningMesh, running_mesh, write_yaml
from tests.waiting import wait_until

from pilotfish.agent.ports import free_port

pytestmark = pytest.mark.integration

PYTHON = sys.executable
LINES = "lines.default.svc.cluster.local"
CONNECTIONS = 4
TEXT = "pilotfish"


def mesh_yaml(gateway_port: int) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec:
  mtls: {{mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gateway_port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: client}}}}]
---
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {{name: lines}}
spec:
  service: lines
  port: 7000
  protocol: TCP
  serviceAccount: lines
  labels: {{app: lines, version: v3}}
  command: [{PYTHON}, {APPS / "dual_server.py"}]
---
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {{name: client}}
spec:
  service: client
  port: 8080
  protocol: HTTP
  serviceAccount: client
  labels: {{app: client, version: v1}}
  command: [{PYTHON}, {APPS / "tcp_client.py"}]
  upstreams:
  - {{service: lines, port: 7000}}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("tcp-telemetry")
    gateway_port = free_port()
    write_yaml(directory / "mesh.yaml", mesh_yaml(gateway_port))
    with running_mesh(directory, gateway_port) as running:
        running.wait_serving("/")
        running.wait_endpoints(LINES, 1)
        running.wait_synced()
        yield running


def admin_text(mesh: RunningMesh, path: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(mesh.admin_url + path, timeout=10) as response:
        return str(response.read().decode())


def test_tcp_connections_count_at_both_sidecars_and_are_log_lines(mesh: RunningMesh) -> None:
    reply = mesh.get(
        f"/lines?env=PILOTFISH_UPSTREAM_LINES_7000&count={CONNECTIONS}&text={TEXT}", timeout=30
    )
    assert reply.status == 200, reply.body
    answers = reply.body["lines"]
    assert isinstance(answers, list) and len(answers) == CONNECTIONS
    received = CONNECTIONS * (len(TEXT) + 1)
    sent = sum(len(str(line)) + 1 for line in answers)
    both = {"destination_service": LINES, "destination_workload": "lines"}

    def counted() -> bool:
        _, samples = scrape(mesh)
        return all(
            total(samples, "istio_tcp_connections_closed_total", reporter=r, **both) == CONNECTIONS
            for r in ("source", "destination")
        )

    wait_until(counted, 20, "both sidecars' istio_tcp_connections_closed_total")
    _, samples = scrape(mesh)
    callee = {
        "reporter": "destination",
        "source_workload": "client",
        "source_app": "client",
        "source_principal": "spiffe://cluster.local/ns/default/sa/client",
        "destination_version": "v3",
        "destination_principal": "spiffe://cluster.local/ns/default/sa/lines",
        "connection_security_policy": "mutual_tls",
        "request_protocol": "tcp",
        "response_flags": "-",
        **both,
    }
    caller = {"reporter": "source", "source_workload": "client", **both}
    for side in (callee, caller):
        assert total(samples, "istio_tcp_connections_opened_total", **side) == CONNECTIONS
        assert total(samples, "istio_tcp_received_bytes_total", **side) == received
        assert total(samples, "istio_tcp_sent_bytes_total", **side) == sent

    lines = admin_text(mesh, "/api/logs?proxy=lines-0&format=json&limit=100").splitlines()
    connections = [entry for entry in map(json.loads, lines) if entry["protocol"] == "tcp"]
    assert len(connections) == CONNECTIONS
    assert {entry["bytes_received"] for entry in connections} == {len(TEXT) + 1}
    assert {entry["source_workload"] for entry in connections} == {"client"}
