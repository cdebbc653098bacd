"""What each xDS resource points at: the names that must exist for Envoy to use it."""

from __future__ import annotations

from collections.abc import Iterator

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from pilotfish.snapshot import type_urls

Reference = tuple[str, str]  # (type_url, resource name)

_HCM_TYPE = "type.googleapis.com/" + hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name
_TCP_PROXY_TYPE = "type.googleapis.com/" + tcp_proxy_pb2.TcpProxy.DESCRIPTOR.full_name


def references_of(message: Message) -> tuple[Reference, ...]:
    """Every (type_url, name) the message depends on, sorted and without repeats."""
    if isinstance(message, cluster_pb2.Cluster):
        found = list(_cluster_references(message))
    elif isinstance(message, listener_pb2.Listener):
        found = list(_listener_references(message))
    elif isinstance(message, route_pb2.RouteConfiguration):
        found = list(_route_config_references(message))
    else:
        found = []
    return tuple(sorted(set(found)))


def _cluster_references(cluster: cluster_pb2.Cluster) -> Iterator[Reference]:
    if cluster.HasField("type") and cluster.type == cluster_pb2.Cluster.EDS:
        service_name = cluster.eds_cluster_config.service_name or cluster.name
        yield (type_urls.ENDPOINT, service_name)


def _listener_references(listener: listener_pb2.Listener) -> Iterator[Reference]:
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for network_filter in chain.filters:
            if network_filter.HasField("typed_config"):
                yield from _network_filter_references(network_filter.typed_config)
    if listener.HasField("api_listener"):
        yield from _network_filter_references(listener.api_listener.api_listener)


def _network_filter_references(config: any_pb2.Any) -> Iterator[Reference]:
    if config.type_url == _HCM_TYPE:
        manager = hcm_pb2.HttpConnectionManager()
        config.Unpack(manager)
        if manager.HasField("rds"):
            yield (type_urls.ROUTE, manager.rds.route_config_name)
        elif manager.HasField("route_config"):
            yield from _route_config_references(manager.route_config)
    elif config.type_url == _TCP_PROXY_TYPE:
        proxy = tcp_proxy_pb2.TcpProxy()
        config.Unpack(proxy)
        if proxy.cluster:
            yield (type_urls.CLUSTER, proxy.cluster)
        for weighted in proxy.weighted_clusters.clusters:
            yield (type_urls.CLUSTER, weighted.name)


def _route_config_references(config: route_pb2.RouteConfiguration) -> Iterator[Reference]:
    for virtual_host in config.virtual_hosts:
        for route in virtual_host.routes:
            if not route.HasField("route"):
                continue
            action = route.route
            if action.cluster:
                yield (type_urls.CLUSTER, action.cluster)
            for weighted in action.weighted_clusters.clusters:
                yield (type_urls.CLUSTER, weighted.name)
            for mirror in action.request_mirror_policies:
                if mirror.cluster:
                    yield (type_urls.CLUSTER, mirror.cluster)
