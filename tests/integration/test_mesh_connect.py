"""Clients that use their proxy with CONNECT or an Upgrade, through `pilotfish up`: grpcio
calling by ``service:port`` (split and retried as plain HTTP), a refused CONNECT to a host
nobody serves, WebSockets through a sidecar and through the gateway, and HTTPS to an outside
host a ServiceEntry declares (its TLS never terminated)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import ssl
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import pytest
from tests.certificates import CertificateAuthority
from tests.integration.mesh_harness import (
    APPS,
    RunningMesh,
    free_port,
    gateway,
    running_mesh,
    write_yaml,
)
from tests.integration.test_mesh_metrics import scrape, total
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

CALLS = 200
OUTSIDE = "api.outside.test"


class OutsideHandler(BaseHTTPRequestHandler):
    """An HTTPS server outside the mesh: answers with the SNI its TLS handshake got."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, OutsideServer)
        payload = json.dumps({"path": self.path, "sni": server.server_names[-1:]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


class OutsideServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, folder: Path) -> None:
        super().__init__(("127.0.0.1", 0), OutsideHandler)
        authority = CertificateAuthority("outside")
        self.ca_file = folder / "outside-ca.pem"
        self.ca_file.write_bytes(authority.cert_pem)
        cert, key = authority.issue(dns=OUTSIDE).write(folder, "outside")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server_names: list[str | None] = []
        context.sni_callback = lambda _socket, name, _context: self.server_names.append(name)
        self.socket = context.wrap_socket(self.socket, server_side=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def service_entry(port: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: outside}}
spec:
  hosts: [{OUTSIDE}]
  location: MESH_EXTERNAL
  ports: [{{number: {port}, name: https, protocol: HTTPS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
"""


def workload(
    name: str,
    service: str,
    app: str,
    *,
    protocol: str | None = "HTTP",
    version: str = "v1",
    env: dict[str, str] | None = None,
    port: int = 8080,
) -> str:
    named = f"protocol: {protocol}" if protocol else "# protocol unset: detected"
    return f"""
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {{name: {name}}}
spec:
  service: {service}
  port: {50051 if protocol == "GRPC" else port}
  {named}
  labels: {{app: {service}, version: {version}}}
  command: [{sys.executable}, {APPS / app}]
  env: {json.dumps(env or {})}
---
"""


ROUTES = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend]
  http:
  - route:
    - {destination: {host: backend, subset: v1}, weight: 80}
    - {destination: {host: backend, subset: v2}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky}
spec:
  hosts: [flaky]
  http:
  - route: [{destination: {host: flaky}}]
    retries: {attempts: 3, retryOn: unavailable}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /ws}}]
    route: [{destination: {host: wsecho}}]
  - route: [{destination: {host: client}}]
---
"""


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OutsideServer]:
    server = OutsideServer(tmp_path_factory.mktemp("outside"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        with contextlib.suppress(RuntimeError):
            thread.join(timeout=5)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, outside: OutsideServer) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("connect")
    gateway_port = free_port()
    documents = [
        service_entry(outside.port),
        gateway(gateway_port),
        workload("client", "client", "mesh_client.py"),
        workload("wsecho", "wsecho", "websocket_echo.py"),
        workload("backend-v1", "backend", "grpc_echo.py", protocol="GRPC"),
        workload("backend-v2", "backend", "grpc_echo.py", protocol="GRPC", version="v2"),
        # Both fail their first 3 calls: 3 retries get past them, Istio's default 2 do not.
        workload("flaky", "flaky", "grpc_echo.py", protocol="GRPC", env={"FAIL_FIRST": "3"}),
        workload("plain", "plain", "grpc_echo.py", protocol="GRPC", env={"FAIL_FIRST": "3"}),
        workload("detected", "detected", "grpc_echo.py", protocol=None, port=50051),
        workload("counted", "counted", "grpc_echo.py", protocol="GRPC"),
        ROUTES,
    ]
    write_yaml(directory / "mesh.yaml", "".join(documents))
    with running_mesh(directory, gateway_port) as running:
        for hostname in ("backend", "flaky", "plain", "detected", "counted", "wsecho", "client"):
            running.wait_endpoints(f"{hostname}.default.svc.cluster.local", 1)
        running.wait_endpoints("backend.default.svc.cluster.local", 2)
        running.wait_synced()
        running.wait_serving("/wsready")
        running.wait_serving("/ready")
        yield running


def client_call(mesh: RunningMesh, path: str, **query: str | int) -> dict[str, object]:
    reply = mesh.get(f"{path}?{urllib.parse.urlencode(query)}", timeout=60)
    assert reply.status == 200, reply
    return reply.body


def test_grpc_calls_by_service_port_follow_the_weighted_split(mesh: RunningMesh) -> None:
    seen = client_call(mesh, "/grpc", target="backend:50051", calls=CALLS)
    answers = seen["answers"]
    assert isinstance(answers, dict)
    assert seen["errors"] == {}, seen
    assert set(answers) == {"backend-v1-0: hi", "backend-v2-0: hi"}
    v1 = answers["backend-v1-0: hi"]
    assert sum(answers.values()) == CALLS
    # 80% of 200 is 160; 120..190 is more than 5 standard deviations (5.7) on either side.
    assert 120 <= v1 <= 190, answers


def test_retries_of_the_virtual_service_apply_inside_the_tunnel(mesh: RunningMesh) -> None:
    # FAIL_FIRST=3: the first call succeeds on its 4th attempt (3 retries)...
    retried = client_call(mesh, "/grpc", target="flaky:50051", calls=1)
    assert retried["answers"] == {"flaky-0: hi (call 4)": 1}, retried
    # ...while without the VirtualService, Istio's default 2 retries do not get past them.
    default = client_call(mesh, "/grpc", target="plain:50051", calls=2)
    assert default["errors"] == {"UNAVAILABLE": 1}, default
    assert default["answers"] == {"plain-0: hi (call 4)": 1}, default


def test_grpc_reaches_a_port_nothing_names_as_http2(mesh: RunningMesh) -> None:
    """An unnamed port is detected (AUTO): each hop speaks the protocol it received."""
    seen = client_call(mesh, "/grpc", target="detected:50051", calls=3)
    assert seen == {"answers": {"detected-0: hi": 3}, "errors": {}, "details": []}


def test_calls_in_a_tunnel_count_once_each_and_the_tunnel_itself_not_at_all(
    mesh: RunningMesh,
) -> None:
    caller = {"reporter": "source", "source_workload": "client"}
    counted = {**caller, "destination_service": "counted.default.svc.cluster.local"}
    refused = {**caller, "response_code": "404"}
    _, before = scrape(mesh)
    refused_before = total(before, "istio_requests_total", **refused)
    assert client_call(mesh, "/grpc", target="counted:50051", calls=5)["errors"] == {}
    # Logged by the outbound listener after the tunnel closed: once it is counted, a logged
    # tunnel would be counted too.
    client_call(mesh, "/connect", authority="nowhere.example:1")

    def reported() -> list[tuple[str, dict[str, str], float]] | None:
        _, samples = scrape(mesh)
        done = total(samples, "istio_requests_total", **refused) > refused_before
        return samples if done and total(samples, "istio_requests_total", **counted) else None

    samples = wait_until(reported, 20, "the calls and the refused CONNECT in the metrics")
    assert total(samples, "istio_requests_total", **counted, request_protocol="grpc") == 5
    assert total(samples, "istio_requests_total", **counted) == 5  # no CONNECT among them


def test_a_connect_to_a_host_no_service_answers_is_refused_naming_the_proxy(
    mesh: RunningMesh,
) -> None:
    refused = client_call(mesh, "/connect", authority="nowhere.example:443")
    assert refused["status_line"] == "HTTP/1.1 404 Not Found", refused
    assert refused["body"] == (
        "pilotfish: client-0 refused CONNECT nowhere.example:443: no service in the mesh "
        "answers this host:port (declare an outside host with a ServiceEntry)\n"
    )
    headers = refused["headers"]
    assert isinstance(headers, dict)
    assert headers.get("x-pilotfish-proxy") == "client-0"
    # Where curl -v and the other clients show it (they never print a CONNECT's body).
    assert headers.get("x-pilotfish-refusal") == (
        "client-0 refused CONNECT: no service in the mesh answers nowhere.example:443"
    )
    grpc = client_call(mesh, "/grpc", target="nowhere:50051", calls=1)
    assert grpc["errors"] == {"UNAVAILABLE": 1}, grpc


def test_a_websocket_through_the_callers_sidecar_carries_messages_both_ways(
    mesh: RunningMesh,
) -> None:
    seen = client_call(mesh, "/websocket", authority="wsecho:8080", messages=6, interval=0.5)
    assert seen["received"] == [f"wsecho-0: message {i}" for i in range(6)]
    assert seen["close_code"] == 1000


def test_a_websocket_inside_a_connect_tunnel_carries_messages_both_ways(
    mesh: RunningMesh,
) -> None:
    seen = client_call(
        mesh, "/websocket-connect", authority="wsecho:8080", messages=6, interval=0.5
    )
    assert seen["tunnel"] == "HTTP/1.1 200 OK", seen
    assert seen["upgrade"] == "HTTP/1.1 101 Switching Protocols", seen
    assert seen["received"] == [f"wsecho-0: message {i}" for i in range(6)]
    assert seen["close"] == [0x8, 1000]


def test_a_websocket_through_the_gateway_carries_messages_both_ways(mesh: RunningMesh) -> None:
    async def talk() -> tuple[list[str], int | None]:
        received: list[str] = []
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                f"{mesh.gateway_url}/ws", timeout=aiohttp.ClientWSTimeout(ws_close=10)
            ) as ws,
        ):
            for index in range(6):
                await ws.send_str(f"hello {index}")
                reply = await ws.receive(timeout=10)
                received.append(str(reply.data))
                await asyncio.sleep(0.5)
            await ws.close()
            return received, ws.close_code

    received, close_code = asyncio.run(talk())
    assert received == [f"wsecho-0: hello {i}" for i in range(6)]
    assert close_code == 1000


def test_https_to_an_outside_host_of_a_service_entry_keeps_its_own_tls(
    mesh: RunningMesh, outside: OutsideServer
) -> None:
    url = f"https://{OUTSIDE}:{outside.port}/hello"
    # The client trusts only the outside server's own CA: a proxy that terminated the TLS
    # could not show a certificate it accepts.
    seen = client_call(mesh, "/https", url=url, ca=str(outside.ca_file))
    assert seen.get("status") == 200, seen
    body = seen["body"]
    assert isinstance(body, str)
    assert json.loads(body) == {"path": "/hello", "sni": [OUTSIDE]}


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (Debian package curl)")
def test_curl_with_https_proxy_reaches_the_outside_host_too(
    mesh: RunningMesh, outside: OutsideServer
) -> None:
    """curl sends its CONNECT as HTTP/1.1, where urllib's is HTTP/1.0."""
    url = f"https://{OUTSIDE}:{outside.port}/hello"
    with_curl = client_call(mesh, "/curl", url=url, ca=str(outside.ca_file))
    assert with_curl["returncode"] == 0, with_curl
    assert with_curl["status"] == "200", with_curl
    assert json.loads(str(with_curl["body"])) == {"path": "/hello", "sni": [OUTSIDE]}


def test_https_to_an_outside_host_nothing_declares_is_refused_by_the_sidecar(
    mesh: RunningMesh, outside: OutsideServer
) -> None:
    url = f"https://undeclared.outside.test:{outside.port}/hello"
    seen = client_call(mesh, "/https", url=url, ca=str(outside.ca_file))
    assert "404" in str(seen.get("error")), seen
    # The refusal's body names the host (the client library shows only the status line).
    refused = client_call(mesh, "/connect", authority=f"undeclared.outside.test:{outside.port}")
    assert f"refused CONNECT undeclared.outside.test:{outside.port}" in str(refused["body"])
