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
from pilotfish.translate.routes import build_gateway_route_configs, build_outbound_route_config


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
    """

    def __init__(self, view: MeshView) -> None:
        self._view = view

    @cached_property
    def _destinations(self) -> DestinationIndex:
        return DestinationIndex(self._view)

    @cached_property
    def outbound_clusters(self) -> tuple[Cluster, ...]:
        return build_outbound_clusters(self._view, self._destinations)

    @cached_property
    def load_assignments(self) -> tuple[ClusterLoadAssignment, ...]:
        return build_load_assignments(self._view, self._destinations)

    @cached_property
    def outbound_route_config(self) -> RouteConfiguration:
        return build_outbound_route_config(self._view, self._destinations)

    @cached_property
    def _shared_by_gateways(self) -> ResourceSet:
        return ResourceSet(clusters=self.outbound_clusters, load_assignments=self.load_assignments)

    @cached_property
    def _shared_by_sidecars(self) -> ResourceSet:
        return ResourceSet(
            clusters=self.outbound_clusters,
            load_assignments=self.load_assignments,
            routes=(self.outbound_route_config,),
        )

    def resources_for(self, node: ProxyNode) -> ProxyResources:
        if node.kind == "gateway":
            shared = self._shared_by_gateways
            return ProxyResources(
                clusters=shared.clusters,
                load_assignments=shared.load_assignments,
                listeners=build_gateway_listeners(self._view, node),
                routes=build_gateway_route_configs(self._view, node, self._destinations),
                shared=shared,
            )
        shared = self._shared_by_sidecars
        inbound = build_inbound_cluster(node)
        return ProxyResources(
            clusters=shared.clusters + ((inbound,) if inbound is not None else ()),
            load_assignments=shared.load_assignments,
            listeners=build_sidecar_listeners(node),
            routes=shared.routes,
            shared=shared,
        )
