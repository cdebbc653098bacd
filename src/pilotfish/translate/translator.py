"""The translation entry point: a mesh view and a proxy in, that proxy's xDS resources out."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.services import MeshView
from pilotfish.translate.clusters import build_inbound_cluster, build_outbound_clusters
from pilotfish.translate.destinations import DestinationIndex
from pilotfish.translate.endpoints import build_load_assignments
from pilotfish.translate.listeners import build_gateway_listeners, build_sidecar_listeners
from pilotfish.translate.routes import (
    VirtualServiceRoutes,
    build_gateway_route_configs,
    build_outbound_route_config,
)


@dataclass(frozen=True)
class ResourceSet:
    clusters: tuple[Cluster, ...] = ()
    load_assignments: tuple[ClusterLoadAssignment, ...] = ()
    listeners: tuple[Listener, ...] = ()
    routes: tuple[RouteConfiguration, ...] = ()


@dataclass(frozen=True)
class ProxyResources:
    """Everything one proxy needs.

    Messages shared by all proxies of a view are the same objects in every ProxyResources:
    treat them as read-only. ``shared``, when set, is that part: each field here starts with
    the matching field of ``shared`` (the same tuple), so snapshot building can pack it once
    per view instead of once per proxy.
    """

    clusters: tuple[Cluster, ...]
    load_assignments: tuple[ClusterLoadAssignment, ...]
    listeners: tuple[Listener, ...]
    routes: tuple[RouteConfiguration, ...]
    shared: ResourceSet | None = None


class MeshTranslator:
    """Translates one immutable view for any number of proxies.

    What every proxy shares (outbound clusters, load assignments, the ``outbound`` route
    configuration) is built at most once per translator, on first use; only listeners, the
    inbound cluster and gateway routes are built per node.

    Sidecars share one ``outbound`` route configuration unless a mesh VirtualService has
    matches on the calling proxy (``sourceLabels``, ``sourceNamespace``): then there is one
    per group of sidecars that meet the same of those conditions, and ``shared_for(node)``
    is the shared part of that node's group.

    Given the translator of the previous view, it reuses what that one built and the change
    cannot have touched: with the same config, routes and clusters (but those of DNS services,
    which carry their endpoints) stay, and only services whose endpoints changed get new load
    assignments. Only already built results are taken, so translators never form a chain.
    """

    def __init__(self, view: MeshView, previous: MeshTranslator | None = None) -> None:
        self._view = view
        self._reusable: dict[str, object] = {}
        self._previous_view: MeshView | None = None
        if previous is not None and previous._view.config is view.config:
            self._previous_view = previous._view
            built = previous.__dict__
            self._reusable = {
                key: built[key]
                for key in (
                    "_destinations",
                    "_virtual_service_routes",
                    "_outbound_by_signature",
                    "_assignments_by_host",
                )
                if key in built
            }
            if "outbound_clusters" in built and self._dns_endpoints_unchanged():
                self._reusable["outbound_clusters"] = built["outbound_clusters"]

    def _same_endpoints(self, hostname: str) -> bool:
        assert self._previous_view is not None
        return self._previous_view.endpoints_of(hostname) == self._view.endpoints_of(hostname)

    def _dns_endpoints_unchanged(self) -> bool:
        return all(
            self._same_endpoints(hostname)
            for hostname, service in self._view.services.items()
            if service.resolution == "DNS"
        )

    @cached_property
    def _destinations(self) -> DestinationIndex:
        reused = self._reusable.get("_destinations")
        return reused if isinstance(reused, DestinationIndex) else DestinationIndex(self._view)

    @cached_property
    def outbound_clusters(self) -> tuple[Cluster, ...]:
        reused = self._reusable.get("outbound_clusters")
        if isinstance(reused, tuple):
            return reused
        return build_outbound_clusters(self._view, self._destinations)

    @cached_property
    def _assignments_by_host(self) -> dict[str, tuple[ClusterLoadAssignment, ...]]:
        previous = self._reusable.get("_assignments_by_host")
        reuse = None
        if isinstance(previous, dict):
            reuse = {h: cla for h, cla in previous.items() if self._same_endpoints(h)}
        return build_load_assignments(self._view, self._destinations, reuse)

    @cached_property
    def load_assignments(self) -> tuple[ClusterLoadAssignment, ...]:
        return tuple(cla for group in self._assignments_by_host.values() for cla in group)

    @cached_property
    def _virtual_service_routes(self) -> VirtualServiceRoutes:
        reused = self._reusable.get("_virtual_service_routes")
        if isinstance(reused, VirtualServiceRoutes):
            return reused
        return VirtualServiceRoutes(self._view)

    @cached_property
    def _outbound_by_signature(self) -> dict[tuple[bool, ...], RouteConfiguration]:
        """Filled as sidecars of each group first ask; shared with the next translator of the
        same config, since routes do not depend on endpoints."""
        reused = self._reusable.get("_outbound_by_signature")
        return reused if isinstance(reused, dict) else {}

    def sidecar_group(self, node: ProxyNode) -> tuple[bool, ...]:
        """The key of ``node``'s group: which source conditions of the config it meets.

        Equal keys mean equal ``outbound`` routes and the same ``shared_for`` object; with no
        source-dependent VirtualService every sidecar's key is ``()``. A cache may key on it
        (together with the config) instead of on the node.
        """
        return self._virtual_service_routes.source_signature(node)

    def outbound_route_config_for(self, node: ProxyNode) -> RouteConfiguration:
        return self._outbound_for_signature(self.sidecar_group(node))

    @property
    def outbound_route_config(self) -> RouteConfiguration:
        """The configuration of sidecars that meet no source condition (all of them when no
        VirtualService has one)."""
        routes = self._virtual_service_routes
        return self._outbound_for_signature((False,) * len(routes.source_conditions))

    def _outbound_for_signature(self, signature: tuple[bool, ...]) -> RouteConfiguration:
        found = self._outbound_by_signature.get(signature)
        if found is None:
            routes = self._virtual_service_routes
            found = build_outbound_route_config(
                self._view, self._destinations, routes, routes.source_filter(signature)
            )
            self._outbound_by_signature[signature] = found
        return found

    @cached_property
    def _shared_by_gateways(self) -> ResourceSet:
        return ResourceSet(clusters=self.outbound_clusters, load_assignments=self.load_assignments)

    @cached_property
    def _shared_by_sidecar_group(self) -> dict[tuple[bool, ...], ResourceSet]:
        return {}

    def _shared_by_sidecars(self, node: ProxyNode) -> ResourceSet:
        signature = self.sidecar_group(node)
        found = self._shared_by_sidecar_group.get(signature)
        if found is None:
            found = ResourceSet(
                clusters=self.outbound_clusters,
                load_assignments=self.load_assignments,
                routes=(self._outbound_for_signature(signature),),
            )
            self._shared_by_sidecar_group[signature] = found
        return found

    def shared_for(self, node: ProxyNode) -> ResourceSet:
        """What ``node`` shares with every proxy of its group: all gateways form one group;
        sidecars form one per source signature (one group when no VirtualService matches
        on the calling proxy). The same object for every node of a group.

        The rest of ``resources_for(node)`` (listeners, the inbound cluster, gateway routes)
        depends only on the config and the node, never on endpoints: the controller relies on
        this to keep it across generations that change endpoints only.
        """
        return (
            self._shared_by_gateways if node.kind == "gateway" else self._shared_by_sidecars(node)
        )

    def resources_for(self, node: ProxyNode) -> ProxyResources:
        if node.kind == "gateway":
            shared = self._shared_by_gateways
            return ProxyResources(
                clusters=shared.clusters,
                load_assignments=shared.load_assignments,
                listeners=build_gateway_listeners(self._view, node),
                routes=build_gateway_route_configs(
                    self._view, node, self._destinations, self._virtual_service_routes
                ),
                shared=shared,
            )
        shared = self._shared_by_sidecars(node)
        inbound = build_inbound_cluster(node)
        return ProxyResources(
            clusters=shared.clusters + ((inbound,) if inbound is not None else ()),
            load_assignments=shared.load_assignments,
            listeners=build_sidecar_listeners(node),
            routes=shared.routes,
            shared=shared,
        )
