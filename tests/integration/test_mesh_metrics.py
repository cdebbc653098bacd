"""`pilotfish up`: requests through the gateway and the sidecars show in the admin API's
/metrics as Istio's standard metrics, for both reporters, with the caller named on the
callee's side (mTLS identity and peer header), next to the control plane's own metrics."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator

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
FRONTEND = "frontend.default.svc.cluster.local"
BACKEND = "backend.default.svc.cluster.local"
CALLS = 4
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("metrics")
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(gateway_port)
        + echo_workload("frontend", "frontend", 8080)
        + echo_workload("backend", "backend", 9090, version="v2")
        + ROUTING,
    )
    with running_mesh(directory, gateway_port) as running:
        running.wait_serving()
        running.wait_endpoints(BACKEND, 1)
        yield running


def scrape(mesh: RunningMesh) -> tuple[str, list[tuple[str, dict[str, str], float]]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(mesh.admin_url + "/metrics", timeout=10) as response:
        content_type = response.headers["Content-Type"]
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if line.startswith("#") or match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"] or ""))
        samples.append((match["name"], labels, float(match["value"])))
    return content_type, samples


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def test_requests_show_as_istio_metrics_for_both_reporters(mesh: RunningMesh) -> None:
    for _ in range(CALLS):
        reply = mesh.get("/call?url=http://backend:9090/hello")
        assert reply.status == 200, reply.body
    callee_side = {
        "reporter": "destination",
        "source_workload": "frontend",
        "source_app": "frontend",
        "source_principal": "spiffe://cluster.local/ns/default/sa/default",
        "destination_workload": "backend",
        "destination_version": "v2",
        "destination_service": BACKEND,
        "destination_service_name": "backend",
        "destination_service_namespace": "default",
        "response_code": "200",
        "response_flags": "-",
        "connection_security_policy": "mutual_tls",
    }
    caller_side = {
        "reporter": "source",
        "source_workload": "frontend",
        "destination_workload": "backend",
        "destination_service": BACKEND,
        "response_code": "200",
    }
    gateway_side = {
        "reporter": "source",
        "source_workload": "pilotfish-ingressgateway",
        "destination_service": FRONTEND,
        "destination_workload": "frontend",
        "response_code": "200",
    }

    def counted() -> list[tuple[str, dict[str, str], float]] | None:
        _, samples = scrape(mesh)
        done = all(
            total(samples, "istio_requests_total", **labels) >= CALLS
            for labels in (callee_side, caller_side, gateway_side)
        )
        return samples if done else None

    samples = wait_until(counted, 20, "istio_requests_total of every reporter")
    assert total(samples, "istio_request_duration_milliseconds_count", **callee_side) >= CALLS
    assert total(samples, "istio_response_bytes_count", **caller_side) >= CALLS
    assert total(samples, "pilotfish_xds_connected_proxies", kind="sidecar") == 2
    assert total(samples, "pilotfish_xds_connected_proxies", kind="gateway") == 1
    assert total(samples, "pilotfish_ca_certificates_signed_total") >= 3
    # Every replica joining its service after its sidecar connected pushed to that sidecar.
    assert total(samples, "pilotfish_xds_convergence_time_seconds_count") >= 1
    assert total(samples, "pilotfish_xds_push_time_seconds_count", type="EDS") >= 1
    assert total(samples, "pilotfish_als_streams_open") >= 3


def test_metrics_are_prometheus_text(mesh: RunningMesh) -> None:
    content_type, _ = scrape(mesh)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
