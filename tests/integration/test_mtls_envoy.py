"""Mutual TLS between real Envoys running the config we generate (see ``sds_envoys``).

A client sidecar (its outbound listener and clusters) calls a server sidecar (its inbound
listener) in front of an app that echoes the headers it received.
"""

from __future__ import annotations

import urllib.error
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from sds_envoys import Credentials, RunningEnvoy, echo_app, envoy, get
from tests.certificates import CertificateAuthority
from tests.waiting import wait_until

from pilotfish.agent.ports import free_port
from pilotfish.model.diagnostics import SourceMap
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

pytestmark = pytest.mark.integration

BACKEND = "backend.default.svc.cluster.local"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/frontend"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/backend"


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
    mode: MtlsMode | None,
    inbound_port: int,
    rule_tls: ClientTLSSettings | None = None,
    selector: dict[str, str] | None = None,
) -> MeshView:
    policies = (
        ()
        if mode is None
        else (PeerAuthentication(meta("PeerAuthentication", "p"), mode, selector or {}),)
    )
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
def app_port() -> Iterator[int]:
    with echo_app() as port:
        yield port


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
    selector: dict[str, str] | None = None,
) -> Iterator[Pair]:
    outbound_port, inbound_port = free_port(), free_port()
    view = mesh_view(mode, inbound_port, rule_tls, selector)
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
        wait_until(
            lambda: mesh.server.stat("listener.inbound.ssl.fail_verify_error") >= 1,
            10,
            "the server's verification failure counted",
        )


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
        wait_until(lambda: mesh.client.stat(cluster) >= 1, 10, "the SAN mismatch counted")


def test_a_workload_disable_server_needs_a_rule_that_says_disable(
    app_port: int, mesh_ca: CertificateAuthority
) -> None:
    client = credentials(mesh_ca, CLIENT_ID, mesh_ca)
    server = credentials(mesh_ca, SERVER_ID, mesh_ca)
    one_workload = {"app": "backend"}
    # As in Istio, auto mTLS reads only the namespace's and the mesh's policies: towards a
    # workload's own DISABLE it still speaks mTLS to the sidecar.
    with pair(app_port, "DISABLE", client, server, selector=one_workload) as mesh:
        assert mesh.call()[0] == 503
    # A namespace-wide DISABLE is inferred: callers speak plain text.
    with pair(app_port, "DISABLE", client, server) as mesh:
        status, headers = mesh.call()
        assert status == 200
        assert "x-forwarded-client-cert" not in headers
    rule = ClientTLSSettings("DISABLE")
    with pair(app_port, "DISABLE", client, server, rule, selector=one_workload) as mesh:
        status, headers = mesh.call()
        assert status == 200
        assert "x-forwarded-client-cert" not in headers
