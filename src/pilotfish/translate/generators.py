"""The generators: which xDS resources each kind of proxy gets, and what each depends on.

Each entry builds one kind of output with the builders of this package and declares its
inputs; ``SnapshotCache`` keeps outputs under exactly those inputs, so a declaration that is
too narrow would serve stale config: when a builder starts reading more of the view, widen
its ``depends_on`` (the cache-equals-fresh property tests catch a narrow one).

A new resource type (secrets, a filter config) is one more entry here.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from functools import cached_property

from google.protobuf.message import Message

from pilotfish.model.proxy import ProxyKind, ProxyNode
from pilotfish.model.resources import qualify_host
from pilotfish.model.services import MeshView, Service
from pilotfish.snapshot import (
    Generator,
    Input,
    MeshGenerator,
    NodeGenerator,
    ServiceGenerator,
    type_urls,
)
from pilotfish.translate.clusters import build_inbound_cluster, build_service_clusters
from pilotfish.translate.connect_tunnel import build_tunnel_cluster
from pilotfish.translate.destinations import DestinationIndex, EffectivePolicy
from pilotfish.translate.endpoints import (
    build_caller_load_assignments,
    build_service_load_assignments,
)
from pilotfish.translate.listeners import (
    build_gateway_listeners,
    build_inbound_listener,
    build_outbound_listener,
    build_outbound_tunnel_listener,
    build_upstream_listeners,
    workload_port,
)
from pilotfish.translate.locality import (
    Caller,
    caller_of,
    failover_labels,
    has_locality_clusters,
)
from pilotfish.translate.request_authentication import build_jwks_clusters
from pilotfish.translate.routes import (
    VirtualServiceRoutes,
    build_gateway_route_configs,
    build_outbound_route_config,
)
from pilotfish.translate.tcp_proxy import WeightedCluster
from pilotfish.translate.tcp_routes import tcp_destinations
from pilotfish.translate.transparent_outbound import (
    build_transparent_clusters,
    build_transparent_outbound_listener,
)


class TranslationContext:
    """One view and what several generators derive from it, worked out once per view."""

    def __init__(self, view: MeshView) -> None:
        self.view = view

    @cached_property
    def destinations(self) -> DestinationIndex:
        return DestinationIndex(self.view)

    @cached_property
    def virtual_service_routes(self) -> VirtualServiceRoutes:
        return VirtualServiceRoutes(self.view)

    @cached_property
    def failover_labels(self) -> tuple[str, ...]:
        return failover_labels(self.view.config)

    @cached_property
    def locality_services(self) -> tuple[Service, ...]:
        """Services with a cluster whose assignment depends on the caller's locality."""
        return tuple(
            service
            for hostname, service in sorted(self.view.services.items())
            if has_locality_clusters(self.view, service, self.destinations)
        )

    def caller(self, node: ProxyNode) -> Caller:
        """What of ``node`` its locality-aware assignments depend on: proxies that agree
        (all of those without a locality, unless ``failoverPriority`` names their labels)
        share them."""
        return caller_of(node, self.failover_labels)

    def sidecar_group(self, node: ProxyNode) -> tuple[bool, ...]:
        """Which of the config's conditions on the calling proxy (``sourceLabels``,
        ``sourceNamespace`` of http and tcp routes) ``node`` meets: sidecars that agree get
        the same routes, their CONNECT routes to TCP ports included. ``()``
        for every sidecar when no mesh VirtualService has such a condition."""
        return self.virtual_service_routes.source_signature(node)


def _outbound_clusters(context: TranslationContext, service: Service) -> tuple[Message, ...]:
    return build_service_clusters(context.view, service, context.destinations)


def _load_assignments(context: TranslationContext, service: Service) -> tuple[Message, ...]:
    return build_service_load_assignments(context.view, service, context.destinations)


def _caller_load_assignments(context: TranslationContext, node: ProxyNode) -> tuple[Message, ...]:
    caller = context.caller(node)
    return tuple(
        assignment
        for service in context.locality_services
        for assignment in build_caller_load_assignments(
            context.view, service, context.destinations, caller
        )
    )


def _present(resource: Message | None) -> tuple[Message, ...]:
    return (resource,) if resource is not None else ()


def transparent_listener_key(node: ProxyNode) -> Hashable:
    """Every explicit sidecar shares one (empty) output; a transparent one has its own."""
    if node.interception == "explicit":
        return None
    return (node.id, json.dumps(node.to_metadata(), sort_keys=True))


def _inbound_cluster(context: TranslationContext, node: ProxyNode) -> tuple[Message, ...]:
    return _present(build_inbound_cluster(node, inbound_policy(context, node)))


def inbound_policy(context: TranslationContext, node: ProxyNode) -> EffectivePolicy:
    """As Istio does for the server's side: the rule of the node's service, with its
    port-level settings for the Workload's port, and no subset's."""
    port = workload_port(context.view, node)
    if node.service is None or port is None:
        return EffectivePolicy()
    hostname = qualify_host(node.service, node.namespace)
    return context.destinations.effective_policy(hostname, None, port)


def _outbound_routes(context: TranslationContext, node: ProxyNode) -> tuple[Message, ...]:
    routes = context.virtual_service_routes
    source = routes.source_filter(context.sidecar_group(node))

    # Sidecars of one group agree on every tcp route's source conditions too.
    def tcp_targets(hostname: str, port: int) -> tuple[WeightedCluster, ...]:
        return tcp_destinations(context.view, node, hostname, port, context.destinations)

    return (
        build_outbound_route_config(
            context.view, context.destinations, routes, source, tcp_targets
        ),
    )


def _gateway_routes(context: TranslationContext, node: ProxyNode) -> tuple[Message, ...]:
    return build_gateway_route_configs(
        context.view, node, context.destinations, context.virtual_service_routes
    )


def _upstreams_key(node: ProxyNode) -> Hashable:
    """Every sidecar without upstreams shares one (empty) output; one with them depends on
    all of itself (its ports, its labels for the routes, its id for telemetry)."""
    if not node.upstreams:
        return ()
    return (node.id, json.dumps(node.to_metadata(), sort_keys=True))


_CONFIG = frozenset({Input.CONFIG})
_CONFIG_AND_ENDPOINTS = frozenset({Input.CONFIG, Input.ENDPOINTS})
_CONFIG_AND_SERVICES = frozenset({Input.CONFIG, Input.SERVICES})
SIDECAR: frozenset[ProxyKind] = frozenset({"sidecar"})
GATEWAY: frozenset[ProxyKind] = frozenset({"gateway"})

# In the order resources of one type are listed (shared ones first, as a proxy's own
# resources override shared ones of the same name).
GENERATORS: tuple[Generator[TranslationContext], ...] = (
    # DNS services carry their endpoints inline, hence ENDPOINTS; for the others the rebuilt
    # cluster packs to the same bytes and version, so nothing is sent.
    ServiceGenerator(
        "outbound-clusters", type_urls.CLUSTER, _CONFIG_AND_ENDPOINTS, _outbound_clusters
    ),
    NodeGenerator(
        "transparent-clusters",
        type_urls.CLUSTER,
        frozenset(),  # the node's interception only
        lambda context, node: build_transparent_clusters(node),
        SIDECAR,
        node_key=lambda context, node: node.interception,
    ),
    # The rule of the node's service (which the services decide) sets its connection pool.
    NodeGenerator(
        "inbound-cluster", type_urls.CLUSTER, _CONFIG_AND_SERVICES, _inbound_cluster, SIDECAR
    ),
    # Every sidecar's outbound routes send CONNECTs to HTTP ports through it.
    MeshGenerator(
        "outbound-tunnel-cluster",
        type_urls.CLUSTER,
        frozenset(),
        lambda context: (build_tunnel_cluster(),),
        SIDECAR,
    ),
    # jwksUri hosts outside the mesh (which ones are outside depends on the services).
    MeshGenerator(
        "jwks-clusters",
        type_urls.CLUSTER,
        _CONFIG_AND_SERVICES,
        lambda context: build_jwks_clusters(context.view),
    ),
    ServiceGenerator(
        "load-assignments", type_urls.ENDPOINT, _CONFIG_AND_ENDPOINTS, _load_assignments
    ),
    # The clusters with locality load balancing, prioritized for the caller: one output per
    # ``TranslationContext.caller``. Any endpoint change rebuilds each (it may move any
    # service's endpoints between priorities); callers without a locality share one.
    NodeGenerator(
        "locality-load-assignments",
        type_urls.ENDPOINT,
        frozenset({Input.CONFIG, Input.SERVICES, Input.ENDPOINTS}),
        _caller_load_assignments,
        node_key=TranslationContext.caller,
    ),
    NodeGenerator(
        "outbound-listener",
        type_urls.LISTENER,
        _CONFIG,  # the node's ports and the mesh's telemetry settings
        lambda context, node: (
            *_present(build_outbound_listener(context.view, node)),
            *_present(build_outbound_tunnel_listener(context.view, node)),
        ),
        SIDECAR,
    ),
    # Transparent interception: the outbound listener matches each service's address and
    # ports, so it depends on the services too (``build_outbound_listener`` leaves it).
    NodeGenerator(
        "transparent-outbound-listener",
        type_urls.LISTENER,
        _CONFIG_AND_SERVICES,
        lambda context, node: _present(build_transparent_outbound_listener(context.view, node)),
        SIDECAR,
        node_key=lambda context, node: transparent_listener_key(node),
    ),
    NodeGenerator(
        "inbound-listener",
        type_urls.LISTENER,
        _CONFIG,  # the policies on the app's side: mTLS modes, authorization
        lambda context, node: _present(build_inbound_listener(context.view, node)),
        SIDECAR,
    ),
    # The ports' protocols (the services) say TCP proxy or HTTP; their routes, the config.
    NodeGenerator(
        "upstream-listeners",
        type_urls.LISTENER,
        _CONFIG_AND_SERVICES,
        lambda context, node: build_upstream_listeners(
            context.view, node, context.destinations, context.virtual_service_routes
        ),
        SIDECAR,
        node_key=lambda _, node: _upstreams_key(node),
    ),
    # TCP and passthrough chains name the clusters their routes resolve to (the services).
    NodeGenerator(
        "gateway-listeners",
        type_urls.LISTENER,
        _CONFIG_AND_SERVICES,
        lambda context, node: build_gateway_listeners(context.view, node),
        GATEWAY,
    ),
    # One output per group of sidecars (see ``TranslationContext.sidecar_group``): without
    # conditions on the caller, every sidecar gets the very same one.
    NodeGenerator(
        "outbound-routes",
        type_urls.ROUTE,
        _CONFIG_AND_SERVICES,
        _outbound_routes,
        SIDECAR,
        node_key=TranslationContext.sidecar_group,
    ),
    NodeGenerator(
        "gateway-routes", type_urls.ROUTE, _CONFIG_AND_SERVICES, _gateway_routes, GATEWAY
    ),
)
