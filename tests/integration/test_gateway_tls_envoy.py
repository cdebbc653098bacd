"""A real gateway Envoy running our Gateway TLS: HTTPS servers told apart by SNI (SIMPLE and
MUTUAL, certificates from files) and a plaintext one on the same port, each serving only its
own hosts; httpsRedirect, and mesh mTLS from the gateway to a STRICT service behind its own
sidecar (see ``sds_envoys``)."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sds_envoys import Credentials, RunningEnvoy, echo_app, envoy
from tests.certificates import CertificateAuthority

from pilotfish.agent.ports import free_port
from pilotfish.model.diagnostics import SourceMap
from pilotfish.model.identity import GATEWAY_SERVICE_ACCOUNT, Identity
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import (
    Destination,
    Gateway,
    GatewayServer,
    HTTPRoute,
    MeshConfig,
    Meta,
    RouteDestination,
    ServicePort,
    VirtualService,
)
from pilotfish.model.security import PeerAuthentication, ServerTLSSettings
from pilotfish.model.services import Endpoint, MeshView, Service

pytestmark = pytest.mark.integration

BACKEND = "backend.default.svc.cluster.local"
GATEWAY_ID = Identity("cluster.local", "default", GATEWAY_SERVICE_ACCOUNT).spiffe_id
SERVER_ID = "spiffe://cluster.local/ns/default/sa/backend"


def meta(kind: str, name: str) -> Meta:
    return Meta(kind, name, "default", SourceMap(f"{name}.yaml"))


@dataclass(frozen=True)
class Edge:
    https_port: int
    http_port: int
    web_ca: Path
    client_cert: Path
    client_key: Path
    gateway: RunningEnvoy


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    folder = tmp_path_factory.mktemp("gateway-tls")
    web, clients, mesh = (CertificateAuthority(n) for n in ("web", "clients", "mesh"))
    web_ca = folder / "web-ca.pem"
    web_ca.write_bytes(web.cert_pem)
    clients_ca = folder / "clients-ca.pem"
    clients_ca.write_bytes(clients.cert_pem)
    a_cert, a_key = web.issue(dns="a.example.com").write(folder, "a")
    b_cert, b_key = web.issue(dns="b.example.com").write(folder, "b")
    client_cert, client_key = clients.issue(dns="client.example.com").write(folder, "client")
    https_port, http_port, inbound_port = free_port(), free_port(), free_port()
    config = MeshConfig(
        peer_authentications=(PeerAuthentication(meta("PeerAuthentication", "p"), "STRICT"),),
        gateways=(
            Gateway(
                meta("Gateway", "web"),
                {},
                (
                    GatewayServer(
                        https_port,
                        "a",
                        "HTTP",
                        ("a.example.com",),
                        tls=ServerTLSSettings("SIMPLE", str(a_cert), str(a_key)),
                    ),
                    GatewayServer(
                        https_port,
                        "b",
                        "HTTP",
                        ("b.example.com",),
                        tls=ServerTLSSettings("MUTUAL", str(b_cert), str(b_key), str(clients_ca)),
                    ),
                    GatewayServer(https_port, "plain", "HTTP", ("plain.example.com",)),
                    GatewayServer(http_port, "http", "HTTP", ("*",), https_redirect=True),
                ),
            ),
        ),
        virtual_services=(
            VirtualService(
                meta("VirtualService", "site"),
                hosts=("a.example.com", "b.example.com", "plain.example.com"),
                gateways=("web",),
                http=(HTTPRoute(route=(RouteDestination(Destination("backend")),)),),
            ),
        ),
    )
    view = MeshView(
        config=config,
        services={BACKEND: Service(BACKEND, (ServicePort(8080, "http"),), short_name="backend")},
        endpoints={
            BACKEND: (Endpoint("127.0.0.1", {8080: inbound_port}, service_account="backend"),)
        },
    )
    gateway_leaf, server_leaf = mesh.issue(uri=GATEWAY_ID), mesh.issue(uri=SERVER_ID)
    with (
        echo_app() as app_port,
        envoy(
            view,
            ProxyNode(
                id="backend-0",
                service="backend",
                inbound_port=inbound_port,
                app_port=app_port,
                service_account="backend",
            ),
            Credentials(server_leaf.cert_pem, server_leaf.key_pem, mesh.cert_pem),
        ),
        envoy(
            view,
            ProxyNode(id="ingress-0", kind="gateway", service_account=GATEWAY_SERVICE_ACCOUNT),
            Credentials(gateway_leaf.cert_pem, gateway_leaf.key_pem, mesh.cert_pem),
        ) as gateway,
    ):
        yield Edge(https_port, http_port, web_ca, client_cert, client_key, gateway)


def request(
    port: int, host: str, context: ssl.SSLContext | None = None, *, sni: str | None = None
) -> tuple[str, dict[str, str], bytes]:
    """One HTTP/1.1 GET (over TLS with SNI ``sni`` or ``host`` when a context is given)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    wrapped = context.wrap_socket(raw, server_hostname=sni or host) if context else raw
    with wrapped as conn:
        conn.sendall(f"GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


def client_context(edge: Edge, *, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(edge.web_ca))
    if with_certificate:
        context.load_cert_chain(str(edge.client_cert), str(edge.client_key))
    return context


def test_simple_server_terminates_tls_and_the_gateway_calls_the_mesh_over_mtls(edge: Edge) -> None:
    status, _headers, body = request(
        edge.https_port, "a.example.com", client_context(edge, with_certificate=False)
    )
    assert status == "HTTP/1.1 200 OK"
    # The backend's STRICT sidecar let the gateway in and named it to the app.
    assert f"URI={GATEWAY_ID}" in json.loads(body)["x-forwarded-client-cert"]


def test_sni_picks_the_server_and_its_certificate(edge: Edge) -> None:
    context = client_context(edge, with_certificate=True)
    raw = socket.create_connection(("127.0.0.1", edge.https_port), timeout=10)
    with context.wrap_socket(raw, server_hostname="b.example.com") as conn:
        names = [value for kind, value in conn.getpeercert()["subjectAltName"] if kind == "DNS"]
    assert names == ["b.example.com"]


def test_mutual_server_needs_a_client_certificate(edge: Edge) -> None:
    status, _headers, _body = request(
        edge.https_port, "b.example.com", client_context(edge, with_certificate=True)
    )
    assert status == "HTTP/1.1 200 OK"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(edge.https_port, "b.example.com", client_context(edge, with_certificate=False))


def test_https_redirect_answers_plain_http_with_301(edge: Edge) -> None:
    status, headers, _body = request(edge.http_port, "a.example.com")
    assert status == "HTTP/1.1 301 Moved Permanently"
    assert headers["location"] == "https://a.example.com/x"


def test_a_tls_server_serves_only_its_own_hosts(edge: Edge) -> None:
    """No certificate, so the SIMPLE server's handshake (SNI a.example.com); then a Host that
    only the MUTUAL server serves: no route, never the MUTUAL server's backend."""
    context = client_context(edge, with_certificate=False)
    status, _headers, _body = request(
        edge.https_port, "b.example.com", context, sni="a.example.com"
    )
    assert status == "HTTP/1.1 404 Not Found"
    status, _headers, _body = request(edge.https_port, "a.example.com", context)
    assert status == "HTTP/1.1 200 OK"


def test_plaintext_on_a_tls_port_serves_only_the_plaintext_servers_hosts(edge: Edge) -> None:
    assert request(edge.https_port, "plain.example.com")[0] == "HTTP/1.1 200 OK"
    for host in ("a.example.com", "b.example.com"):
        assert request(edge.https_port, host)[0] == "HTTP/1.1 404 Not Found"
