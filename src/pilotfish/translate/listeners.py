"""Listeners: a sidecar's ``outbound`` (its app's HTTP proxy) and ``inbound``; gateway ports."""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import Gateway, GatewayServer, is_http
from pilotfish.model.security import EffectiveMtlsMode, effective_mtls_mode
from pilotfish.model.services import MeshView
from pilotfish.translate.connect_tunnel import (
    build_tunnel_listener,
    connect_refusal_mapper,
    upgrade_configs,
    without_open_tunnels,
)
from pilotfish.translate.destinations import DestinationIndex
from pilotfish.translate.endpoints import socket_address
from pilotfish.translate.gateway_selection import (
    GatewayChain,
    gateway_chains,
    http_servers_by_port,
)
from pilotfish.translate.http_security import NO_SECURITY, HttpSecurity, http_security
from pilotfish.translate.naming import (
    INBOUND_LISTENER,
    OUTBOUND_LISTENER,
    OUTBOUND_ROUTE_CONFIG,
    OUTBOUND_TUNNEL_LISTENER,
    gateway_listener_name,
    inbound_cluster_name,
    inbound_route_config_name,
    upstream_listener_name,
)
from pilotfish.translate.proto_values import ads_config_source, duration_from_seconds, pack
from pilotfish.translate.rate_limits import (
    NO_RATE_LIMITS,
    HttpRateLimits,
    gateway_rate_limits,
    sidecar_rate_limits,
)
from pilotfish.translate.routes import (
    CORS_FILTER_NAME,
    FAULT_FILTER_NAME,
    VirtualServiceRoutes,
    build_upstream_route_config,
)
from pilotfish.translate.tcp_listeners import (
    detection_chains,
    detection_listener_filters,
    gateway_tcp_listener,
    inbound_network_rbac,
    inbound_tcp_chains,
    opaque_servers_by_port,
    passthrough_chains,
    passthrough_listener,
    upstream_tcp_listener,
)
from pilotfish.translate.telemetry import (
    GRPC_ACCESS_LOGGER,
    NO_TELEMETRY,
    HttpTelemetry,
    http_telemetry,
    tcp_telemetry,
)
from pilotfish.translate.tls_contexts import (
    gateway_downstream_context,
    mesh_downstream_context,
    tls_socket,
)

HCM_FILTER_NAME = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER_NAME = "envoy.filters.http.router"
TLS_INSPECTOR_NAME = "envoy.filters.listener.tls_inspector"
# The inbound filter chains; PERMISSIVE has both, told apart by the TLS inspector.
INBOUND_MTLS_CHAIN = "inbound-mtls"
INBOUND_PLAINTEXT_CHAIN = "inbound-plaintext"


def _http_filters(
    routing: bool,
    security: HttpSecurity,
    telemetry: HttpTelemetry,
    extra: Sequence[hcm_pb2.HttpFilter] = (),
    rate_limits: HttpRateLimits = NO_RATE_LIMITS,
) -> list[hcm_pb2.HttpFilter]:
    # The peer header first: even a request the policies refuse is logged with its caller.
    # Then authentication and authorization: nothing else acts on a request they refuse;
    # then the rate limits, so a refused request costs no token.
    filters = [*telemetry.filters, *security.filters, *rate_limits.filters]
    if routing:
        # Always present on routing listeners although they only act on routes that configure
        # CORS or a fault: adding or removing one then changes only RDS, never the listener,
        # and a listener change drains every open connection of every sidecar. CORS first, as
        # in Istio: a preflight is answered before any fault is injected.
        filters.append(
            hcm_pb2.HttpFilter(name=CORS_FILTER_NAME, typed_config=pack(cors_pb2.Cors()))
        )
        filters.append(
            hcm_pb2.HttpFilter(name=FAULT_FILTER_NAME, typed_config=pack(fault_pb2.HTTPFault()))
        )
    filters.extend(extra)
    # Router last: filters after it never see the request.
    filters.append(
        hcm_pb2.HttpFilter(name=ROUTER_FILTER_NAME, typed_config=pack(router_pb2.Router()))
    )
    return filters


def http_connection_manager(
    stat_prefix: str,
    *,
    rds_name: str | None = None,
    route_config: route_pb2.RouteConfiguration | None = None,
    http_filters: Sequence[hcm_pb2.HttpFilter] = (),
    security: HttpSecurity = NO_SECURITY,
    telemetry: HttpTelemetry = NO_TELEMETRY,
    rate_limits: HttpRateLimits = NO_RATE_LIMITS,
    connect: bool = False,
    user_routes: bool = False,
) -> hcm_pb2.HttpConnectionManager:
    """An HCM that either fetches ``rds_name`` over ADS or carries ``route_config`` inline
    (``user_routes``: the VirtualServices' routes, which need the CORS and fault filters).

    Every one lets WebSockets through; ``connect`` also takes CONNECT (``connect_tunnel``).

    ``http_filters`` go after the always-present ones and before the router; ``telemetry``'s
    (the peer header) and ``security``'s (the policies' filters) go first. The refusals of
    the policies keep their own bodies, before telemetry's for every other local reply.
    """
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        http_filters=_http_filters(
            rds_name is not None or user_routes, security, telemetry, http_filters, rate_limits
        ),
        access_log=telemetry.access_logs,
        upgrade_configs=upgrade_configs(connect=connect),
    )
    security_mappers = security.local_reply.mappers if security.local_reply else ()
    for mapper in (*security_mappers, *rate_limits.reply_mappers, *telemetry.reply_mappers):
        added = manager.local_reply_config.mappers.add()
        added.CopyFrom(mapper)
        added.headers_to_add.extend(telemetry.reply_headers)
    if telemetry.tracing is not None:
        manager.tracing.CopyFrom(telemetry.tracing)
    if security.filters:
        # As Istio's default (BASE): policies judge "/a/../admin" as the "/admin" it is.
        manager.normalize_path.value = True
    if rds_name is not None:
        manager.rds.route_config_name = rds_name
        manager.rds.config_source.CopyFrom(ads_config_source())
    elif route_config is not None:
        manager.route_config.CopyFrom(route_config)
    return manager


def http_listener(
    name: str,
    address: str,
    port: int,
    manager: hcm_pb2.HttpConnectionManager,
    direction: base_pb2.TrafficDirection.ValueType = base_pb2.OUTBOUND,
) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name,
        address=socket_address(address, port),
        # Tells the tracer which spans are a client's (outbound, gateway) or a server's.
        traffic_direction=direction,
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(name=HCM_FILTER_NAME, typed_config=pack(manager))
                ]
            )
        ],
    )


def inbound_route_config(app_port: int) -> route_pb2.RouteConfiguration:
    """Everything that reached the sidecar's inbound port goes to its app, without a timeout."""
    return route_pb2.RouteConfiguration(
        name=inbound_route_config_name(app_port),
        virtual_hosts=[
            rc.VirtualHost(
                name="inbound",
                domains=["*"],
                routes=[
                    rc.Route(
                        match=rc.RouteMatch(prefix="/"),
                        route=rc.RouteAction(
                            cluster=inbound_cluster_name(app_port),
                            timeout=duration_from_seconds(0),
                        ),
                    )
                ],
            )
        ],
    )


def build_outbound_listener(view: MeshView, node: ProxyNode) -> listener_pb2.Listener | None:
    """A sidecar's ``outbound``: the HTTP proxy its app sends to (None without the port),
    CONNECT included."""
    if node.kind != "sidecar" or node.outbound_port is None or node.interception != "explicit":
        return None  # transparent: translate/transparent_outbound.py
    telemetry = http_telemetry(node, view.config.mesh.telemetry, "outbound")
    manager = http_connection_manager(
        OUTBOUND_LISTENER, rds_name=OUTBOUND_ROUTE_CONFIG, telemetry=telemetry, connect=True
    )
    # Python's urllib (http.client) sends its CONNECT as HTTP/1.0, which Envoy refuses
    # with a 426 unless told otherwise.
    manager.http_protocol_options.accept_http_10 = True
    # The requests inside an HTTP tunnel reach the metrics from the tunnel listener; a log
    # file gets the CONNECT too.
    logs = [
        without_open_tunnels(log) if log.name == GRPC_ACCESS_LOGGER else log
        for log in manager.access_log
    ]
    del manager.access_log[:]
    manager.access_log.extend(logs)
    refusal = manager.local_reply_config.mappers.add()
    refusal.CopyFrom(connect_refusal_mapper(node.id))
    refusal.headers_to_add.extend(telemetry.reply_headers)
    return http_listener(OUTBOUND_LISTENER, node.bind_address, node.outbound_port, manager)


def build_outbound_tunnel_listener(view: MeshView, node: ProxyNode) -> listener_pb2.Listener | None:
    """Where the HTTP inside a CONNECT to an HTTP port is routed: the ``outbound`` routes,
    with the outbound listener's telemetry (None with no outbound listener)."""
    if node.kind != "sidecar" or node.outbound_port is None:
        return None
    telemetry = http_telemetry(node, view.config.mesh.telemetry, "outbound")
    return build_tunnel_listener(
        http_connection_manager(
            OUTBOUND_TUNNEL_LISTENER, rds_name=OUTBOUND_ROUTE_CONFIG, telemetry=telemetry
        )
    )


def build_upstream_listeners(
    view: MeshView,
    node: ProxyNode,
    destinations: DestinationIndex | None = None,
    routes: VirtualServiceRoutes | None = None,
) -> tuple[listener_pb2.Listener, ...]:
    """A sidecar's loopback port per ``upstreams`` entry: an HTTP port gets a connection
    manager with that one service port's routes; any other port a TCP proxy over its
    ``tcp`` routes, and an AUTO port both, by what the HTTP inspector detects. An entry
    for a port no service has gets nothing (the loader says so)."""
    if node.kind != "sidecar":
        return ()
    settings = view.config.mesh.telemetry
    listeners = []
    for upstream in node.upstreams:
        service = view.services.get(upstream.hostname)
        served = service.port(upstream.port) if service is not None else None
        if served is None:
            continue
        name = upstream_listener_name(upstream.port, upstream.hostname)
        manager = None
        if is_http(served.protocol) or served.protocol == "AUTO":
            route_config = build_upstream_route_config(
                name, view, node, upstream.hostname, upstream.port, destinations, routes
            )
            manager = http_connection_manager(
                name,
                route_config=route_config,
                telemetry=http_telemetry(node, settings, "outbound"),
                user_routes=True,
            )
        if manager is not None and is_http(served.protocol):
            listeners.append(http_listener(name, node.bind_address, upstream.local_port, manager))
            continue
        listeners.append(
            upstream_tcp_listener(
                view,
                node,
                upstream.hostname,
                upstream.port,
                upstream.local_port,
                tcp_telemetry(node, settings, "outbound"),
                destinations,
                http_chain=_chain(f"{name}-http", manager) if manager is not None else None,
            )
        )
    return tuple(listeners)


def inbound_security(view: MeshView, node: ProxyNode) -> HttpSecurity:
    """What the policies put on requests to the app (authentication, authorization). Every
    inbound filter chain gets the same."""
    return http_security(view, node, workload_port(view, node))


def workload_port(view: MeshView, node: ProxyNode) -> int | None:
    """The port that ``portLevelMtls`` names for this sidecar: its Workload's ``port``.

    ``pilotfish up`` starts the app on a free port of its own (``node.app_port``), so users
    can only know the port they declared. A sidecar no Workload describes has its app port.
    """
    for workload in view.config.workloads:
        if workload.meta.namespace == node.namespace and workload.service == node.service:
            return workload.port
    return node.app_port


def inbound_mtls_mode(view: MeshView, node: ProxyNode) -> EffectiveMtlsMode:
    """The PeerAuthentication mode of the node's workload port."""
    return effective_mtls_mode(
        view.config.peer_authentications, node.namespace, node.labels, workload_port(view, node)
    )


def _inbound_manager(
    app_port: int,
    security: HttpSecurity,
    telemetry: HttpTelemetry,
    rate_limits: HttpRateLimits,
    *,
    mutual_tls: bool,
) -> hcm_pb2.HttpConnectionManager:
    manager = http_connection_manager(
        INBOUND_LISTENER,
        route_config=inbound_route_config(app_port),
        security=security,
        telemetry=telemetry,
        rate_limits=rate_limits,
    )
    # A caller's own x-forwarded-client-cert is never believed: over mTLS the header is
    # replaced by the verified peer's identity (its SPIFFE URI), as Istio does; in plain
    # text it is removed.
    if mutual_tls:
        manager.forward_client_cert_details = hcm_pb2.HttpConnectionManager.SANITIZE_SET
        manager.set_current_client_cert_details.uri = True
    else:
        manager.forward_client_cert_details = hcm_pb2.HttpConnectionManager.SANITIZE
    return manager


def _chain(
    name: str, manager: hcm_pb2.HttpConnectionManager
) -> listener_components_pb2.FilterChain:
    return listener_components_pb2.FilterChain(
        name=name,
        filters=[listener_components_pb2.Filter(name=HCM_FILTER_NAME, typed_config=pack(manager))],
    )


def _tls_inspector() -> listener_components_pb2.ListenerFilter:
    return listener_components_pb2.ListenerFilter(
        name=TLS_INSPECTOR_NAME, typed_config=pack(tls_inspector_pb2.TlsInspector())
    )


def inbound_filter_chains(
    mode: EffectiveMtlsMode,
    app_port: int,
    security: HttpSecurity = NO_SECURITY,
    telemetry: HttpTelemetry = NO_TELEMETRY,
    rate_limits: HttpRateLimits = NO_RATE_LIMITS,
) -> list[listener_components_pb2.FilterChain]:
    """STRICT: mTLS only, so a plaintext caller fails the handshake (counted in
    ``listener.inbound.ssl.connection_error``), never served in the clear. PERMISSIVE: both,
    by what the TLS inspector saw. DISABLE: plaintext only. Each chain's connection manager
    keeps its own local rate limit buckets."""
    chains = []
    if mode != "DISABLE":
        manager = _inbound_manager(app_port, security, telemetry, rate_limits, mutual_tls=True)
        mtls = _chain(INBOUND_MTLS_CHAIN, manager)
        mtls.transport_socket.CopyFrom(tls_socket(mesh_downstream_context()))
        chains.append(mtls)
    if mode != "STRICT":
        manager = _inbound_manager(app_port, security, telemetry, rate_limits, mutual_tls=False)
        chains.append(_chain(INBOUND_PLAINTEXT_CHAIN, manager))
    if mode == "PERMISSIVE":
        chains[0].filter_chain_match.transport_protocol = "tls"
        chains[1].filter_chain_match.transport_protocol = "raw_buffer"
    return chains


def build_inbound_listener(view: MeshView, node: ProxyNode) -> listener_pb2.Listener | None:
    """A sidecar's ``inbound``: mesh traffic for its app (None without the ports), in mTLS,
    plaintext or both as the PeerAuthentications for the app's port say."""
    if node.kind != "sidecar" or node.inbound_port is None or node.app_port is None:
        return None
    mode = inbound_mtls_mode(view, node)
    listener = listener_pb2.Listener(
        name=INBOUND_LISTENER,
        # Stats as listener.inbound.* rather than under the address, so tests and users
        # find the handshake failures of a STRICT port under one name.
        stat_prefix=INBOUND_LISTENER,
        address=socket_address(node.bind_address, node.inbound_port),
        traffic_direction=base_pb2.INBOUND,
    )
    protocol = node.app_protocol
    if is_http(protocol) or protocol == "AUTO":
        telemetry = http_telemetry(node, view.config.mesh.telemetry, "inbound")
        limits = sidecar_rate_limits(
            view.config.rate_limit_policies, node, view.config.mesh.rate_limit
        )
        chains = inbound_filter_chains(
            mode, node.app_port, inbound_security(view, node), telemetry, limits
        )
    if protocol in ("TCP", "TLS", "AUTO"):
        # Connections that are not HTTP: to the app's port as they are (see tcp_listeners).
        tcp_chains = inbound_tcp_chains(
            mode,
            node.app_port,
            tcp_telemetry(node, view.config.mesh.telemetry, "inbound"),
            inbound_network_rbac(view, node, workload_port(view, node)),
        )
        chains = detection_chains(mode, chains, tcp_chains) if protocol == "AUTO" else tcp_chains
    listener.filter_chains.extend(chains)
    if protocol == "AUTO":
        listener.listener_filters.extend(detection_listener_filters(mode))
        # A server-first protocol sends nothing for the inspectors to read: after the
        # timeout it goes on to the TCP chain instead of being closed.
        listener.continue_on_listener_filters_timeout = True
    elif mode == "PERMISSIVE":
        listener.listener_filters.append(_tls_inspector())
    return listener


def gateway_connection_manager(
    port: int,
    route_config: str,
    security: HttpSecurity,
    telemetry: HttpTelemetry = NO_TELEMETRY,
    rate_limits: HttpRateLimits = NO_RATE_LIMITS,
) -> hcm_pb2.HttpConnectionManager:
    manager = http_connection_manager(
        gateway_listener_name(port),
        rds_name=route_config,
        security=security,
        telemetry=telemetry,
        rate_limits=rate_limits,
    )
    # The gateway is the edge: the client is the peer of the connection, never what its
    # X-Forwarded-For says, or anyone could claim an address that remoteIpBlocks allows.
    # Istio's gateways do the same, trusting numTrustedProxies hops in front (its default,
    # 0, is xff_num_trusted_hops' own). Sidecars leave it off: their caller is the mesh's
    # previous hop.
    manager.use_remote_address.value = True
    return manager


def _gateway_listener(
    view: MeshView,
    node: ProxyNode,
    port: int,
    servers: Sequence[tuple[Gateway, GatewayServer]],
    passthrough: Sequence[tuple[Gateway, GatewayServer]] = (),
) -> listener_pb2.Listener:
    name = gateway_listener_name(port)
    security = http_security(view, node, None)
    telemetry = http_telemetry(node, view.config.mesh.telemetry, "gateway")
    chains = gateway_chains(port, servers)

    # Each chain gets filters of its own, so local buckets of its own (the load warns).
    def limits(chain: GatewayChain) -> HttpRateLimits:
        return gateway_rate_limits(
            view.config.rate_limit_policies,
            node,
            (gateway for gateway, _ in chain.servers),
            view.config.mesh.rate_limit,
        )

    taken = [name for chain in chains if chain.tls is not None for name in chain.server_names]
    tcp = tcp_telemetry(node, view.config.mesh.telemetry, "gateway")
    sni_chains = (
        passthrough_chains(view, node, port, passthrough, tcp, taken) if passthrough else []
    )
    if all(chain.tls is None for chain in chains) and not sni_chains:
        (plaintext,) = chains
        manager = gateway_connection_manager(
            port, plaintext.route_config, security, telemetry, limits(plaintext)
        )
        return http_listener(name, node.bind_address, port, manager)
    filter_chains: list[listener_components_pb2.FilterChain] = []
    for chain in chains:
        manager = gateway_connection_manager(
            port, chain.route_config, security, telemetry, limits(chain)
        )
        if chain.tls is None:
            plaintext_chain = _chain(f"{name}-plaintext", manager)
            plaintext_chain.filter_chain_match.transport_protocol = "raw_buffer"
            filter_chains.append(plaintext_chain)
            continue
        _, server = chain.servers[0]
        tls_chain = _chain(f"{name}-{server.port_name}", manager)
        tls_chain.filter_chain_match.transport_protocol = "tls"
        tls_chain.filter_chain_match.server_names.extend(chain.server_names)
        tls_chain.transport_socket.CopyFrom(tls_socket(gateway_downstream_context(chain.tls)))
        filter_chains.append(tls_chain)
    filter_chains.extend(sni_chains)
    return listener_pb2.Listener(
        name=name,
        address=socket_address(node.bind_address, port),
        traffic_direction=base_pb2.OUTBOUND,
        listener_filters=[_tls_inspector()],
        filter_chains=filter_chains,
    )


def build_gateway_listeners(view: MeshView, node: ProxyNode) -> tuple[listener_pb2.Listener, ...]:
    """``gateway_<port>`` for each server port of the Gateways selecting this node; HTTPS
    servers terminate TLS (by SNI when several share the port), each chain with a route
    config of its own servers' hosts; TLS passthrough servers add a chain per ``tls`` route
    match (by SNI); a port with only TCP servers is one TCP proxy over its ``tcp`` route."""
    http = http_servers_by_port(view, node)
    opaque = opaque_servers_by_port(view, node)
    tcp = tcp_telemetry(node, view.config.mesh.telemetry, "gateway")
    listeners: list[listener_pb2.Listener] = []
    for port in sorted({*http, *opaque}):
        passthrough = [(g, s) for g, s in opaque.get(port, ()) if s.passthrough]
        if port in http:
            listeners.append(_gateway_listener(view, node, port, http[port], passthrough))
        elif passthrough:
            chains = passthrough_chains(view, node, port, passthrough, tcp)
            if chains:
                listeners.append(passthrough_listener(node, port, chains))
        else:
            # TCP servers only: a TCP server sharing a port with others cannot be told
            # apart from them, and is left out there (as Istio's protocol conflict).
            listener = gateway_tcp_listener(view, node, port, opaque[port], tcp)
            if listener is not None:
                listeners.append(listener)
    return tuple(listeners)
