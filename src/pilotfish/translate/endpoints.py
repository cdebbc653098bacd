"""ClusterLoadAssignments: the endpoints of each outbound cluster, filtered by subset labels."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import wrappers_pb2

from pilotfish.model.resources import selector_matches
from pilotfish.model.services import Endpoint, MeshView, Service
from pilotfish.translate.destinations import DestinationIndex
from pilotfish.translate.locality import (
    Caller,
    LocalityGroup,
    LocalityPolicy,
    cluster_locality_policy,
    group_by_locality,
    locality_to_proto,
    prioritize,
)
from pilotfish.translate.naming import outbound_cluster_name
from pilotfish.translate.tls_contexts import TRANSPORT_SOCKET_MATCH_KEY, istio_tls_mode


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=address, port_value=port)
    )


def _lb_endpoint(endpoint: Endpoint, service_port: int) -> endpoint_components_pb2.LbEndpoint:
    lb_endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=socket_address(endpoint.address, endpoint.ports[service_port])
        ),
        load_balancing_weight=wrappers_pb2.UInt32Value(value=max(endpoint.weight, 1)),
    )
    if endpoint.service_account is not None:
        # A sidecar serves it: the cluster's auto-mTLS transport socket match picks mTLS.
        lb_endpoint.metadata.filter_metadata[TRANSPORT_SOCKET_MATCH_KEY].CopyFrom(istio_tls_mode())
    return lb_endpoint


def load_assignment(
    cluster_name: str,
    endpoints: Iterable[Endpoint],
    service_port: int,
    subset_labels: Mapping[str, str] | None = None,
    seen_by: tuple[Caller, LocalityPolicy] | None = None,
) -> endpoint_pb2.ClusterLoadAssignment:
    """Endpoints serving ``service_port`` (and carrying the subset labels), one group per
    locality (always at least one), prioritized for a caller when ``seen_by`` gives one.

    Each group has an explicit ``load_balancing_weight`` because gRPC proxyless clients
    silently ignore localities without one and their RPCs hang.
    """
    selector = subset_labels or {}
    groups = group_by_locality(
        endpoint
        for endpoint in endpoints
        if service_port in endpoint.ports and selector_matches(selector, endpoint.labels)
    ) or (LocalityGroup(None, (), 1),)
    if seen_by is not None:
        groups = prioritize(groups, *seen_by)
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster_name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                locality=locality_to_proto(group.locality),
                lb_endpoints=[_lb_endpoint(e, service_port) for e in group.endpoints],
                load_balancing_weight=wrappers_pb2.UInt32Value(value=group.weight),
                priority=group.priority,
            )
            for group in groups
        ],
    )


@dataclass(frozen=True)
class _EdsCluster:
    name: str
    port: int
    subset_labels: Mapping[str, str]
    policy: LocalityPolicy | None


def _eds_clusters(view: MeshView, service: Service, index: DestinationIndex) -> list[_EdsCluster]:
    """The service's EDS clusters in cluster order, each with its locality policy. DNS
    services have none: their clusters carry their endpoints inline."""
    if service.resolution == "DNS":
        return []
    hostname = service.hostname
    subsets: list[tuple[str | None, Mapping[str, str]]] = [(None, {})]
    subsets.extend((subset.name, subset.labels) for subset in index.subsets_of(hostname))
    return [
        _EdsCluster(
            outbound_cluster_name(port.number, hostname, name),
            port.number,
            labels,
            cluster_locality_policy(view, index, hostname, name, port.number),
        )
        for port in sorted(service.ports, key=lambda p: p.number)
        for name, labels in subsets
    ]


def build_service_load_assignments(
    view: MeshView, service: Service, index: DestinationIndex
) -> tuple[endpoint_pb2.ClusterLoadAssignment, ...]:
    """The assignments of the service's EDS clusters that every caller sees alike (those
    without locality load balancing), in cluster order."""
    endpoints = view.endpoints_of(service.hostname)
    return tuple(
        load_assignment(c.name, endpoints, c.port, c.subset_labels)
        for c in _eds_clusters(view, service, index)
        if c.policy is None
    )


def build_caller_load_assignments(
    view: MeshView, service: Service, index: DestinationIndex, caller: Caller
) -> tuple[endpoint_pb2.ClusterLoadAssignment, ...]:
    """The assignments of the service's EDS clusters with locality load balancing, as
    ``caller`` sees them, in cluster order."""
    endpoints = view.endpoints_of(service.hostname)
    return tuple(
        load_assignment(c.name, endpoints, c.port, c.subset_labels, (caller, c.policy))
        for c in _eds_clusters(view, service, index)
        if c.policy is not None
    )


def build_load_assignments(
    view: MeshView, destinations: DestinationIndex | None = None
) -> tuple[endpoint_pb2.ClusterLoadAssignment, ...]:
    """Every EDS cluster's assignment that all callers share (not those with locality load
    balancing), by service hostname then cluster order."""
    index = destinations or DestinationIndex(view)
    return tuple(
        assignment
        for hostname in sorted(view.services)
        for assignment in build_service_load_assignments(view, view.services[hostname], index)
    )
