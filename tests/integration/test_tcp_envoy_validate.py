"""Envoy itself checks the TCP and TLS resources translation emits (``envoy --mode validate``):
opaque inbound chains and protocol detection, network RBAC, upstream ports, and a gateway
port mixing plaintext HTTP, HTTPS that terminates and TLS passed through by SNI."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.certificates import CertificateAuthority
from tests.integration.test_translate_envoy_validate import envoy_validate, static_bootstrap

from pilotfish.agent.ports import free_port
from pilotfish.model.authorization import AuthorizationPolicy, Operation, Rule, Source, Values
from pilotfish.model.diagnostics import SourceMap
from pilotfish.model.identity import SDS_CLUSTER_NAME
from pilotfish.model.proxy import ProxyNode, ProxyUpstream
from pilotfish.model.resources import (
    Destination,
    DestinationRule,
    Gateway,
    GatewayServer,
    HTTPRoute,
    L4MatchAttributes,
    MeshConfig,
    Meta,
    Protocol,
    RouteDestination,
    ServicePort,
    Subset,
    TCPRoute,
    TLSRoute,
    VirtualService,
)
from pilotfish.model.security import PeerAuthentication, ServerTLSSettings
from pilotfish.model.services import Endpoint, MeshView, Service
from pilotfish.translate import MeshTranslator

pytestmark = pytest.mark.integration

DB = "db.default.svc.cluster.local"
WEB = "web.default.svc.cluster.local"


def meta(kind: str, name: str) -> Meta:
    return Meta(kind=kind, name=name, namespace="default", source=SourceMap(f"{name}.yaml"))


def to(host: str, subset: str | None = None, weight: int | None = None) -> RouteDestination:
    return RouteDestination(Destination(host, subset), weight)


def tcp_view(folder: Path, gateway_port: int) -> MeshView:
    cert, key = CertificateAuthority("validate").issue(dns="edge.example.com").write(folder, "edge")
    config = MeshConfig(
        peer_authentications=(PeerAuthentication(meta("PeerAuthentication", "p"), "PERMISSIVE"),),
        destination_rules=(
            DestinationRule(
                meta("DestinationRule", "db"),
                "db",
                subsets=(Subset("v1", {"version": "v1"}), Subset("v2", {"version": "v2"})),
            ),
        ),
        virtual_services=(
            VirtualService(
                meta("VirtualService", "db"),
                hosts=("db",),
                tcp=(
                    TCPRoute(
                        match=(L4MatchAttributes(source_labels={"app": "client"}),),
                        route=(to("db", "v1", 90), to("db", "v2", 10)),
                    ),
                ),
            ),
            VirtualService(
                meta("VirtualService", "edge"),
                hosts=("*.example.com",),
                gateways=("edge",),
                http=(HTTPRoute(route=(to("web"),)),),
                tcp=(TCPRoute(route=(to("db"),)),),
                tls=(
                    TLSRoute(
                        match=(L4MatchAttributes(sni_hosts=("db.example.com",)),),
                        route=(to("db", "v1"),),
                    ),
                ),
            ),
        ),
        gateways=(
            Gateway(
                meta("Gateway", "edge"),
                {},
                (
                    GatewayServer(gateway_port, "http", "HTTP", ("*",)),
                    GatewayServer(
                        gateway_port,
                        "https",
                        "HTTP",
                        ("edge.example.com",),
                        tls=ServerTLSSettings("SIMPLE", str(cert), str(key)),
                    ),
                    GatewayServer(gateway_port, "tls", "TLS", ("*",), passthrough=True),
                    GatewayServer(free_port(), "tcp", "TCP", ("*",)),
                ),
            ),
        ),
        authorization_policies=(
            AuthorizationPolicy(
                meta("AuthorizationPolicy", "db"),
                "ALLOW",
                rules=(
                    Rule(sources=(Source(namespaces=Values(("default",))),)),
                    Rule(operations=(Operation(paths=Values(("/x",))),)),
                ),
            ),
            AuthorizationPolicy(
                meta("AuthorizationPolicy", "no-other"),
                "DENY",
                rules=(Rule(sources=(Source(principals=Values(("cluster.local/ns/x/sa/y",))),)),),
            ),
        ),
    )
    services = (
        Service(DB, (ServicePort(5432, "tcp", "TCP"),), short_name="db"),
        Service(WEB, (ServicePort(8080, "http", "AUTO"),), short_name="web"),
    )
    endpoints = {
        DB: (
            Endpoint("127.0.0.1", {5432: 16001}, {"version": "v1"}, service_account="db"),
            Endpoint("127.0.0.1", {5432: 16002}, {"version": "v2"}, service_account="db"),
        ),
        WEB: (Endpoint("127.0.0.1", {8080: 16003}, service_account="web"),),
    }
    return MeshView(config, {s.hostname: s for s in services}, endpoints)


def with_sds(config: dict[str, object]) -> dict[str, object]:
    static = config["static_resources"]
    assert isinstance(static, dict)
    static["clusters"].append(
        {
            "name": SDS_CLUSTER_NAME,
            "type": "STATIC",
            "connect_timeout": "1s",
            "http2_protocol_options": {},
            "load_assignment": {
                "cluster_name": SDS_CLUSTER_NAME,
                "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": "/tmp/sds"}}}}]}
                ],
            },
        }
    )
    return config


@pytest.mark.parametrize("protocol", ["TCP", "AUTO", "TLS"])
def test_envoy_accepts_opaque_sidecars(protocol: Protocol, tmp_path: Path) -> None:
    node = ProxyNode(
        id="client-0",
        service="db",
        labels={"app": "client"},
        outbound_port=free_port(),
        inbound_port=free_port(),
        app_port=free_port(),
        app_protocol=protocol,
        upstreams=(ProxyUpstream(DB, 5432, free_port()), ProxyUpstream(WEB, 8080, free_port())),
    )
    resources = MeshTranslator(tcp_view(tmp_path, free_port())).resources_for(node)
    emitted = str(resources.listeners)
    for expected in ("tcp_proxy", "upstream|5432", "upstream|8080", "envoy.filters.network.rbac"):
        assert expected in emitted, f"the scenario lost {expected}"

    result = envoy_validate(with_sds(static_bootstrap(resources)), tmp_path)

    assert result.returncode == 0, result.stdout


def test_envoy_accepts_a_gateway_with_tcp_and_passthrough(tmp_path: Path) -> None:
    node = ProxyNode(id="ingress-0", kind="gateway")
    resources = MeshTranslator(tcp_view(tmp_path, free_port())).resources_for(node)
    emitted = str(resources.listeners)
    for expected in ("db.example.com", "edge.example.com", "raw_buffer", "tcp_proxy"):
        assert expected in emitted, f"the scenario lost {expected}"
    assert len(resources.listeners) == 2

    result = envoy_validate(with_sds(static_bootstrap(resources)), tmp_path)

    assert result.returncode == 0, result.stdout
