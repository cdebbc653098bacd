"""Where a TCP connection to a service port goes: the VirtualServices' ``tcp`` routes (and, at a
gateway's passthrough servers, their ``tls`` routes by SNI)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pilotfish.model.delegation import MESH, qualify_gateway
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import (
    Gateway,
    GatewayServer,
    L4MatchAttributes,
    RouteDestination,
    VirtualService,
    qualify_host,
)
from pilotfish.model.services import MeshView
from pilotfish.translate.destinations import ClusterTarget, DestinationIndex
from pilotfish.translate.gateway_selection import binds_to, gateway_binding, server_allows
from pilotfish.translate.naming import outbound_cluster_name
from pilotfish.translate.tcp_proxy import WeightedCluster


def mesh_virtual_service(view: MeshView, hostname: str) -> VirtualService | None:
    """The VirtualService that routes ``hostname`` for sidecars (validation allows one)."""
    for service in view.config.virtual_services:
        if service.applies_to_mesh and any(
            qualify_host(host, service.meta.namespace) == hostname for host in service.hosts
        ):
            return service
    return None


def l4_match_applies(
    match: L4MatchAttributes,
    namespace: str,
    port: int | None,
    bindings: frozenset[str],
    node: ProxyNode,
) -> bool:
    """Whether one match block takes a connection to ``port`` received by ``bindings``
    ("mesh", "namespace/gateway") from ``node``. A block with ``destinationSubnets`` never
    does: without service addresses nothing here can tell (the loader warns)."""
    if match.destination_subnets:
        return False
    if match.port is not None and port is not None and match.port != port:
        return False
    if match.gateways and not {qualify_gateway(g, namespace) for g in match.gateways} & bindings:
        return False
    return match.applies_to_source(node.labels, node.namespace)


def _route_applies(
    matches: Sequence[L4MatchAttributes],
    namespace: str,
    port: int | None,
    bindings: frozenset[str],
    node: ProxyNode,
) -> bool:
    return not matches or any(l4_match_applies(m, namespace, port, bindings, node) for m in matches)


def weighted_clusters(
    destinations: DestinationIndex,
    route: Iterable[RouteDestination],
    namespace: str,
    listener_port: int | None,
) -> tuple[WeightedCluster, ...]:
    """A route's destinations as clusters with Envoy's weights (at least 1 each: a weight 0
    destination gets nothing and is left out; all unset means an even split). Destinations
    that resolve to no cluster (validation refuses them) are left out."""
    resolved = [
        (target, routed.weight)
        for routed in route
        if isinstance(
            target := destinations.resolve(routed.destination, namespace, listener_port),
            ClusterTarget,
        )
    ]
    if all(not weight for _, weight in resolved):
        return tuple(WeightedCluster(target.cluster) for target, _ in resolved)
    return tuple(WeightedCluster(target.cluster, weight) for target, weight in resolved if weight)


def tcp_destinations(
    view: MeshView,
    node: ProxyNode,
    hostname: str,
    port: int,
    destinations: DestinationIndex | None = None,
) -> tuple[WeightedCluster, ...]:
    """The clusters a connection from ``node`` to ``hostname:port`` is split between: those
    of the first ``tcp`` route of the host's mesh VirtualService that applies to it (by port,
    source labels and namespace, match gateways "mesh"); else the port's own cluster."""
    service = mesh_virtual_service(view, hostname)
    own = (WeightedCluster(outbound_cluster_name(port, hostname)),)
    if service is None:
        return own
    index = destinations or DestinationIndex(view)
    namespace = service.meta.namespace
    for route in service.tcp:
        if _route_applies(route.match, namespace, port, frozenset({MESH}), node):
            return weighted_clusters(index, route.route, namespace, port) or own
    return own


def _bound(view: MeshView, gateway: Gateway, server: GatewayServer) -> Iterable[VirtualService]:
    """The VirtualServices bound to ``gateway`` with a host that ``server`` serves."""
    for service in view.config.virtual_services:
        if binds_to(service, gateway) and any(server_allows(server, h) for h in service.hosts):
            yield service


def gateway_tcp_destinations(
    view: MeshView,
    node: ProxyNode,
    servers: Sequence[tuple[Gateway, GatewayServer]],
    destinations: DestinationIndex | None = None,
) -> tuple[WeightedCluster, ...]:
    """A gateway TCP server port's clusters: the first ``tcp`` route, of the VirtualServices
    bound to its Gateways in config order, that applies; () when none does."""
    index = destinations or DestinationIndex(view)
    for gateway, server in servers:
        bindings = frozenset({gateway_binding(gateway)})
        for service in _bound(view, gateway, server):
            namespace = service.meta.namespace
            for route in service.tcp:
                if _route_applies(route.match, namespace, server.port, bindings, node):
                    clusters = weighted_clusters(index, route.route, namespace, None)
                    if clusters:
                        return clusters
    return ()


@dataclass(frozen=True)
class SniRoute:
    """One passthrough chain of a gateway port: the SNI names it takes, and where they go."""

    server_names: tuple[str, ...]
    clusters: tuple[WeightedCluster, ...]
    source: str
    """``namespace/name`` of the VirtualService, for the chain's name and stats."""


def gateway_sni_routes(
    view: MeshView,
    node: ProxyNode,
    servers: Sequence[tuple[Gateway, GatewayServer]],
    taken: Iterable[str] = (),
    destinations: DestinationIndex | None = None,
) -> list[SniRoute]:
    """The ``tls`` routes bound to the passthrough ``servers`` of one port, one per match
    block, with the SNI names the servers allow. The first route to name a name keeps it
    (Envoy refuses two chains with the same match), as do names in ``taken`` (the port's
    terminating servers)."""
    index = destinations or DestinationIndex(view)
    claimed = set(taken)
    found: list[SniRoute] = []
    for gateway, server in servers:
        bindings = frozenset({gateway_binding(gateway)})
        for service in _bound(view, gateway, server):
            namespace = service.meta.namespace
            for route in service.tls:
                clusters = weighted_clusters(index, route.route, namespace, None)
                if not clusters:
                    continue
                for match in route.match:
                    if not l4_match_applies(match, namespace, server.port, bindings, node):
                        continue
                    names = [
                        name
                        for name in match.sni_hosts
                        if name not in claimed and _sni_allowed(server, name)
                    ]
                    if not names:
                        continue
                    claimed.update(names)
                    source = f"{service.meta.namespace}/{service.meta.name}"
                    found.append(SniRoute(tuple(names), clusters, source))
    return found


def _sni_allowed(server: GatewayServer, sni: str) -> bool:
    """A wildcard SNI name is allowed where its names are: ``*.a.com`` by ``*`` or ``*.com``."""
    if sni.startswith("*"):
        return any(
            pattern in ("*", sni) or (pattern.startswith("*.") and sni.endswith(pattern[1:]))
            for pattern in (h.split("/", 1)[-1] for h in server.hosts)
        )
    return server_allows(server, sni)
