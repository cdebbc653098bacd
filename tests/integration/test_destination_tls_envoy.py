"""A real client sidecar calling an external HTTPS service as a DestinationRule's SIMPLE or
MUTUAL tls says, with certificates from files (see ``sds_envoys``)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sds_envoys import Credentials, echo_app, envoy, get
from tests.certificates import CertificateAuthority

from pilotfish.agent.ports import free_port
from pilotfish.model.diagnostics import SourceMap
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import DestinationRule, MeshConfig, Meta, ServicePort, TrafficPolicy
from pilotfish.model.security import ClientTLSSettings
from pilotfish.model.services import Endpoint, MeshView, Service

pytestmark = pytest.mark.integration

API = "api.example.com"


@dataclass(frozen=True)
class Files:
    ca: str
    client_cert: str
    client_key: str
    port: int


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Files]:
    """An HTTPS API on loopback that wants a client certificate from the "clients" CA."""
    folder = tmp_path_factory.mktemp("external-tls")
    servers, clients = CertificateAuthority("api"), CertificateAuthority("clients")
    (folder / "ca.pem").write_bytes(servers.cert_pem)
    (folder / "clients-ca.pem").write_bytes(clients.cert_pem)
    server_cert, server_key = servers.issue(dns=API).write(folder, "server")
    client_cert, client_key = clients.issue(dns="client.example.com").write(folder, "client")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(server_cert), str(server_key))
    context.load_verify_locations(str(folder / "clients-ca.pem"))
    context.verify_mode = ssl.CERT_REQUIRED
    with echo_app(context) as port:
        yield Files(str(folder / "ca.pem"), str(client_cert), str(client_key), port)


def call(external: Files, tls: ClientTLSSettings) -> int:
    service = Service(API, (ServicePort(443, "http"),), external=True)
    rule = DestinationRule(
        Meta("DestinationRule", "api", "default", SourceMap("api.yaml")),
        API,
        TrafficPolicy(tls=tls),
    )
    view = MeshView(
        config=MeshConfig(destination_rules=(rule,)),
        services={API: service},
        endpoints={API: (Endpoint("127.0.0.1", {443: external.port}),)},
    )
    outbound = free_port()
    node = ProxyNode(id="client-0", service="client", outbound_port=outbound)
    mesh = CertificateAuthority("mesh")  # the sidecar's own mesh secrets play no part here
    leaf = mesh.issue(uri="spiffe://cluster.local/ns/default/sa/client")
    with envoy(view, node, Credentials(leaf.cert_pem, leaf.key_pem, mesh.cert_pem)):
        status, _headers = get(f"http://127.0.0.1:{outbound}/", {"Host": f"{API}:443"})
    return status


def test_mutual_presents_the_client_certificate_and_verifies_the_server(external: Files) -> None:
    mutual = ClientTLSSettings(
        "MUTUAL",
        ca_certificates=external.ca,
        client_certificate=external.client_cert,
        private_key=external.client_key,
        subject_alt_names=(API,),
    )
    assert call(external, mutual) == 200


def test_simple_has_no_client_certificate_to_show(external: Files) -> None:
    assert call(external, ClientTLSSettings("SIMPLE", ca_certificates=external.ca)) == 503


def test_a_server_without_the_expected_name_is_refused(external: Files) -> None:
    wrong_name = ClientTLSSettings(
        "MUTUAL",
        ca_certificates=external.ca,
        client_certificate=external.client_cert,
        private_key=external.client_key,
        subject_alt_names=("other.example.com",),
    )
    assert call(external, wrong_name) == 503


def test_a_server_from_an_untrusted_ca_is_refused(external: Files, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(CertificateAuthority("stranger").cert_pem)
    untrusted = ClientTLSSettings(
        "MUTUAL",
        ca_certificates=str(stranger),
        client_certificate=external.client_cert,
        private_key=external.client_key,
    )
    assert call(external, untrusted) == 503
