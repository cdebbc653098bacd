"""Mutual TLS in the generated protos: the inbound listener per PeerAuthentication mode, auto
mTLS and DestinationRule TLS on outbound clusters, and the endpoint metadata that picks it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import http_port, mesh_service, meta, view_of
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3.route_components_pb2 import VirtualHost
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from route_simulation import SimulatedRequest, simulate_request

from pilotfish.model.identity import ROOT_CA_SECRET, SDS_CLUSTER_NAME, WORKLOAD_CERT_SECRET
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import (
    Destination,
    DestinationRule,
    Gateway,
    GatewayServer,
    HTTPRoute,
    MeshConfig,
    MeshSettings,
    PortTrafficPolicy,
    RouteDestination,
    Subset,
    TrafficPolicy,
    VirtualService,
    Workload,
)
from pilotfish.model.security import (
    ClientTLSSettings,
    MtlsMode,
    PeerAuthentication,
    ServerTLSSettings,
)
from pilotfish.model.services import Endpoint, MeshView
from pilotfish.translate.clusters import build_outbound_clusters
from pilotfish.translate.endpoints import build_load_assignments
from pilotfish.translate.listeners import build_gateway_listeners, build_inbound_listener
from pilotfish.translate.routes import build_gateway_route_configs
from pilotfish.translate.tls_contexts import SYSTEM_CA_BUNDLE, TLS_SOCKET

BACKEND = "backend.default.svc.cluster.local"
CLUSTER = f"outbound|8080||{BACKEND}"

SIDECAR = ProxyNode(
    id="backend-0",
    service="backend",
    labels={"app": "backend"},
    outbound_port=15001,
    inbound_port=15006,
    app_port=8080,
)


def peer(
    mode: MtlsMode, *, selector: bool = False, ports: dict[int, MtlsMode] | None = None
) -> PeerAuthentication:
    return PeerAuthentication(
        meta("PeerAuthentication", "p"),
        mode,
        {"app": "backend"} if selector else {},
        ports or {},
    )


def view(
    *policies: PeerAuthentication,
    rules: tuple[DestinationRule, ...] = (),
    endpoints: tuple[Endpoint, ...] | None = None,
    protocol: str = "HTTP",
) -> MeshView:
    if endpoints is None:
        endpoints = (
            Endpoint("127.0.0.1", {8080: 16006}, {"version": "v1"}, service_account="backend"),
            Endpoint("127.0.0.1", {8080: 17006}, {"version": "v2"}, service_account="backend-v2"),
            Endpoint("127.0.0.2", {8080: 8080}, {"version": "v1"}),
        )
    config = MeshConfig(
        peer_authentications=policies,
        destination_rules=rules,
        mesh=MeshSettings(trust_domain="example.org"),
    )
    return view_of(config, mesh_service("backend", http_port(8080, protocol)), backend=endpoints)


def inbound(mesh: MeshView, node: ProxyNode = SIDECAR) -> listener_pb2.Listener:
    listener = build_inbound_listener(mesh, node)
    assert listener is not None
    return listener


def manager_of(chain: object) -> hcm_pb2.HttpConnectionManager:
    manager = hcm_pb2.HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(manager)  # type: ignore[attr-defined]
    return manager


def downstream(chain: object) -> tls_pb2.DownstreamTlsContext:
    context = tls_pb2.DownstreamTlsContext()
    assert chain.transport_socket.name == TLS_SOCKET  # type: ignore[attr-defined]
    chain.transport_socket.typed_config.Unpack(context)  # type: ignore[attr-defined]
    return context


def upstream(socket: object) -> tls_pb2.UpstreamTlsContext:
    context = tls_pb2.UpstreamTlsContext()
    assert socket.name == TLS_SOCKET  # type: ignore[attr-defined]
    socket.typed_config.Unpack(context)  # type: ignore[attr-defined]
    return context


def cluster(mesh: MeshView, name: str = CLUSTER) -> cluster_pb2.Cluster:
    return next(c for c in build_outbound_clusters(mesh) if c.name == name)


def san_uris(context: tls_pb2.UpstreamTlsContext) -> list[str]:
    validation = context.common_tls_context.combined_validation_context.default_validation_context
    assert all(
        m.san_type == common_pb2.SubjectAltNameMatcher.URI
        for m in validation.match_typed_subject_alt_names
    )
    return [m.matcher.exact for m in validation.match_typed_subject_alt_names]


# --- inbound ----------------------------------------------------------------------------------


def test_default_is_permissive_tls_and_plaintext_told_apart_by_the_inspector() -> None:
    listener = inbound(view())
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    mtls, plaintext = listener.filter_chains
    assert mtls.filter_chain_match.transport_protocol == "tls"
    assert plaintext.filter_chain_match.transport_protocol == "raw_buffer"
    assert not plaintext.HasField("transport_socket")
    assert downstream(mtls).require_client_certificate.value
    assert (
        manager_of(plaintext).forward_client_cert_details == hcm_pb2.HttpConnectionManager.SANITIZE
    )


def test_strict_is_one_mtls_chain_that_takes_every_connection() -> None:
    listener = inbound(view(peer("STRICT")))
    (chain,) = listener.filter_chains
    assert not chain.HasField("filter_chain_match")
    assert not listener.listener_filters
    assert listener.stat_prefix == "inbound"
    context = downstream(chain)
    assert context.require_client_certificate.value
    common = context.common_tls_context
    assert list(common.alpn_protocols) == ["h2", "http/1.1"]
    assert common.tls_params.tls_minimum_protocol_version == common_pb2.TlsParameters.TLSv1_2
    (cert,) = common.tls_certificate_sds_secret_configs
    assert cert.name == WORKLOAD_CERT_SECRET
    grpc = cert.sds_config.api_config_source.grpc_services[0]
    assert grpc.envoy_grpc.cluster_name == SDS_CLUSTER_NAME
    roots = common.combined_validation_context.validation_context_sds_secret_config
    assert roots.name == ROOT_CA_SECRET
    manager = manager_of(chain)
    assert manager.forward_client_cert_details == hcm_pb2.HttpConnectionManager.SANITIZE_SET
    assert manager.set_current_client_cert_details.uri


def test_disable_is_plaintext_only() -> None:
    listener = inbound(view(peer("DISABLE")))
    (chain,) = listener.filter_chains
    assert not chain.HasField("transport_socket")
    assert not listener.listener_filters
    assert manager_of(chain).forward_client_cert_details == hcm_pb2.HttpConnectionManager.SANITIZE


def test_port_level_mtls_of_the_app_port_wins() -> None:
    policies = (
        peer("STRICT"),
        replace(peer("UNSET", selector=True, ports={8080: "DISABLE"}), meta=meta("X", "w")),
    )
    (chain,) = inbound(view(*policies)).filter_chains
    assert not chain.HasField("transport_socket")
    other_port = replace(SIDECAR, app_port=9090)
    (chain,) = inbound(view(*policies), other_port).filter_chains
    assert chain.HasField("transport_socket")


def test_a_workload_policy_for_other_labels_does_not_apply() -> None:
    other = replace(SIDECAR, labels={"app": "frontend"})
    assert len(inbound(view(peer("STRICT", selector=True)), other).filter_chains) == 2


# --- outbound: auto mTLS ----------------------------------------------------------------------


def test_auto_mtls_for_sidecar_endpoints_and_plaintext_for_the_others() -> None:
    built = cluster(view())
    assert not built.HasField("transport_socket")
    istio, disabled = built.transport_socket_matches
    assert dict(istio.match) == {"tlsMode": "istio"}
    assert not disabled.HasField("match") or not dict(disabled.match)
    assert disabled.transport_socket.name == "envoy.transport_sockets.raw_buffer"
    context = upstream(istio.transport_socket)
    assert context.sni == f"outbound_.8080_._.{BACKEND}"
    assert list(context.common_tls_context.alpn_protocols) == ["http/1.1"]
    assert san_uris(context) == [
        "spiffe://example.org/ns/default/sa/backend",
        "spiffe://example.org/ns/default/sa/backend-v2",
    ]
    common = context.common_tls_context
    assert common.tls_certificate_sds_secret_configs[0].name == WORKLOAD_CERT_SECRET
    roots = common.combined_validation_context.validation_context_sds_secret_config
    assert roots.name == ROOT_CA_SECRET


def test_endpoints_carry_the_metadata_the_match_picks() -> None:
    assignment = next(a for a in build_load_assignments(view()) if a.cluster_name == CLUSTER)
    marked = [
        dict(e.metadata.filter_metadata["envoy.transport_socket_match"])
        if "envoy.transport_socket_match" in e.metadata.filter_metadata
        else {}
        for e in assignment.endpoints[0].lb_endpoints
    ]
    assert marked == [{"tlsMode": "istio"}, {"tlsMode": "istio"}, {}]


def test_no_sidecar_endpoints_no_tls_at_all() -> None:
    built = cluster(view(endpoints=(Endpoint("127.0.0.2", {8080: 8080}),)))
    assert not built.transport_socket_matches
    assert not built.HasField("transport_socket")


def test_http2_ports_offer_h2_and_subsets_name_themselves_in_sni() -> None:
    rule = DestinationRule(meta("DestinationRule", "b"), "backend", subsets=(Subset("v1", {}),))
    built = cluster(view(rules=(rule,), protocol="GRPC"), f"outbound|8080|v1|{BACKEND}")
    context = upstream(built.transport_socket_matches[0].transport_socket)
    assert list(context.common_tls_context.alpn_protocols) == ["h2"]
    assert context.sni == f"outbound_.8080_.v1_.{BACKEND}"


# --- outbound: DestinationRule tls -------------------------------------------------------------


def rule_with(
    tls: ClientTLSSettings | None = None,
    *,
    port_tls: dict[int, ClientTLSSettings] | None = None,
    subset_tls: ClientTLSSettings | None = None,
) -> DestinationRule:
    return DestinationRule(
        meta("DestinationRule", "b"),
        "backend",
        traffic_policy=TrafficPolicy(
            tls=tls,
            port_settings={
                port: PortTrafficPolicy(tls=settings) for port, settings in (port_tls or {}).items()
            },
        ),
        subsets=(Subset("v1", {"version": "v1"}, TrafficPolicy(tls=subset_tls)),),
    )


def test_disable_turns_auto_mtls_off() -> None:
    built = cluster(view(rules=(rule_with(ClientTLSSettings("DISABLE")),)))
    assert not built.transport_socket_matches
    assert not built.HasField("transport_socket")


def test_istio_mutual_forces_mesh_mtls_on_every_endpoint() -> None:
    settings = ClientTLSSettings("ISTIO_MUTUAL", sni="custom", subject_alt_names=("spiffe://x/y",))
    built = cluster(view(rules=(rule_with(settings),)))
    assert not built.transport_socket_matches
    context = upstream(built.transport_socket)
    assert context.sni == "custom"
    assert san_uris(context) == ["spiffe://x/y"]
    assert context.common_tls_context.tls_certificate_sds_secret_configs[0].name == "default"


def test_simple_and_mutual_use_files() -> None:
    mutual = ClientTLSSettings(
        "MUTUAL",
        ca_certificates="/certs/ca.pem",
        client_certificate="/certs/client.pem",
        private_key="/certs/key.pem",
        subject_alt_names=("api.example.com",),
    )
    context = upstream(cluster(view(rules=(rule_with(mutual),))).transport_socket)
    common = context.common_tls_context
    assert common.tls_certificates[0].certificate_chain.filename == "/certs/client.pem"
    assert common.tls_certificates[0].private_key.filename == "/certs/key.pem"
    assert common.validation_context.trusted_ca.filename == "/certs/ca.pem"
    (san,) = common.validation_context.match_typed_subject_alt_names
    assert san.san_type == common_pb2.SubjectAltNameMatcher.DNS
    assert context.sni == BACKEND
    assert not common.tls_certificate_sds_secret_configs

    simple = ClientTLSSettings("SIMPLE", sni="api.example.com")
    context = upstream(cluster(view(rules=(rule_with(simple),))).transport_socket)
    assert not context.common_tls_context.tls_certificates
    assert context.common_tls_context.validation_context.trusted_ca.filename == SYSTEM_CA_BUNDLE
    assert context.sni == "api.example.com"
    # No subjectAltNames: the server must still hold a certificate for the name asked for.
    (san,) = context.common_tls_context.validation_context.match_typed_subject_alt_names
    assert (san.san_type, san.matcher.exact) == (
        common_pb2.SubjectAltNameMatcher.DNS,
        "api.example.com",
    )

    skip = ClientTLSSettings("SIMPLE", insecure_skip_verify=True)
    context = upstream(cluster(view(rules=(rule_with(skip),))).transport_socket)
    assert not context.common_tls_context.HasField("validation_context")


@pytest.mark.parametrize(
    ("cluster_name", "expected"),
    [
        (CLUSTER, "port"),  # the rule's port-level setting beats its own tls
        (f"outbound|8080|v1|{BACKEND}", "subset"),  # the subset's beats both
    ],
)
def test_the_narrowest_tls_setting_wins(cluster_name: str, expected: str) -> None:
    rule = rule_with(
        ClientTLSSettings("DISABLE"),
        port_tls={8080: ClientTLSSettings("ISTIO_MUTUAL", sni="port")},
        subset_tls=ClientTLSSettings("ISTIO_MUTUAL", sni="subset"),
    )
    assert upstream(cluster(view(rules=(rule,)), cluster_name).transport_socket).sni == expected


def test_port_level_tls_for_another_port_leaves_the_rule_setting() -> None:
    rule = rule_with(
        ClientTLSSettings("DISABLE"), port_tls={9999: ClientTLSSettings("ISTIO_MUTUAL")}
    )
    built = cluster(view(rules=(rule,)))
    assert not built.HasField("transport_socket")
    assert not built.transport_socket_matches


# --- gateway ----------------------------------------------------------------------------------

GATEWAY_NODE = ProxyNode(id="ingress-0", kind="gateway")


def gateway_view(*servers: GatewayServer) -> MeshView:
    config = MeshConfig(
        gateways=(Gateway(meta("Gateway", "web"), {}, servers),),
        virtual_services=(
            VirtualService(
                meta("VirtualService", "site"),
                hosts=("*",),
                gateways=("web",),
                http=(HTTPRoute(route=(RouteDestination(Destination("backend")),)),),
            ),
        ),
    )
    return view_of(config, mesh_service("backend", http_port(8080)))


def test_https_servers_sharing_a_port_get_one_chain_each_by_sni() -> None:
    a = ServerTLSSettings("SIMPLE", "/c/a.pem", "/c/a-key.pem", min_protocol_version="TLSV1_3")
    b = ServerTLSSettings("MUTUAL", "/c/b.pem", "/c/b-key.pem", "/c/ca.pem")
    (listener,) = build_gateway_listeners(
        gateway_view(
            GatewayServer(443, "a", "HTTP", ("a.example.com",), tls=a),
            GatewayServer(443, "b", "HTTP", ("ns/b.example.com", "a.example.com"), tls=b),
        ),
        GATEWAY_NODE,
    )
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    first, second = listener.filter_chains
    assert list(first.filter_chain_match.server_names) == ["a.example.com"]
    assert list(second.filter_chain_match.server_names) == ["b.example.com"]
    simple, mutual = downstream(first), downstream(second)
    assert simple.common_tls_context.tls_certificates[0].certificate_chain.filename == "/c/a.pem"
    assert not simple.require_client_certificate.value
    versions = simple.common_tls_context.tls_params
    assert versions.tls_minimum_protocol_version == common_pb2.TlsParameters.TLSv1_3
    params = mutual.common_tls_context.tls_params
    assert params.tls_minimum_protocol_version == common_pb2.TlsParameters.TLSv1_2
    assert mutual.require_client_certificate.value
    assert mutual.common_tls_context.validation_context.trusted_ca.filename == "/c/ca.pem"


def test_https_redirect_requires_tls_on_the_servers_virtual_hosts() -> None:
    plain = gateway_view(GatewayServer(80, "http", "HTTP", ("*",)))
    redirect = gateway_view(GatewayServer(80, "http", "HTTP", ("*",), https_redirect=True))
    (route,) = build_gateway_route_configs(plain, GATEWAY_NODE)
    assert route.virtual_hosts[0].require_tls == VirtualHost.NONE
    (route,) = build_gateway_route_configs(redirect, GATEWAY_NODE)
    assert route.virtual_hosts[0].require_tls == VirtualHost.ALL
    (listener,) = build_gateway_listeners(redirect, GATEWAY_NODE)
    assert not listener.filter_chains[0].HasField("transport_socket")


SIMPLE = ServerTLSSettings("SIMPLE", "/c/www.pem", "/c/www-key.pem")
MUTUAL = ServerTLSSettings("MUTUAL", "/c/secure.pem", "/c/secure-key.pem", "/c/clients.pem")


def shared_port_view() -> MeshView:
    """Port 443: a MUTUAL server, a SIMPLE one and a plaintext one, each with its own host."""
    hosts = ("secure.example.com", "www.example.com", "plain.example.com")
    config = MeshConfig(
        gateways=(
            Gateway(
                meta("Gateway", "web"),
                {},
                (
                    GatewayServer(443, "secure", "HTTP", (hosts[0],), tls=MUTUAL),
                    GatewayServer(443, "www", "HTTP", (hosts[1],), tls=SIMPLE),
                    GatewayServer(443, "plain", "HTTP", (hosts[2],)),
                ),
            ),
        ),
        virtual_services=tuple(
            VirtualService(
                meta("VirtualService", host.split(".")[0]),
                hosts=(host,),
                gateways=("web",),
                http=(HTTPRoute(route=(RouteDestination(Destination(host.split(".")[0])),)),),
            )
            for host in hosts
        ),
    )
    services = (mesh_service(name, http_port(8080)) for name in ("secure", "www", "plain"))
    return view_of(config, *services)


def test_each_gateway_chain_reads_a_route_config_with_only_its_servers_hosts() -> None:
    edge = shared_port_view()
    (listener,) = build_gateway_listeners(edge, GATEWAY_NODE)
    chains = {
        chain.name: manager_of(chain).rds.route_config_name for chain in listener.filter_chains
    }
    assert chains == {
        "gateway_443-secure": "https.443.default/web.0",
        "gateway_443-www": "https.443.default/web.1",
        "gateway_443-plaintext": "http.443",
    }
    configs = {c.name: c for c in build_gateway_route_configs(edge, GATEWAY_NODE)}
    assert set(configs) == set(chains.values())

    def reaches(route_config: str, host: str) -> tuple[str, ...] | int | None:
        outcome = simulate_request(configs[route_config], SimulatedRequest(host))
        return outcome.cluster_names or outcome.status

    secure = ("outbound|8080||secure.default.svc.cluster.local",)
    www = ("outbound|8080||www.default.svc.cluster.local",)
    assert reaches("https.443.default/web.0", "secure.example.com") == secure
    assert reaches("https.443.default/web.1", "www.example.com") == www
    # A client without a certificate passed the SIMPLE server's handshake (SNI www) and
    # asks for the MUTUAL server's host: no route. Plaintext never reaches TLS hosts.
    assert reaches("https.443.default/web.1", "secure.example.com") == 404
    assert reaches("http.443", "secure.example.com") == 404
    assert reaches("http.443", "www.example.com") == 404
    assert reaches("https.443.default/web.0", "plain.example.com") == 404


def test_a_tls_server_left_without_sni_names_gets_no_chain_and_no_route_config() -> None:
    edge = gateway_view(
        GatewayServer(443, "a", "HTTP", ("a.example.com",), tls=SIMPLE),
        GatewayServer(443, "b", "HTTP", ("a.example.com",), tls=MUTUAL),
    )
    (listener,) = build_gateway_listeners(edge, GATEWAY_NODE)
    assert [manager_of(c).rds.route_config_name for c in listener.filter_chains] == [
        "https.443.default/web.0"
    ]
    names = [c.name for c in build_gateway_route_configs(edge, GATEWAY_NODE)]
    assert names == ["https.443.default/web.0"]


def test_the_gateway_takes_the_client_address_from_the_connection_not_x_forwarded_for() -> None:
    edge = gateway_view(
        GatewayServer(443, "a", "HTTP", ("a.example.com",), tls=SIMPLE),
        GatewayServer(443, "plain", "HTTP", ("*",)),
        GatewayServer(80, "http", "HTTP", ("*",)),
    )
    managers = [
        manager_of(chain)
        for listener in build_gateway_listeners(edge, GATEWAY_NODE)
        for chain in listener.filter_chains
    ]
    assert len(managers) == 3
    for manager in managers:
        assert manager.use_remote_address.value
        assert manager.xff_num_trusted_hops == 0
    # Sidecars keep Istio's default: their caller is the mesh's previous hop.
    for chain in inbound(view(peer("PERMISSIVE"))).filter_chains:
        assert not manager_of(chain).HasField("use_remote_address")


def test_port_level_mtls_names_the_workloads_declared_port_not_the_apps_free_one() -> None:
    workload = Workload(
        meta("Workload", "backend"), "backend", 8080, ("app",), labels={"app": "backend"}
    )
    policy = replace(peer("STRICT", selector=True, ports={8080: "DISABLE"}), meta=meta("X", "w"))
    mesh = view(policy)
    mesh = replace(mesh, config=replace(mesh.config, workloads=(workload,)))
    # The runner started the app on a port of its own choosing.
    (chain,) = inbound(mesh, replace(SIDECAR, app_port=31234)).filter_chains
    assert not chain.HasField("transport_socket")
    other_service = replace(SIDECAR, app_port=31234, service="frontend")
    (chain,) = inbound(mesh, other_service).filter_chains
    assert chain.HasField("transport_socket")


def mesh_wide(mode: MtlsMode) -> PeerAuthentication:
    return PeerAuthentication(meta("PeerAuthentication", "mesh", "istio-system"), mode, {}, {})


@pytest.mark.parametrize(
    ("policies", "mtls"),
    [
        ((peer("DISABLE"),), False),  # the namespace's
        ((mesh_wide("DISABLE"),), False),
        ((mesh_wide("STRICT"), peer("DISABLE")), False),  # the namespace's wins
        ((mesh_wide("DISABLE"), peer("PERMISSIVE")), True),
        ((mesh_wide("DISABLE"), peer("UNSET")), False),  # inherits the mesh's
        # Istio infers from the policies without a selector only: a workload's DISABLE
        # needs a DestinationRule as well.
        ((peer("DISABLE", selector=True),), True),
    ],
)
def test_auto_mtls_infers_the_servers_mode_from_mesh_and_namespace_policies(
    policies: tuple[PeerAuthentication, ...], mtls: bool
) -> None:
    built = cluster(view(*policies))
    assert bool(built.transport_socket_matches) is mtls
    assert not built.HasField("transport_socket")
