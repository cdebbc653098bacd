"""`pilotfish up` with the quickstart's apps: one request through gateway -> frontend ->
backend is one trace, with spans from the gateway and from each sidecar, readable through
Zipkin's API, and `pilotfish trace` draws it. The frontend forwards the trace headers; without
that its call to the backend would be a trace of its own."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.integration.mesh_harness import (
    RunningMesh,
    free_port,
    gateway,
    http_get,
    running_mesh,
    write_yaml,
)
from tests.waiting import wait_until

APPS = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "apps"


def workload(name: str, app: str) -> str:
    return f"""
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {{name: {name}}}
spec:
  service: {name}
  port: 8080
  labels: {{app: {name}, version: v1}}
  command: [{sys.executable}, {APPS / app}]
---
"""


EDGE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{destination: {host: frontend}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("tracing")
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(gateway_port)
        + workload("frontend", "frontend.py")
        + workload("backend", "backend.py")
        + EDGE,
    )
    with running_mesh(directory, gateway_port) as running:
        running.wait_serving("/")
        running.wait_synced()
        yield running


def spans_with_path(mesh: RunningMesh, path: str) -> list[dict[str, object]] | None:
    """The trace of the request to ``path``, once every proxy's spans of it are in."""
    traces = http_get(f"{mesh.admin_url}/api/v2/traces?limit=100").body.get("value", [])
    assert isinstance(traces, list)
    for trace in traces:
        urls = [str(s.get("tags", {}).get("http.url", "")) for s in trace]
        if any(url.endswith(path) for url in urls) and len(trace) >= 4:
            return list(trace)
    return None


def test_one_request_is_one_trace_through_the_gateway_and_each_sidecar(mesh: RunningMesh) -> None:
    path = f"/traced-{uuid.uuid4().hex[:8]}"
    reply = mesh.get(path)
    assert reply.status == 200, reply
    assert reply.body["backend"]["service"] == "backend"  # type: ignore[index]

    spans = wait_until(lambda: spans_with_path(mesh, path), 20, f"the trace of {path}")
    trace_ids = {str(s["traceId"]) for s in spans}
    assert len(trace_ids) == 1
    (trace_id,) = trace_ids
    assert len(trace_id) == 32
    proxies = mesh.admin("/api/proxies")["proxies"]
    assert isinstance(proxies, list)
    node_ids = {str(p["node_id"]) for p in proxies}
    # the gateway, the frontend's sidecar (its inbound and its call out) and the backend's
    reporting = [str(s["tags"]["node_id"]) for s in spans]  # type: ignore[index]
    assert set(reporting) == node_ids, (reporting, node_ids)
    assert len(spans) == 4, spans
    assert {str(s["tags"]["http.status_code"]) for s in spans} == {"200"}  # type: ignore[index]

    by_id = http_get(f"{mesh.admin_url}/api/v2/trace/{trace_id}")
    assert by_id.status == 200
    assert len(by_id.body["value"]) == 4  # type: ignore[arg-type]
    assert http_get(f"{mesh.admin_url}/api/v2/trace/{'0' * 32}").status == 404

    drawn = subprocess.run(
        [sys.executable, "-m", "pilotfish.cli.main", "trace", str(mesh.directory), trace_id],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    lines = drawn.stdout.splitlines()
    assert lines[0].startswith(f"trace {trace_id}: 4 spans")
    body = lines[1:]
    assert len(body) == 4, drawn.stdout
    depths = [(len(line) - len(line.lstrip(" "))) // 2 for line in body]
    assert depths == [0, 1, 2, 3], drawn.stdout
    assert all("| 200" in line for line in body), drawn.stdout

    listing = subprocess.run(
        [sys.executable, "-m", "pilotfish.cli.main", "trace", str(mesh.directory)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert trace_id in listing.stdout


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, object]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.received.append((self.path, json.loads(body)))
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def collector() -> Iterator[tuple[int, list[tuple[str, object]]]]:
    """An OTLP/HTTP and Zipkin collector of the test's own: it keeps what it is sent."""
    received: list[tuple[str, object]] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_meshconfig_edit_forwards_the_spans_to_an_otlp_and_a_zipkin_collector(
    mesh: RunningMesh,
) -> None:
    with collector() as (port, received):
        write_yaml(
            mesh.directory / "meshconfig.yaml",
            f"""
            apiVersion: pilotfish.io/v1alpha1
            kind: MeshConfig
            metadata: {{name: mesh}}
            spec:
              defaultConfig:
                tracing: {{zipkin: {{address: "127.0.0.1:{port}"}}}}
              extensionProviders:
              - name: otel
                opentelemetry: {{service: 127.0.0.1, port: {port}, http: {{path: /v1/traces}}}}
              defaultProviders: {{tracing: [otel]}}
            """,
        )
        mesh.wait_synced()
        path = f"/exported-{uuid.uuid4().hex[:8]}"

        def exported() -> bool:
            # until the running config has the exporters, the spans only go to the store
            assert mesh.get(path).status == 200
            paths = {p for p, _ in received}
            return {"/api/v2/spans", "/v1/traces"} <= paths and any(
                path in json.dumps(body) for p, body in received if p == "/v1/traces"
            )

        wait_until(exported, 30, f"spans of {path} at the collector", interval=1.0)
        otlp = [body for p, body in received if p == "/v1/traces"]
        services = {
            attribute["value"]["stringValue"]
            for body in otlp
            for resource in body["resourceSpans"]  # type: ignore[index]
            for attribute in resource["resource"]["attributes"]
            if attribute["key"] == "service.name"
        }
        assert any(s.startswith("frontend") for s in services), services
        assert any(s.startswith("backend") for s in services), services
