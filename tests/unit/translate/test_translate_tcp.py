"""TCP and TLS in the generated protos: tcp routes, opaque clusters, the inbound listener's TCP
chains and protocol detection, upstream ports, gateway TCP and TLS passthrough servers, and
AuthorizationPolicies as network RBAC on a TCP port."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from conftest import http_port, mesh_service, meta, to, view_of
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from pilotfish.model.authorization import (
    AuthorizationPolicy,
    Operation,
    Rule,
    Source,
    Values,
)
from pilotfish.model.proxy import ProxyNode, ProxyUpstream
from pilotfish.model.resources import (
    DestinationRule,
    Gateway,
    GatewayServer,
    HTTPMatchRequest,
    HTTPRoute,
    L4MatchAttributes,
    MeshConfig,
    Protocol,
    StringMatch,
    Subset,
    TCPRoute,
    TLSRoute,
    VirtualService,
)
from pilotfish.model.security import MtlsMode, PeerAuthentication
from pilotfish.model.services import Endpoint, MeshView
from pilotfish.translate.clusters import (
    HTTP_PROTOCOL_OPTIONS_KEY,
    build_inbound_cluster,
    build_outbound_clusters,
)
from pilotfish.translate.listeners import (
    build_gateway_listeners,
    build_inbound_listener,
    build_upstream_listeners,
)
from pilotfish.translate.tcp_listeners import (
    HTTP_INSPECTOR_NAME,
    NETWORK_RBAC_FILTER_NAME,
    TLS_INSPECTOR_NAME,
)
from pilotfish.translate.tcp_proxy import WeightedCluster
from pilotfish.translate.tcp_routes import tcp_destinations

DB = "db.default.svc.cluster.local"
WEB = "web.default.svc.cluster.local"
V1, V2 = f"outbound|5432|v1|{DB}", f"outbound|5432|v2|{DB}"

CLIENT = ProxyNode(
    id="client-0",
    service="client",
    labels={"app": "client"},
    outbound_port=15001,
    inbound_port=15006,
    app_port=9000,
    upstreams=(ProxyUpstream(DB, 5432, 25432), ProxyUpstream(WEB, 8080, 28080)),
)
GATEWAY = ProxyNode(id="gw-0", kind="gateway", labels={"istio": "ingressgateway"})


def db_service(tcp: Sequence[TCPRoute] = (), **config: object) -> MeshView:
    virtual_services = (
        (VirtualService(meta("VirtualService", "db"), hosts=("db",), tcp=tuple(tcp)),)
        if tcp
        else ()
    )
    return view_of(
        MeshConfig(
            virtual_services=virtual_services,
            destination_rules=(
                DestinationRule(
                    meta("DestinationRule", "db"),
                    host="db",
                    subsets=(Subset("v1", {"version": "v1"}), Subset("v2", {"version": "v2"})),
                ),
            ),
            **config,  # type: ignore[arg-type]
        ),
        mesh_service("db", http_port(5432, "TCP")),
        db=(
            Endpoint("127.0.0.1", {5432: 16001}, {"version": "v1"}, service_account="db"),
            Endpoint("127.0.0.1", {5432: 16002}, {"version": "v2"}, service_account="db"),
        ),
    )


SPLIT = TCPRoute(route=(to("db", "v1", 75), to("db", "v2", 25)))


def test_without_a_tcp_route_the_ports_own_cluster() -> None:
    assert tcp_destinations(db_service(), CLIENT, DB, 5432) == (
        WeightedCluster(f"outbound|5432||{DB}"),
    )


def test_the_first_tcp_route_that_applies_decides() -> None:
    only_others = TCPRoute(
        match=(L4MatchAttributes(source_labels={"app": "other"}),), route=(to("db", "v2"),)
    )
    wrong_port = TCPRoute(match=(L4MatchAttributes(port=1234),), route=(to("db", "v2"),))
    subnet = TCPRoute(
        match=(L4MatchAttributes(destination_subnets=("10.0.0.0/8",)),), route=(to("db", "v2"),)
    )
    gateway_only = TCPRoute(match=(L4MatchAttributes(gateways=("edge",)),), route=(to("db", "v2"),))
    view = db_service([only_others, wrong_port, subnet, gateway_only, SPLIT])
    assert tcp_destinations(view, CLIENT, DB, 5432) == (
        WeightedCluster(V1, 75),
        WeightedCluster(V2, 25),
    )
    mine = TCPRoute(
        match=(L4MatchAttributes(port=5432, source_labels={"app": "client"}, gateways=("mesh",)),),
        route=(to("db", "v2"),),
    )
    assert tcp_destinations(db_service([mine, SPLIT]), CLIENT, DB, 5432) == (WeightedCluster(V2),)


def test_a_zero_weight_destination_gets_nothing() -> None:
    route = TCPRoute(route=(to("db", "v1", 100), to("db", "v2", 0)))
    assert tcp_destinations(db_service([route]), CLIENT, DB, 5432) == (WeightedCluster(V1, 100),)


def test_opaque_clusters_carry_no_http_and_offer_no_alpn() -> None:
    clusters = {c.name: c for c in build_outbound_clusters(db_service())}
    cluster = clusters[f"outbound|5432||{DB}"]
    assert HTTP_PROTOCOL_OPTIONS_KEY not in cluster.typed_extension_protocol_options
    # Auto mTLS to the sidecar-served endpoints, as for HTTP.
    (match,) = [m for m in cluster.transport_socket_matches if m.name == "tlsMode-istio"]
    mesh = tls_pb2.UpstreamTlsContext()
    match.transport_socket.typed_config.Unpack(mesh)
    assert list(mesh.common_tls_context.alpn_protocols) == []
    assert mesh.sni == f"outbound_.5432_._.{DB}"


def test_an_auto_port_keeps_each_requests_protocol() -> None:
    view = view_of(MeshConfig(), mesh_service("web", http_port(8080, "AUTO")))
    (cluster,) = build_outbound_clusters(view)
    assert cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY].value
    options = http_protocol_options_pb2.HttpProtocolOptions()
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY].Unpack(options)
    assert options.HasField("use_downstream_protocol_config")
    inbound = build_inbound_cluster(replace(CLIENT, app_protocol="AUTO"))
    assert inbound is not None
    inbound.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY].Unpack(options)
    assert options.HasField("use_downstream_protocol_config")
    tcp_inbound = build_inbound_cluster(replace(CLIENT, app_protocol="TCP"))
    assert tcp_inbound is not None
    assert HTTP_PROTOCOL_OPTIONS_KEY not in tcp_inbound.typed_extension_protocol_options


# --- inbound --------------------------------------------------------------------------------------


def server(protocol: Protocol) -> ProxyNode:
    return ProxyNode(
        id="db-0",
        service="db",
        labels={"version": "v1"},
        inbound_port=16001,
        app_port=5999,
        app_protocol=protocol,
    )


def inbound(
    protocol: Protocol, mode: MtlsMode | None = None, **config: object
) -> listener_pb2.Listener:
    policies = (PeerAuthentication(meta("PeerAuthentication", "p"), mode),) if mode else ()
    view = db_service(peer_authentications=policies, **config)
    listener = build_inbound_listener(view, server(protocol))
    assert listener is not None
    return listener


def tcp_proxy_of(chain: listener_components_pb2.FilterChain) -> tcp_proxy_pb2.TcpProxy:
    proxy = tcp_proxy_pb2.TcpProxy()
    assert chain.filters[-1].name == "envoy.filters.network.tcp_proxy"
    chain.filters[-1].typed_config.Unpack(proxy)
    return proxy


def chains_of(listener: listener_pb2.Listener) -> dict[str, listener_components_pb2.FilterChain]:
    return {chain.name: chain for chain in listener.filter_chains}


def test_a_tcp_app_gets_tcp_proxy_chains_by_mtls_mode() -> None:
    strict = inbound("TCP", "STRICT")
    (chain,) = strict.filter_chains
    assert chain.name == "inbound-mtls-tcp" and chain.HasField("transport_socket")
    assert tcp_proxy_of(chain).cluster == "inbound|5999||"
    assert not strict.listener_filters
    permissive = inbound("TCP")
    assert [c.name for c in permissive.filter_chains] == [
        "inbound-mtls-tcp",
        "inbound-plaintext-tcp",
    ]
    assert [c.filter_chain_match.transport_protocol for c in permissive.filter_chains] == [
        "tls",
        "raw_buffer",
    ]
    assert [f.name for f in permissive.listener_filters] == [TLS_INSPECTOR_NAME]
    (plain,) = inbound("TLS", "DISABLE").filter_chains
    assert plain.name == "inbound-plaintext-tcp" and not plain.HasField("transport_socket")


def test_an_auto_port_detects_http_and_carries_the_rest_as_tcp() -> None:
    listener = inbound("AUTO")
    chains = chains_of(listener)
    assert set(chains) == {
        "inbound-mtls",
        "inbound-plaintext",
        "inbound-mtls-tcp",
        "inbound-plaintext-tcp",
    }
    assert list(chains["inbound-mtls"].filter_chain_match.application_protocols) == [
        "h2",
        "http/1.1",
    ]
    assert list(chains["inbound-plaintext"].filter_chain_match.application_protocols) == [
        "http/1.1",
        "h2c",
    ]
    assert chains["inbound-mtls"].filters[0].name == "envoy.filters.network.http_connection_manager"
    assert not chains["inbound-mtls-tcp"].filter_chain_match.application_protocols
    assert [f.name for f in listener.listener_filters] == [TLS_INSPECTOR_NAME, HTTP_INSPECTOR_NAME]
    assert listener.continue_on_listener_filters_timeout
    strict = inbound("AUTO", "STRICT")
    assert {c.name for c in strict.filter_chains} == {"inbound-mtls", "inbound-mtls-tcp"}
    # Both under "tls", or Envoy, narrowing by transport first, would never reach the TCP one.
    assert {c.filter_chain_match.transport_protocol for c in strict.filter_chains} == {"tls"}
    # The TLS inspector reads the ALPN that tells HTTP from TCP inside mTLS.
    assert [f.name for f in strict.listener_filters] == [TLS_INSPECTOR_NAME]


def rbac_of(chain: listener_components_pb2.FilterChain) -> list[network_rbac_pb2.RBAC]:
    found = []
    for network_filter in chain.filters:
        if network_filter.name == NETWORK_RBAC_FILTER_NAME:
            config = network_rbac_pb2.RBAC()
            network_filter.typed_config.Unpack(config)
            found.append(config)
    return found


def test_authorization_on_a_tcp_port_keeps_only_what_a_connection_shows() -> None:
    allow_http = AuthorizationPolicy(
        meta("AuthorizationPolicy", "allow"),
        "ALLOW",
        rules=(
            Rule(operations=(Operation(paths=Values(("/admin",))),)),
            Rule(sources=(Source(namespaces=Values(("default",))),)),
        ),
    )
    deny_http = AuthorizationPolicy(
        meta("AuthorizationPolicy", "deny"),
        "DENY",
        rules=(
            Rule(
                sources=(Source(namespaces=Values(("other",))),),
                operations=(Operation(methods=Values(("GET",))),),
            ),
        ),
    )
    listener = inbound("TCP", "STRICT", authorization_policies=(allow_http, deny_http))
    deny, allow = rbac_of(listener.filter_chains[0])
    # The ALLOW rule on paths can never match a connection: only the namespace rule is left.
    assert list(allow.rules.policies) == ["default/allow:rules[1]"]
    # The DENY rule keeps its source and drops the method, so it refuses more, never less.
    (policy,) = deny.rules.policies.values()
    assert "GET" not in str(policy) and "other" in str(policy)


# --- upstream ports -------------------------------------------------------------------------------


def upstream_view() -> MeshView:
    web_routes = VirtualService(
        meta("VirtualService", "web"),
        hosts=("web",),
        http=(
            HTTPRoute(
                match=(HTTPMatchRequest(headers={"x-v": StringMatch("exact", "2")}),),
                route=(to("db"),),
            ),
            HTTPRoute(route=(to("web"),)),
        ),
    )
    base = db_service([SPLIT])
    return view_of(
        replace(base.config, virtual_services=(*base.config.virtual_services, web_routes)),
        *base.services.values(),
        mesh_service("web", http_port(8080)),
    )


def test_upstream_ports_are_tcp_proxies_or_connection_managers_by_protocol() -> None:
    listeners = {item.name: item for item in build_upstream_listeners(upstream_view(), CLIENT)}
    tcp = listeners[f"upstream|5432|{DB}"]
    assert tcp.address.socket_address.port_value == 25432
    proxy = tcp_proxy_of(tcp.filter_chains[0])
    assert [(c.name, c.weight) for c in proxy.weighted_clusters.clusters] == [(V1, 75), (V2, 25)]
    http = listeners[f"upstream|8080|{WEB}"]
    assert http.address.socket_address.port_value == 28080
    manager = hcm_pb2.HttpConnectionManager()
    http.filter_chains[0].filters[0].typed_config.Unpack(manager)
    (virtual_host,) = manager.route_config.virtual_hosts
    assert list(virtual_host.domains) == ["*"]
    assert [r.route.cluster for r in virtual_host.routes] == [
        f"outbound|5432||{DB}",
        f"outbound|8080||{WEB}",
    ]


def test_an_auto_upstream_port_detects_http_for_its_routes_and_carries_the_rest() -> None:
    base = upstream_view()
    view = view_of(base.config, base.services[DB], mesh_service("web", http_port(8080, "AUTO")))
    listeners = {item.name: item for item in build_upstream_listeners(view, CLIENT)}
    auto = listeners[f"upstream|8080|{WEB}"]
    assert [f.name for f in auto.listener_filters] == [HTTP_INSPECTOR_NAME]
    assert auto.continue_on_listener_filters_timeout
    opaque, http = auto.filter_chains
    assert not opaque.filter_chain_match.application_protocols
    assert tcp_proxy_of(opaque).cluster == f"outbound|8080||{WEB}"
    assert list(http.filter_chain_match.application_protocols) == ["http/1.1", "h2c"]
    manager = hcm_pb2.HttpConnectionManager()
    http.filters[0].typed_config.Unpack(manager)
    (virtual_host,) = manager.route_config.virtual_hosts
    assert list(virtual_host.domains) == ["*"]
    assert [r.route.cluster for r in virtual_host.routes] == [
        f"outbound|5432||{DB}",
        f"outbound|8080||{WEB}",
    ]
    # A route's fault or CORS acts only through its filter.
    assert {"envoy.filters.http.fault", "envoy.filters.http.cors"} <= {
        f.name for f in manager.http_filters
    }
    # The TCP port next to it has nothing to detect.
    assert not listeners[f"upstream|5432|{DB}"].listener_filters


def test_an_upstream_to_an_unknown_port_gets_no_listener() -> None:
    node = replace(CLIENT, upstreams=(ProxyUpstream(DB, 1111, 25000),))
    assert build_upstream_listeners(upstream_view(), node) == ()


# --- gateways -------------------------------------------------------------------------------------


def gateway_view(
    *servers: GatewayServer, tls: Sequence[TLSRoute] = (), tcp: Sequence[TCPRoute] = ()
) -> MeshView:
    base = db_service()
    config = replace(
        base.config,
        gateways=(Gateway(meta("Gateway", "edge"), {"istio": "ingressgateway"}, servers),),
        virtual_services=(
            VirtualService(
                meta("VirtualService", "edge"),
                hosts=("*.example.com",),
                gateways=("edge",),
                tls=tuple(tls),
                tcp=tuple(tcp),
                http=(HTTPRoute(route=(to("db"),)),),
            ),
        ),
    )
    return view_of(config, *base.services.values())


def sni(*names: str) -> L4MatchAttributes:
    return L4MatchAttributes(sni_hosts=names)


def test_a_gateway_tcp_server_proxies_to_its_tcp_route() -> None:
    view = gateway_view(GatewayServer(9000, "tcp", "TCP", ("*",)), tcp=[SPLIT])
    (listener,) = build_gateway_listeners(view, GATEWAY)
    assert listener.name == "gateway_9000"
    proxy = tcp_proxy_of(listener.filter_chains[0])
    assert [c.name for c in proxy.weighted_clusters.clusters] == [V1, V2]
    # No route bound: nothing listens.
    assert (
        build_gateway_listeners(gateway_view(GatewayServer(9000, "tcp", "TCP", ("*",))), GATEWAY)
        == ()
    )


def test_passthrough_chains_by_sni_beside_plaintext_http_on_one_port() -> None:
    routes = [
        TLSRoute(match=(sni("a.example.com"),), route=(to("db", "v1"),)),
        # a.example.com is taken by the first route; b goes on.
        TLSRoute(match=(sni("a.example.com", "b.example.com"),), route=(to("db", "v2"),)),
    ]
    view = gateway_view(
        GatewayServer(8443, "http", "HTTP", ("*",)),
        GatewayServer(8443, "tls", "TLS", ("*.example.com",), passthrough=True),
        tls=routes,
    )
    (listener,) = build_gateway_listeners(view, GATEWAY)
    assert [f.name for f in listener.listener_filters] == [TLS_INSPECTOR_NAME]
    by_match = {
        (c.filter_chain_match.transport_protocol, tuple(c.filter_chain_match.server_names)): c
        for c in listener.filter_chains
    }
    assert set(by_match) == {
        ("raw_buffer", ()),
        ("tls", ("a.example.com",)),
        ("tls", ("b.example.com",)),
    }
    assert tcp_proxy_of(by_match["tls", ("a.example.com",)]).cluster == V1
    assert tcp_proxy_of(by_match["tls", ("b.example.com",)]).cluster == V2
    assert not by_match["tls", ("a.example.com",)].HasField("transport_socket")


def test_a_passthrough_only_port() -> None:
    view = gateway_view(
        GatewayServer(443, "tls", "TLS", ("*",), passthrough=True),
        tls=[TLSRoute(match=(sni("*.example.com"),), route=(to("db", "v1"),))],
    )
    (listener,) = build_gateway_listeners(view, GATEWAY)
    (chain,) = listener.filter_chains
    assert list(chain.filter_chain_match.server_names) == ["*.example.com"]
