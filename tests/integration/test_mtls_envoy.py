"""Mutual TLS between real Envoys running the config we generate.

A client sidecar (its outbound listener and clusters) calls a server sidecar (its inbound
listener) in front of an app that echoes the headers it received. Each Envoy gets its
certificates from its own small SDS server on a Unix socket, standing in for the agent's,
under the names and cluster the generated config uses (``default``, ``ROOTCA``, ``sds-grpc``).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2
from test_translate_envoy_validate import ENVOY, static_bootstrap
from tests.certificates import CertificateAuthority
from tests.waiting import wait_until

from pilotfish.agent.ports import free_port
from pilotfish.model.diagnostics import SourceMap
from pilotfish.model.identity import ROOT_CA_SECRET, SDS_CLUSTER_NAME, WORKLOAD_CERT_SECRET
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import (
    DestinationRule,
    MeshConfig,
    Meta,
    ServicePort,
    TrafficPolicy,
)
from pilotfish.model.security import ClientTLSSettings, MtlsMode, PeerAuthentication
from pilotfish.model.services import Endpoint, MeshView, Service
from pilotfish.translate import MeshTranslator

pytestmark = pytest.mark.integration

BACKEND = "backend.default.svc.cluster.local"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/frontend"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/backend"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- the app and the SDS stand-in ---------------------------------------------------------------


class _EchoHeaders(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def app_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHeaders)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _SecretServer(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    """Answers each stream's first request with the secrets it names; ACKs get nothing."""

    def __init__(self, secrets: Mapping[str, secret_pb2.Secret]) -> None:
        self._secrets = secrets

    def StreamSecrets(
        self,
        request_iterator: Iterator[discovery_pb2.DiscoveryRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[discovery_pb2.DiscoveryResponse]:
        for request in request_iterator:
            if request.response_nonce:
                continue
            resources = []
            for name in request.resource_names:
                packed = any_pb2.Any()
                packed.Pack(self._secrets[name])
                resources.append(packed)
            yield discovery_pb2.DiscoveryResponse(
                version_info="1", type_url=SECRET_TYPE, resources=resources, nonce="1"
            )


@dataclass(frozen=True)
class Credentials:
    """What one Envoy's agent would hold: its certificate and key, and the roots it trusts."""

    cert_pem: bytes
    key_pem: bytes
    roots_pem: bytes

    def secrets(self) -> dict[str, secret_pb2.Secret]:
        return {
            WORKLOAD_CERT_SECRET: secret_pb2.Secret(
                name=WORKLOAD_CERT_SECRET,
                tls_certificate=common_pb2.TlsCertificate(
                    certificate_chain=base_pb2.DataSource(inline_bytes=self.cert_pem),
                    private_key=base_pb2.DataSource(inline_bytes=self.key_pem),
                ),
            ),
            ROOT_CA_SECRET: secret_pb2.Secret(
                name=ROOT_CA_SECRET,
                validation_context=common_pb2.CertificateValidationContext(
                    trusted_ca=base_pb2.DataSource(inline_bytes=self.roots_pem)
                ),
            ),
        }


@contextmanager
def sds_server(socket_path: str, credentials: Credentials) -> Iterator[None]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(
        _SecretServer(credentials.secrets()), server
    )
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    try:
        yield
    finally:
        server.stop(grace=None).wait(timeout=5)


# --- Envoys running the translation -------------------------------------------------------------


@dataclass(frozen=True)
class RunningEnvoy:
    admin: str

    def stat(self, name: str) -> int:
        with NO_PROXY.open(f"{self.admin}/stats?filter=^{name}$&format=json", timeout=5) as r:
            stats = json.loads(r.read())["stats"]
        return sum(int(s.get("value", 0)) for s in stats if s.get("name") == name)


def _sds_cluster(socket_path: str) -> dict[str, object]:
    return {
        "name": SDS_CLUSTER_NAME,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": SDS_CLUSTER_NAME,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": socket_path}}}}]}
            ],
        },
    }


@contextmanager
def envoy(view: MeshView, node: ProxyNode, credentials: Credentials) -> Iterator[RunningEnvoy]:
    """``node``'s generated resources in a real Envoy, its secrets from its own SDS server."""
    with tempfile.TemporaryDirectory(prefix="pf-mtls-", dir="/tmp") as folder:
        # Short: a Unix socket path must fit in 108 bytes.
        socket_path = f"{folder}/sds.sock"
        config = static_bootstrap(MeshTranslator(view).resources_for(node))
        static = config["static_resources"]
        assert isinstance(static, dict)
        static["clusters"].append(_sds_cluster(socket_path))
        config["node"] = {"id": node.id, "cluster": "test"}
        config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
        config_path = Path(folder) / "envoy.json"
        config_path.write_text(json.dumps(config))
        admin_path = Path(folder) / "admin"
        command = [
            str(ENVOY),
            "-c",
            str(config_path),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--admin-address-path",
            str(admin_path),
            "-l",
            "warning",
            "--log-path",
            str(Path(folder) / "envoy.log"),
        ]
        with sds_server(socket_path, credentials):
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                wait_until(lambda: admin_path.exists() and admin_path.read_text(), 30, "admin")
                running = RunningEnvoy("http://" + admin_path.read_text().strip())
                # Ready only once every listener's secrets arrived over SDS.
                wait_until(lambda: _status(running.admin + "/ready") == 200, 30, "Envoy ready")
                yield running
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _status(url: str, headers: Mapping[str, str] | None = None) -> int:
    try:
        with NO_PROXY.open(
            urllib.request.Request(url, headers=dict(headers or {})), timeout=5
        ) as r:
            return int(r.status)
    except urllib.error.HTTPError as error:
        return error.code


def get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with NO_PROXY.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {}


# --- the scenario -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    client: RunningEnvoy
    server: RunningEnvoy
    outbound_port: int
    inbound_port: int

    def call(self) -> tuple[int, dict[str, str]]:
        """The client app's request, through its sidecar, to the server's app."""
        return get(f"http://127.0.0.1:{self.outbound_port}/", {"Host": f"{BACKEND}:8080"})

    def call_in_plaintext(
        self, headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, str]]:
        """A caller without a sidecar, straight at the server's inbound port."""
        return get(f"http://127.0.0.1:{self.inbound_port}/", headers)


def meta(kind: str, name: str) -> Meta:
    return Meta(kind, name, "default", SourceMap(f"{name}.yaml"))


def mesh_view(
    mode: MtlsMode | None, inbound_port: int, rule_tls: ClientTLSSettings | None = None
) -> MeshView:
    policies = () if mode is None else (PeerAuthentication(meta("PeerAuthentication", "p"), mode),)
    rules = ()
    if rule_tls is not None:
        rules = (
            DestinationRule(
                meta("DestinationRule", "backend"), "backend", TrafficPolicy(tls=rule_tls)
            ),
        )
    service = Service(BACKEND, (ServicePort(8080, "http"),), short_name="backend")
    return MeshView(
        config=MeshConfig(peer_authentications=policies, destination_rules=rules),
        services={BACKEND: service},
        endpoints={
            BACKEND: (
                Endpoint(
                    "127.0.0.1", {8080: inbound_port}, {"app": "backend"}, service_account="backend"
                ),
            )
        },
    )


@pytest.fixture(scope="module")
def mesh_ca() -> CertificateAuthority:
    return CertificateAuthority("pilotfish test mesh")


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    return CertificateAuthority("someone else")


def credentials(
    ca: CertificateAuthority, spiffe_id: str, roots: CertificateAuthority
) -> Credentials:
    leaf = ca.issue(uri=spiffe_id)
    return Credentials(leaf.cert_pem, leaf.key_pem, roots.cert_pem)


@contextmanager
def pair(
    app_port: int,
    mode: MtlsMode | None,
    client_credentials: Credentials,
    server_credentials: Credentials,
    rule_tls: ClientTLSSettings | None = None,
) -> Iterator[Pair]:
    outbound_port, inbound_port = free_port(), free_port()
    view = mesh_view(mode, inbound_port, rule_tls)
    client_node = ProxyNode(id="frontend-0", service="frontend", outbound_port=outbound_port)
    server_node = ProxyNode(
        id="backend-0",
        service="backend",
        labels={"app": "backend"},
        inbound_port=inbound_port,
        app_port=app_port,
        service_account="backend",
    )
    with (
        envoy(view, server_node, server_credentials) as server,
        envoy(view, client_node, client_credentials) as client,
    ):
        yield Pair(client, server, outbound_port, inbound_port)


def test_strict_accepts_the_mesh_peer_and_tells_the_app_who_called(
    app_port: int, mesh_ca: CertificateAuthority
) -> None:
    with pair(
        app_port,
        "STRICT",
        credentials(mesh_ca, CLIENT_ID, mesh_ca),
        credentials(mesh_ca, SERVER_ID, mesh_ca),
    ) as mesh:
        status, headers = mesh.call()
        assert status == 200
        assert f"URI={CLIENT_ID}" in headers["x-forwarded-client-cert"]
        assert mesh.server.stat("listener.inbound.ssl.handshake") >= 1

        # Plaintext to STRICT: the handshake fails, visibly, and nothing reaches the app.
        before = mesh.server.stat("listener.inbound.ssl.connection_error")
        with pytest.raises((ConnectionError, urllib.error.URLError)):
            mesh.call_in_plaintext()
        wait_until(
            lambda: mesh.server.stat("listener.inbound.ssl.connection_error") > before,
            10,
            "the failed handshake counted",
        )


def test_permissive_accepts_both_and_never_trusts_a_callers_own_header(
    app_port: int, mesh_ca: CertificateAuthority
) -> None:
    with pair(
        app_port,
        None,  # no PeerAuthentication: Istio's default, PERMISSIVE
        credentials(mesh_ca, CLIENT_ID, mesh_ca),
        credentials(mesh_ca, SERVER_ID, mesh_ca),
    ) as mesh:
        status, headers = mesh.call()
        assert status == 200
        assert f"URI={CLIENT_ID}" in headers["x-forwarded-client-cert"]

        forged = {"x-forwarded-client-cert": f"URI={SERVER_ID}"}
        status, headers = mesh.call_in_plaintext(forged)
        assert status == 200
        assert "x-forwarded-client-cert" not in headers


def test_a_peer_with_a_certificate_from_another_ca_is_refused(
    app_port: int, mesh_ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    # The client trusts the mesh's root (so it accepts the server), but its own certificate,
    # with the right SPIFFE id, comes from another CA.
    with pair(
        app_port,
        "STRICT",
        credentials(other_ca, CLIENT_ID, mesh_ca),
        credentials(mesh_ca, SERVER_ID, mesh_ca),
    ) as mesh:
        status, _headers = mesh.call()
        assert status == 503
        assert mesh.server.stat("listener.inbound.ssl.fail_verify_error") >= 1


def test_the_client_refuses_a_server_with_the_wrong_identity(
    app_port: int, mesh_ca: CertificateAuthority
) -> None:
    impostor = "spiffe://cluster.local/ns/default/sa/impostor"
    with pair(
        app_port,
        "STRICT",
        credentials(mesh_ca, CLIENT_ID, mesh_ca),
        credentials(mesh_ca, impostor, mesh_ca),
    ) as mesh:
        status, _headers = mesh.call()
        assert status == 503
        cluster = f"cluster.outbound|8080||{BACKEND}.ssl.fail_verify_san"
        assert mesh.client.stat(cluster) >= 1


def test_a_disable_server_needs_a_rule_that_says_disable(
    app_port: int, mesh_ca: CertificateAuthority
) -> None:
    client = credentials(mesh_ca, CLIENT_ID, mesh_ca)
    server = credentials(mesh_ca, SERVER_ID, mesh_ca)
    # As in Istio, auto mTLS does not know the server's mode: it speaks mTLS to a sidecar.
    with pair(app_port, "DISABLE", client, server) as mesh:
        assert mesh.call()[0] == 503
    with pair(app_port, "DISABLE", client, server, ClientTLSSettings("DISABLE")) as mesh:
        status, headers = mesh.call()
        assert status == 200
        assert "x-forwarded-client-cert" not in headers
