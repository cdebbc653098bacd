"""Rules on the caller's identity (principals, namespaces, service accounts, trust domains)
judged by a real Envoy over real mutual TLS: the generated inbound listener, its chains given
a TLS socket with certificates made here so that callers from any trust domain can be tried
(the mesh's own CA signs only its own), and clients presenting SPIFFE URI SANs."""

from __future__ import annotations

import datetime
import http.client
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf import json_format, wrappers_pb2
from tests.integration.test_translate_envoy_validate import ENVOY
from tests.waiting import wait_until

from pilotfish.agent.ports import free_port
from pilotfish.load import load_text
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.services import MeshView
from pilotfish.translate import MeshTranslator
from pilotfish.translate.proto_values import pack

pytestmark = pytest.mark.integration

POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: callers, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/prod/sa/web"]}}]
    to: [{operation: {paths: ["/principal/*"]}}]
  - from: [{source: {namespaces: ["dev"]}}]
    to: [{operation: {paths: ["/namespace/*"]}}]
  - from: [{source: {serviceAccounts: ["prod/web"]}}]
    to: [{operation: {paths: ["/account/*"]}}]
  - when: [{key: source.trustDomain, values: ["cluster.local"]}]
    to: [{operation: {paths: ["/domain/*"]}}]
"""

PROD_WEB = "spiffe://cluster.local/ns/prod/sa/web"
DEV_WEB = "spiffe://cluster.local/ns/dev/sa/web"
FOREIGN = "spiffe://other.domain/ns/prod/sa/web"


@dataclass(frozen=True)
class Certificates:
    directory: Path
    ca: Path

    def client(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.pem", self.directory / f"{name}-key.pem"


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_name(path.stem + "-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    subject: str,
    san: x509.GeneralName,
    *,
    is_ca: bool = False,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if is_ca else ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
    )
    return key, builder.sign(key if is_ca else ca_key, hashes.SHA256())


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("certs")
    ca_key, ca_cert = _issue(
        ec.generate_private_key(ec.SECP256R1()),
        x509.Name([]),
        "test root",
        x509.DNSName("root.test"),
        is_ca=True,
    )
    _write(directory / "ca.pem", ca_key, ca_cert)
    server_key, server_cert = _issue(
        ca_key,
        ca_cert.subject,
        "api",
        x509.UniformResourceIdentifier("spiffe://cluster.local/ns/shop/sa/api"),
    )
    _write(directory / "server.pem", server_key, server_cert)
    for name, uri in (("prod-web", PROD_WEB), ("dev-web", DEV_WEB), ("foreign", FOREIGN)):
        key, cert = _issue(ca_key, ca_cert.subject, name, x509.UniformResourceIdentifier(uri))
        _write(directory / f"{name}.pem", key, cert)
    return Certificates(directory, directory / "ca.pem")


@pytest.fixture(scope="module")
def app_port() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"path": self.path}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _with_mutual_tls(listener: listener_pb2.Listener, certs: Certificates) -> None:
    context = tls_pb2.DownstreamTlsContext(
        require_client_certificate=wrappers_pb2.BoolValue(value=True),
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificates=[
                common_pb2.TlsCertificate(
                    certificate_chain=base_pb2.DataSource(
                        filename=str(certs.directory / "server.pem")
                    ),
                    private_key=base_pb2.DataSource(
                        filename=str(certs.directory / "server-key.pem")
                    ),
                )
            ],
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(filename=str(certs.ca))
            ),
        ),
    )
    for chain in listener.filter_chains:
        chain.transport_socket.CopyFrom(
            base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))
        )


@dataclass(frozen=True)
class Proxy:
    port: int
    certificates: Certificates

    def get(self, path: str, client: str) -> tuple[int, str]:
        context = ssl.create_default_context(cafile=str(self.certificates.ca))
        context.check_hostname = False
        cert, key = self.certificates.client(client)
        context.load_cert_chain(str(cert), str(key))
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=context, timeout=10
        )
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def proxy(
    certificates: Certificates, app_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    loaded = load_text(POLICIES, "policies.yaml")
    assert loaded.config is not None, loaded.diagnostics
    node = ProxyNode(
        id="api-0",
        namespace="shop",
        service="api",
        labels={"app": "api"},
        inbound_port=free_port(),
        app_port=app_port,
    )
    resources = MeshTranslator(MeshView(loaded.config, {}, {})).resources_for(node)
    (listener,) = [item for item in resources.listeners if item.name == "inbound"]
    _with_mutual_tls(listener, certificates)
    bootstrap = {
        "node": {"id": "api-0", "cluster": "pilotfish"},
        "static_resources": {
            "listeners": [json_format.MessageToDict(listener)],
            "clusters": [json_format.MessageToDict(c) for c in resources.clusters],
        },
    }
    directory = tmp_path_factory.mktemp("envoy")
    config = directory / "bootstrap.json"
    config.write_text(json.dumps(bootstrap))
    log = (directory / "envoy.log").open("wb")
    process = subprocess.Popen(
        [str(ENVOY), "-c", str(config), "--disable-hot-restart", "-l", "warning"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    running = Proxy(node.inbound_port or 0, certificates)
    try:

        def answering() -> bool:
            assert process.poll() is None, (directory / "envoy.log").read_text()
            try:
                return running.get("/domain/ready", "dev-web")[0] == 200
            except OSError:
                return False

        wait_until(answering, 30, "the inbound listener to answer over mTLS")
        yield running
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.mark.parametrize(
    ("path", "client", "status"),
    [
        ("/principal/x", "prod-web", 200),
        ("/principal/x", "dev-web", 403),
        ("/principal/x", "foreign", 403),
        ("/namespace/x", "dev-web", 200),
        ("/namespace/x", "prod-web", 403),
        ("/account/x", "prod-web", 200),
        ("/account/x", "foreign", 200),  # Istio: a service account in any trust domain
        ("/account/x", "dev-web", 403),
        ("/domain/x", "dev-web", 200),
        ("/domain/x", "foreign", 403),
    ],
)
def test_identity_rules_over_real_mutual_tls(
    proxy: Proxy, path: str, client: str, status: int
) -> None:
    answer, body = proxy.get(path, client)

    assert answer == status, body
    if status == 403:
        assert body.startswith("RBAC: access denied by api-0: no ALLOW policy matched")
        assert "shop/callers" in body
