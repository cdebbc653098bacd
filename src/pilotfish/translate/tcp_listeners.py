"""Opaque (TCP, TLS) traffic in listeners: the inbound listener's TCP chains and protocol
detection, a sidecar's upstream ports, and a gateway's TCP and TLS passthrough servers.

Every opaque chain ends in ``tcp_proxy_filter``; HTTP chains keep the connection managers
that ``listeners`` builds, so one port can carry both (an AUTO port, a gateway port with
plaintext HTTP, HTTPS that terminates and TLS passed through by SNI).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2

from pilotfish.model.authorization import (
    HTTP_CONDITION_KINDS,
    AuthorizationPolicy,
    Rule,
    Values,
    http_only_fields,
    policies_for,
)
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import Gateway, GatewayServer
from pilotfish.model.security import EffectiveMtlsMode
from pilotfish.model.services import MeshView
from pilotfish.translate.authorization import rule_name, rule_to_policy
from pilotfish.translate.destinations import DestinationIndex
from pilotfish.translate.endpoints import socket_address
from pilotfish.translate.gateway_selection import gateway_selects
from pilotfish.translate.http_security import policy_namespace
from pilotfish.translate.naming import (
    gateway_listener_name,
    inbound_cluster_name,
    upstream_listener_name,
)
from pilotfish.translate.proto_values import pack
from pilotfish.translate.tcp_proxy import TcpTelemetry, WeightedCluster, tcp_proxy_filter
from pilotfish.translate.tcp_routes import (
    SniRoute,
    gateway_sni_routes,
    gateway_tcp_destinations,
    tcp_destinations,
)
from pilotfish.translate.tls_contexts import mesh_downstream_context, tls_socket

TLS_INSPECTOR_NAME = "envoy.filters.listener.tls_inspector"
HTTP_INSPECTOR_NAME = "envoy.filters.listener.http_inspector"
NETWORK_RBAC_FILTER_NAME = "envoy.filters.network.rbac"
INBOUND_MTLS_TCP_CHAIN = "inbound-mtls-tcp"
INBOUND_PLAINTEXT_TCP_CHAIN = "inbound-plaintext-tcp"
# What a mesh client's TLS offers for HTTP (Envoy offers each request's codec), and what the
# HTTP inspector reports for plaintext; a TCP proxy's connection offers nothing.
MESH_HTTP_ALPN = ("h2", "http/1.1")
DETECTED_HTTP = ("http/1.1", "h2c")


def tls_inspector() -> listener_components_pb2.ListenerFilter:
    return listener_components_pb2.ListenerFilter(
        name=TLS_INSPECTOR_NAME, typed_config=pack(tls_inspector_pb2.TlsInspector())
    )


def http_inspector() -> listener_components_pb2.ListenerFilter:
    return listener_components_pb2.ListenerFilter(
        name=HTTP_INSPECTOR_NAME, typed_config=pack(http_inspector_pb2.HttpInspector())
    )


# --- inbound ------------------------------------------------------------------------------------


def inbound_tcp_chains(
    mode: EffectiveMtlsMode,
    app_port: int,
    telemetry: TcpTelemetry,
    rbac: Sequence[listener_components_pb2.Filter] = (),
) -> list[listener_components_pb2.FilterChain]:
    """TCP to the app, in mTLS and/or plaintext as the mode says (as the HTTP chains are):
    STRICT refuses a plaintext caller at the handshake, PERMISSIVE tells the two apart by
    the TLS inspector. ``rbac``: the network filters of the AuthorizationPolicies."""
    cluster = (WeightedCluster(inbound_cluster_name(app_port)),)
    chains = []
    if mode != "DISABLE":
        mtls = listener_components_pb2.FilterChain(
            name=INBOUND_MTLS_TCP_CHAIN,
            filters=[*rbac, tcp_proxy_filter(inbound_cluster_name(app_port), cluster, telemetry)],
            transport_socket=tls_socket(mesh_downstream_context()),
        )
        chains.append(mtls)
    if mode != "STRICT":
        chains.append(
            listener_components_pb2.FilterChain(
                name=INBOUND_PLAINTEXT_TCP_CHAIN,
                filters=[
                    *rbac,
                    tcp_proxy_filter(inbound_cluster_name(app_port), cluster, telemetry),
                ],
            )
        )
    if mode == "PERMISSIVE":
        chains[0].filter_chain_match.transport_protocol = "tls"
        chains[1].filter_chain_match.transport_protocol = "raw_buffer"
    return chains


def detection_chains(
    mode: EffectiveMtlsMode,
    http_chains: Sequence[listener_components_pb2.FilterChain],
    tcp_chains: Sequence[listener_components_pb2.FilterChain],
) -> list[listener_components_pb2.FilterChain]:
    """An AUTO port: each HTTP chain (mTLS, plaintext) takes what speaks HTTP (the client's
    ALPN inside mTLS, the HTTP inspector's finding in plaintext); its TCP twin the rest."""
    chains = []
    for chain in http_chains:
        narrowed = listener_components_pb2.FilterChain()
        narrowed.CopyFrom(chain)
        detected = DETECTED_HTTP
        if chain.HasField("transport_socket"):
            narrowed.filter_chain_match.transport_protocol = "tls"
            detected = MESH_HTTP_ALPN
        narrowed.filter_chain_match.application_protocols.extend(detected)
        chains.append(narrowed)
    for chain in tcp_chains:
        opaque = listener_components_pb2.FilterChain()
        opaque.CopyFrom(chain)
        # Envoy narrows by transport protocol before ALPN and never backs off: beside an
        # mTLS HTTP chain matched on "tls", the mTLS TCP chain must say "tls" too.
        if chain.HasField("transport_socket"):
            opaque.filter_chain_match.transport_protocol = "tls"
        chains.append(opaque)
    return chains


def detection_listener_filters(
    mode: EffectiveMtlsMode,
) -> list[listener_components_pb2.ListenerFilter]:
    """The TLS inspector reads the mesh client's ALPN (every mode with mTLS), the HTTP
    inspector reads plaintext (every mode that admits it)."""
    filters = []
    if mode != "DISABLE":
        filters.append(tls_inspector())
    if mode != "STRICT":
        filters.append(http_inspector())
    return filters


def _l4_rule(rule: Rule, action: str) -> Rule | None:
    """A rule as Istio applies it to TCP: its HTTP-only fields (request principals, hosts,
    methods, paths, request headers and claims) cannot be judged there. An ALLOW rule that
    needs one never matches (it is dropped); a DENY or AUDIT rule keeps its other fields,
    so it refuses more, never less."""
    if not http_only_fields(rule):
        return rule
    if action == "ALLOW":
        return None
    return Rule(
        sources=tuple(replace(s, request_principals=Values()) for s in rule.sources),
        operations=tuple(
            replace(o, hosts=Values(), methods=Values(), paths=Values()) for o in rule.operations
        ),
        conditions=tuple(c for c in rule.conditions if c.kind not in HTTP_CONDITION_KINDS),
    )


def network_rbac_filters(
    policies: Sequence[AuthorizationPolicy], listener_port: int | None, workload_port: int | None
) -> list[listener_components_pb2.Filter]:
    """The AuthorizationPolicies of a TCP port as Envoy's network RBAC filters (AUDIT, DENY,
    ALLOW, as on HTTP), each rule reduced to what a connection shows (see ``_l4_rule``)."""

    def port_map(port: int) -> int | None:
        return listener_port if port == workload_port else None

    filters = []
    for action, envoy_action in (
        ("AUDIT", rbac_pb2.RBAC.LOG),
        ("DENY", rbac_pb2.RBAC.DENY),
        ("ALLOW", rbac_pb2.RBAC.ALLOW),
    ):
        chosen = [p for p in policies if p.action == action]
        if not chosen:
            continue
        config = network_rbac_pb2.RBAC(stat_prefix=f"tcp_{action.lower()}.")
        for target, dry_run in ((config.rules, False), (config.shadow_rules, True)):
            selected = [p for p in chosen if p.dry_run == dry_run]
            if not selected:
                continue
            target.action = envoy_action
            for policy in selected:
                for index, rule in enumerate(policy.rules):
                    reduced = _l4_rule(rule, action)
                    if reduced is not None:
                        target.policies[rule_name(policy, index)].CopyFrom(
                            rule_to_policy(reduced, port_map)
                        )
        if config.HasField("shadow_rules"):
            # Shadow rules only count; alone (no ``rules``) they enforce nothing, as on HTTP.
            config.shadow_rules_stat_prefix = f"istio_dry_run_{action.lower()}_"
        filters.append(
            listener_components_pb2.Filter(name=NETWORK_RBAC_FILTER_NAME, typed_config=pack(config))
        )
    return filters


def inbound_network_rbac(
    view: MeshView, node: ProxyNode, workload_port: int | None
) -> list[listener_components_pb2.Filter]:
    policies = policies_for(view.config.authorization_policies, policy_namespace(node), node.labels)
    return network_rbac_filters(policies, node.inbound_port, workload_port)


# --- upstream ports ---------------------------------------------------------------------------


def upstream_tcp_listener(
    view: MeshView,
    node: ProxyNode,
    hostname: str,
    port: int,
    local_port: int,
    telemetry: TcpTelemetry,
    destinations: DestinationIndex | None = None,
    http_chain: listener_components_pb2.FilterChain | None = None,
) -> listener_pb2.Listener:
    """``bind_address:local_port`` straight to ``hostname:port``'s clusters (its ``tcp``
    routes), for a TCP, TLS or AUTO port. ``http_chain`` (an AUTO port): what the HTTP
    inspector finds to be HTTP goes there instead, so the port's ``http`` routes apply."""
    name = upstream_listener_name(port, hostname)
    clusters = tcp_destinations(view, node, hostname, port, destinations)
    listener = listener_pb2.Listener(
        name=name,
        stat_prefix=name,
        address=socket_address(node.bind_address, local_port),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[tcp_proxy_filter(name, clusters, telemetry)]
            )
        ],
    )
    if http_chain is not None:
        detected = listener.filter_chains.add()
        detected.CopyFrom(http_chain)
        detected.filter_chain_match.application_protocols.extend(DETECTED_HTTP)
        listener.listener_filters.append(http_inspector())
        # As on the inbound side: a server-first protocol sends nothing to inspect, and
        # after the timeout goes on to the TCP chain instead of being closed.
        listener.continue_on_listener_filters_timeout = True
    return listener


# --- gateways ---------------------------------------------------------------------------------


def opaque_servers_by_port(
    view: MeshView, node: ProxyNode
) -> dict[int, tuple[tuple[Gateway, GatewayServer], ...]]:
    """TCP and TLS passthrough servers of the Gateways selecting ``node``, by port."""
    if node.kind != "gateway":
        return {}
    grouped: dict[int, list[tuple[Gateway, GatewayServer]]] = {}
    for gateway in view.config.gateways:
        if not gateway_selects(gateway, node.labels):
            continue
        for server in gateway.servers:
            if server.protocol == "TCP" or server.passthrough:
                grouped.setdefault(server.port, []).append((gateway, server))
    return {port: tuple(grouped[port]) for port in sorted(grouped)}


def gateway_tcp_listener(
    view: MeshView,
    node: ProxyNode,
    port: int,
    servers: Sequence[tuple[Gateway, GatewayServer]],
    telemetry: TcpTelemetry,
    destinations: DestinationIndex | None = None,
) -> listener_pb2.Listener | None:
    """A TCP server port: its connections to the first ``tcp`` route bound to it; None (the
    port is not listened on) when no route is."""
    tcp_servers = [(g, s) for g, s in servers if s.protocol == "TCP"]
    clusters = gateway_tcp_destinations(view, node, tcp_servers, destinations)
    if not clusters:
        return None
    name = gateway_listener_name(port)
    return listener_pb2.Listener(
        name=name,
        stat_prefix=name,
        address=socket_address(node.bind_address, port),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[
            listener_components_pb2.FilterChain(
                name=f"{name}-tcp", filters=[tcp_proxy_filter(name, clusters, telemetry)]
            )
        ],
    )


def passthrough_chains(
    view: MeshView,
    node: ProxyNode,
    port: int,
    servers: Sequence[tuple[Gateway, GatewayServer]],
    telemetry: TcpTelemetry,
    taken: Sequence[str] = (),
    destinations: DestinationIndex | None = None,
) -> list[listener_components_pb2.FilterChain]:
    """One chain per ``tls`` route match bound to the passthrough ``servers`` of ``port``:
    matched by SNI, never terminated (the client sees the backend's own certificate)."""
    name = gateway_listener_name(port)
    routes: list[SniRoute] = gateway_sni_routes(view, node, servers, taken, destinations)
    chains = []
    for index, route in enumerate(routes):
        chain = listener_components_pb2.FilterChain(
            name=f"{name}-passthrough-{index}-{route.source}",
            filters=[tcp_proxy_filter(f"{name}.passthrough", route.clusters, telemetry)],
        )
        chain.filter_chain_match.transport_protocol = "tls"
        # "*" is any name: no server_names at all (Envoy takes no bare "*").
        if "*" not in route.server_names:
            chain.filter_chain_match.server_names.extend(route.server_names)
        chains.append(chain)
    return chains


def passthrough_listener(
    node: ProxyNode, port: int, chains: Sequence[listener_components_pb2.FilterChain]
) -> listener_pb2.Listener:
    name = gateway_listener_name(port)
    return listener_pb2.Listener(
        name=name,
        stat_prefix=name,
        address=socket_address(node.bind_address, port),
        traffic_direction=base_pb2.OUTBOUND,
        listener_filters=[tls_inspector()],
        filter_chains=chains,
    )
