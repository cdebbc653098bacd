"""A sidecar's outbound listener under transparent interception, and the clusters it needs.

iptables sends every TCP connection of the app to ``outbound_port``; the original-destination
listener filter restores where the app meant to go, and the filter chains are picked by that
address and port: a service's virtual address (``model/service_addresses``) and each of its
ports. HTTP ports get the same connection manager as the explicit mode's proxy (the Host
header picks the virtual host), TCP and TLS ports a TCP proxy to the port's destinations, an
AUTO port both, told apart by the HTTP inspector. Anything else passes through to where it
was going, as Istio's default ``outboundTrafficPolicy: ALLOW_ANY`` does; a connection to
loopback could only be to this listener itself, and is refused instead of looping.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from google.protobuf import wrappers_pb2

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import Protocol, is_http
from pilotfish.model.service_addresses import service_addresses
from pilotfish.model.services import MeshView
from pilotfish.translate.endpoints import socket_address
from pilotfish.translate.listeners import HCM_FILTER_NAME, http_connection_manager
from pilotfish.translate.naming import OUTBOUND_LISTENER, OUTBOUND_ROUTE_CONFIG
from pilotfish.translate.proto_values import duration_from_seconds, pack
from pilotfish.translate.tcp_proxy import WeightedCluster, tcp_proxy_filter
from pilotfish.translate.tcp_routes import tcp_destinations
from pilotfish.translate.telemetry import http_telemetry, tcp_telemetry

PASSTHROUGH_CLUSTER = "PassthroughCluster"
BLACKHOLE_CLUSTER = "BlackHoleCluster"
ORIGINAL_DST_FILTER_NAME = "envoy.filters.listener.original_dst"
HTTP_INSPECTOR_NAME = "envoy.filters.listener.http_inspector"
# What the HTTP inspector reports for a plaintext HTTP/1.x or HTTP/2 (prior knowledge) client.
_HTTP_APPLICATION_PROTOCOLS = ("http/1.1", "http/1.0", "h2c")
# The capture listener listens on loopback: iptables' REDIRECT sends there.
CAPTURE_ADDRESS = "127.0.0.1"
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


def is_transparent_sidecar(node: ProxyNode) -> bool:
    return node.kind == "sidecar" and node.interception == "transparent"


def build_transparent_outbound_listener(
    view: MeshView, node: ProxyNode
) -> listener_pb2.Listener | None:
    """``outbound`` of a transparent sidecar (None for any other proxy)."""
    if not is_transparent_sidecar(node) or node.outbound_port is None:
        return None
    chains = [_refusal_chain()]
    seen: set[tuple[tuple[ipaddress.IPv4Network, ...], int]] = set()
    detects = False
    for hostname, address in sorted(service_addresses(view).items()):
        service = view.services[hostname]
        for port in sorted(service.ports, key=lambda p: p.number):
            key = (address.networks, port.number)
            if key in seen:
                continue  # two services on one address and port: the first one's, as routed
            seen.add(key)
            for chain in _port_chains(view, node, hostname, port.number, port.protocol):
                _match_destination(chain, address.networks, port.number)
                chains.append(chain)
            detects = detects or port.protocol == "AUTO"
    listener_filters = [
        listener_components_pb2.ListenerFilter(
            name=ORIGINAL_DST_FILTER_NAME, typed_config=pack(original_dst_pb2.OriginalDst())
        )
    ]
    if detects:
        listener_filters.append(
            listener_components_pb2.ListenerFilter(
                name=HTTP_INSPECTOR_NAME, typed_config=pack(http_inspector_pb2.HttpInspector())
            )
        )
    return listener_pb2.Listener(
        name=OUTBOUND_LISTENER,
        stat_prefix=OUTBOUND_LISTENER,
        address=socket_address(CAPTURE_ADDRESS, node.outbound_port),
        traffic_direction=base_pb2.OUTBOUND,
        listener_filters=listener_filters,
        filter_chains=chains,
        default_filter_chain=_passthrough_chain(node, view),
    )


def _port_chains(
    view: MeshView, node: ProxyNode, hostname: str, port: int, protocol: Protocol
) -> list[listener_components_pb2.FilterChain]:
    name = f"{hostname}:{port}"
    if is_http(protocol):
        return [_http_chain(view, node, name)]
    tcp = _tcp_chain(view, node, name, tcp_destinations(view, node, hostname, port))
    if protocol != "AUTO":
        return [tcp]
    http = _http_chain(view, node, f"{name}-http")
    http.filter_chain_match.application_protocols.extend(_HTTP_APPLICATION_PROTOCOLS)
    return [http, tcp]


def _http_chain(view: MeshView, node: ProxyNode, name: str) -> listener_components_pb2.FilterChain:
    manager = http_connection_manager(
        OUTBOUND_LISTENER,
        rds_name=OUTBOUND_ROUTE_CONFIG,
        telemetry=http_telemetry(node, view.config.mesh.telemetry, "outbound"),
    )
    return listener_components_pb2.FilterChain(
        name=name,
        filters=[listener_components_pb2.Filter(name=HCM_FILTER_NAME, typed_config=pack(manager))],
    )


def _tcp_chain(
    view: MeshView, node: ProxyNode, name: str, clusters: Sequence[WeightedCluster]
) -> listener_components_pb2.FilterChain:
    telemetry = tcp_telemetry(node, view.config.mesh.telemetry, "outbound")
    stat_prefix = clusters[0].name if len(clusters) == 1 else name
    return listener_components_pb2.FilterChain(
        name=name, filters=[tcp_proxy_filter(stat_prefix, clusters, telemetry)]
    )


def _match_destination(
    chain: listener_components_pb2.FilterChain,
    networks: Sequence[ipaddress.IPv4Network],
    port: int,
) -> None:
    match = chain.filter_chain_match
    match.destination_port.value = port
    for network in networks:
        match.prefix_ranges.append(_cidr(network))


def _cidr(network: ipaddress.IPv4Network) -> address_pb2.CidrRange:
    return address_pb2.CidrRange(
        address_prefix=str(network.network_address),
        prefix_len=wrappers_pb2.UInt32Value(value=network.prefixlen),
    )


def _refusal_chain() -> listener_components_pb2.FilterChain:
    chain = listener_components_pb2.FilterChain(
        name="loopback-refused", filters=[tcp_proxy_filter(BLACKHOLE_CLUSTER, _blackhole())]
    )
    chain.filter_chain_match.prefix_ranges.append(_cidr(_LOOPBACK))
    return chain


def _blackhole() -> list[WeightedCluster]:
    return [WeightedCluster(BLACKHOLE_CLUSTER)]


def _passthrough_chain(node: ProxyNode, view: MeshView) -> listener_components_pb2.FilterChain:
    telemetry = tcp_telemetry(node, view.config.mesh.telemetry, "outbound")
    return listener_components_pb2.FilterChain(
        name="passthrough",
        filters=[
            tcp_proxy_filter(PASSTHROUGH_CLUSTER, [WeightedCluster(PASSTHROUGH_CLUSTER)], telemetry)
        ],
    )


def build_transparent_clusters(node: ProxyNode) -> tuple[cluster_pb2.Cluster, ...]:
    """``PassthroughCluster`` (to wherever the connection was going) and ``BlackHoleCluster``
    (no endpoints: the connection is closed), as Istio names them."""
    if not is_transparent_sidecar(node):
        return ()
    passthrough = cluster_pb2.Cluster(
        name=PASSTHROUGH_CLUSTER,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=duration_from_seconds(1.0),
    )
    blackhole = cluster_pb2.Cluster(
        name=BLACKHOLE_CLUSTER,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration_from_seconds(1.0),
    )
    return (passthrough, blackhole)
