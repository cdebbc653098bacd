"""CONNECT in the sidecar's outbound (grpcio, HTTPS egress) and WebSocket upgrades everywhere."""

from __future__ import annotations

from dataclasses import replace

from conftest import BACKEND, mesh_service, meta, to
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from route_simulation import SimulatedRequest, simulate_request

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import L4MatchAttributes, ServicePort, TCPRoute, VirtualService
from pilotfish.model.services import MeshView, Service
from pilotfish.snapshot.references import references_of
from pilotfish.translate import MeshTranslator, ProxyResources
from pilotfish.translate.clusters import HTTP_PROTOCOL_OPTIONS_KEY
from pilotfish.translate.generators import TranslationContext
from pilotfish.translate.naming import OUTBOUND_TUNNEL_CLUSTER, OUTBOUND_TUNNEL_LISTENER

EGRESS = "api.example.com"
BACKEND_V1 = "outbound|8080|v1|backend.default.svc.cluster.local"
BACKEND_V2 = "outbound|8080|v2|backend.default.svc.cluster.local"


def with_egress(view: MeshView) -> MeshView:
    """The quickstart plus an outside HTTPS host (TLS, carried opaque) and a TCP database."""
    egress = Service(EGRESS, (ServicePort(443, "https", "TLS"),), external=True)
    database = mesh_service("db", ServicePort(5432, "tcp", "TCP"))
    return replace(
        view, services={**view.services, egress.hostname: egress, database.hostname: database}
    )


def resources(view: MeshView, node: ProxyNode) -> ProxyResources:
    return MeshTranslator(view).resources_for(node)


def outbound_routes(view: MeshView, node: ProxyNode) -> RouteConfiguration:
    (config,) = resources(view, node).routes
    return config


def connect(authority: str) -> SimulatedRequest:
    return SimulatedRequest(authority, method="CONNECT")


def manager_of(listener: listener_pb2.Listener) -> hcm_pb2.HttpConnectionManager:
    manager = hcm_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def test_a_connect_to_an_http_port_enters_the_tunnel_and_its_requests_get_the_routes(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    config = outbound_routes(quickstart_view, frontend_sidecar)
    for authority in ("backend:8080", f"{BACKEND}:8080"):
        outcome = simulate_request(config, connect(authority))
        assert outcome.clusters == ((OUTBOUND_TUNNEL_CLUSTER, 100),)
        assert outcome.route_name == "connect"
    # What arrives through the tunnel is routed by the same table: the split still applies.
    inside = simulate_request(config, SimulatedRequest("backend:8080", "/"))
    assert inside.clusters == ((BACKEND_V1, 90), (BACKEND_V2, 10))
    tunnel_route = config.virtual_hosts[0].routes[0]
    (upgrade,) = tunnel_route.route.upgrade_configs
    assert upgrade.upgrade_type == "CONNECT"
    assert upgrade.HasField("connect_config")  # terminated here, not forwarded as CONNECT
    assert tunnel_route.route.timeout.ToTimedelta().total_seconds() == 0
    assert tunnel_route.route.idle_timeout.ToTimedelta().total_seconds() == 3600
    assert tunnel_route.tracing.overall_sampling.numerator == 0
    assert tunnel_route.tracing.HasField("overall_sampling")


def test_the_tunnel_listener_routes_with_the_outbound_table_and_its_cluster_reaches_it(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    found = resources(quickstart_view, frontend_sidecar)
    listeners = {listener.name: listener for listener in found.listeners}
    tunnel = listeners[OUTBOUND_TUNNEL_LISTENER]
    assert tunnel.HasField("internal_listener")
    assert not tunnel.HasField("address")
    manager = manager_of(tunnel)
    assert manager.rds.route_config_name == "outbound"
    assert manager.codec_type == hcm_pb2.HttpConnectionManager.AUTO  # gRPC's h2 or HTTP/1.1
    (cluster,) = [c for c in found.clusters if c.name == OUTBOUND_TUNNEL_CLUSTER]
    assert cluster.type == cluster_pb2.Cluster.STATIC
    (endpoint,) = cluster.load_assignment.endpoints[0].lb_endpoints
    address = endpoint.endpoint.address.envoy_internal_address
    assert address.server_listener_name == OUTBOUND_TUNNEL_LISTENER
    # A gateway has no outbound, so neither the tunnel nor its cluster.
    gateway = resources(quickstart_view, ProxyNode(id="gw", kind="gateway"))
    assert OUTBOUND_TUNNEL_CLUSTER not in {c.name for c in gateway.clusters}


def test_a_connect_to_a_tcp_or_tls_port_goes_to_its_cluster_untouched(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    view = with_egress(quickstart_view)
    config = outbound_routes(view, frontend_sidecar)
    egress = simulate_request(config, connect(f"{EGRESS}:443"))
    assert egress.clusters == ((f"outbound|443||{EGRESS}", 100),)
    database = simulate_request(config, connect("db:5432"))
    assert database.clusters == (("outbound|5432||db.default.svc.cluster.local", 100),)
    # Only the CONNECT route, and only under host:port: a plain request is not routed there.
    (virtual_host,) = [v for v in config.virtual_hosts if v.name == EGRESS]
    assert list(virtual_host.domains) == [f"{EGRESS}:443"]
    assert [r.name for r in virtual_host.routes] == ["connect"]
    plain = simulate_request(config, SimulatedRequest(f"{EGRESS}:443", "/"))
    assert plain.clusters == ()
    assert plain.status == 404
    # Every cluster named exists for the sidecar (the snapshot's consistency rule).
    found = resources(view, frontend_sidecar)
    names = {c.name for c in found.clusters}
    for _, name in references_of(config):
        assert name in names


def test_a_connect_to_an_unknown_host_is_refused_by_a_body_naming_the_proxy(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    config = outbound_routes(quickstart_view, frontend_sidecar)
    refused = simulate_request(config, connect("nowhere.example:443"))
    assert refused.status == 404
    assert refused.clusters == ()
    # Also a known host on a port it does not have.
    assert simulate_request(config, connect("backend:9999")).status == 404
    listeners = {item.name: item for item in resources(quickstart_view, frontend_sidecar).listeners}
    outbound = manager_of(listeners["outbound"])
    mapper = outbound.local_reply_config.mappers[-1]
    text = mapper.body_format_override.text_format_source.inline_string
    assert text.startswith("pilotfish: frontend-0 refused CONNECT %REQ(:AUTHORITY)%: ")
    assert "no service in the mesh answers" in text
    (header,) = (h.header for h in mapper.headers_to_add if h.header.key == "x-pilotfish-refusal")
    assert (
        header.value
        == "frontend-0 refused CONNECT: no service in the mesh answers %REQ(:AUTHORITY)%"
    )
    method, status = mapper.filter.and_filter.filters
    assert method.header_filter.header.string_match.exact == "CONNECT"
    assert status.status_code_filter.comparison.value.default_value == 404


def test_every_connection_manager_takes_websockets_and_only_the_outbound_connect(
    gateway_view: MeshView, frontend_sidecar: ProxyNode, quickstart_view: MeshView
) -> None:
    gateway = ProxyNode(id="ingress-0", kind="gateway", labels={"istio": "ingressgateway"})
    listeners = [
        *resources(quickstart_view, frontend_sidecar).listeners,
        *resources(gateway_view, gateway).listeners,
    ]
    upgrades = {}
    for listener in listeners:
        for chain in listener.filter_chains:
            manager = hcm_pb2.HttpConnectionManager()
            assert chain.filters[0].typed_config.Unpack(manager)
            upgrades[listener.name] = [u.upgrade_type for u in manager.upgrade_configs]
    assert upgrades.pop("outbound") == ["websocket", "CONNECT"]
    assert set(upgrades) >= {"inbound", OUTBOUND_TUNNEL_LISTENER, "gateway_8000"}
    assert all(kinds == ["websocket"] for kinds in upgrades.values()), upgrades


def test_established_tunnels_stay_out_of_the_request_metrics_log(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    listeners = {item.name: item for item in resources(quickstart_view, frontend_sidecar).listeners}
    (log,) = manager_of(listeners["outbound"]).access_log
    not_connect, refused = log.filter.or_filter.filters
    assert not_connect.header_filter.header.invert_match
    assert not_connect.header_filter.header.string_match.exact == "CONNECT"
    assert refused.status_code_filter.comparison.value.default_value == 300
    # The requests inside are logged, unfiltered, by the tunnel listener.
    (inner,) = manager_of(listeners[OUTBOUND_TUNNEL_LISTENER]).access_log
    assert not inner.HasField("filter")


def test_a_port_nothing_names_goes_on_in_the_protocol_each_request_came_in(
    quickstart_view: MeshView,
) -> None:
    detected = mesh_service("detected", ServicePort(50051, "", "AUTO"))
    view = replace(quickstart_view, services={**quickstart_view.services, "d": detected})
    (cluster,) = [
        c
        for c in MeshTranslator(view).resources_for(ProxyNode(id="gw", kind="gateway")).clusters
        if c.name == "outbound|50051||detected.default.svc.cluster.local"
    ]
    options = http_protocol_options_pb2.HttpProtocolOptions()
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY].Unpack(options)
    downstream = options.use_downstream_protocol_config
    assert downstream.HasField("http_protocol_options")
    assert downstream.HasField("http2_protocol_options")
    app = ProxyNode(id="d-0", app_port=50051, inbound_port=1, app_protocol="AUTO")
    inbound = MeshTranslator(view).resources_for(app).clusters
    (own,) = [c for c in inbound if c.name == "inbound|50051||"]
    assert HTTP_PROTOCOL_OPTIONS_KEY in own.typed_extension_protocol_options


def test_a_connect_to_a_tcp_port_takes_the_tcp_routes_of_its_caller(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    view = with_egress(quickstart_view)
    replica_db = mesh_service("db-replica", ServicePort(5432, "tcp", "TCP"))
    canary = VirtualService(
        meta=meta("VirtualService", "db"),
        hosts=("db",),
        tcp=(
            TCPRoute(
                match=(L4MatchAttributes(source_labels={"track": "canary"}),),
                route=(to("db", weight=75), to("db-replica", weight=25)),
            ),
        ),
    )
    view = replace(
        view,
        config=replace(view.config, virtual_services=(*view.config.virtual_services, canary)),
        services={**view.services, replica_db.hostname: replica_db},
    )
    db = "outbound|5432||db.default.svc.cluster.local"
    replica = "outbound|5432||db-replica.default.svc.cluster.local"
    canary_node = replace(frontend_sidecar, id="frontend-1", labels={"track": "canary"})
    split = simulate_request(outbound_routes(view, canary_node), connect("db:5432"))
    assert split.clusters == ((db, 75), (replica, 25))
    # A caller the match does not take: the port's own cluster. The cache keeps the two apart.
    translator = MeshTranslator(view)
    (plain,) = translator.resources_for(frontend_sidecar).routes
    (for_canary,) = translator.resources_for(canary_node).routes
    assert simulate_request(plain, connect("db:5432")).clusters == ((db, 100),)
    assert simulate_request(for_canary, connect("db:5432")).clusters == split.clusters
    context = TranslationContext(view)
    assert context.sidecar_group(canary_node) != context.sidecar_group(frontend_sidecar)
