"""Minimal ADS clients (SotW and Delta) over real grpcio, for integration tests and benchmarks.

They speak the protocol the way Envoy does: the node only in the first request, one stream for
every type, ACK/NACK by echoing the response nonce.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from pilotfish.model.proxy import ProxyNode
from pilotfish.snapshot import type_urls

DEFAULT_TIMEOUT = 10.0

RequestT = TypeVar("RequestT", discovery_pb2.DiscoveryRequest, discovery_pb2.DeltaDiscoveryRequest)
ResponseT = TypeVar(
    "ResponseT", discovery_pb2.DiscoveryResponse, discovery_pb2.DeltaDiscoveryResponse
)


def node_to_proto(node: ProxyNode) -> base_pb2.Node:
    metadata = struct_pb2.Struct()
    metadata.update(node.to_metadata())  # type: ignore[arg-type]
    return base_pb2.Node(id=node.id, cluster=node.service or node.id, metadata=metadata)


class _AdsClient(Generic[RequestT, ResponseT]):
    def __init__(self, target: str, node: ProxyNode) -> None:
        self.target = target
        self.node = node
        self._outbox: asyncio.Queue[RequestT | None] = asyncio.Queue()
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None

    async def __aenter__(self) -> Self:
        self._channel = grpc.aio.insecure_channel(self.target)
        self._call = self._open(ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _open(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> Any:
        raise NotImplementedError

    async def _requests(self) -> AsyncIterator[RequestT]:
        first = True
        while True:
            request = await self._outbox.get()
            if request is None:
                return
            if first:
                request.node.CopyFrom(node_to_proto(self.node))
                first = False
            yield request

    async def receive(self, timeout: float = DEFAULT_TIMEOUT) -> ResponseT:
        response = await asyncio.wait_for(self._call.read(), timeout)
        if response is grpc.aio.EOF:
            raise ConnectionError("the server closed the stream")
        return response

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        if self._call is not None:
            self._call.cancel()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


class SotwClient(_AdsClient[discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse]):
    def _open(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> Any:
        return stub.StreamAggregatedResources(self._requests())

    def request(
        self,
        type_url: str,
        resource_names: Iterable[str] = (),
        version_info: str = "",
        response_nonce: str = "",
        error_message: str | None = None,
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=list(resource_names),
            version_info=version_info,
            response_nonce=response_nonce,
        )
        if error_message is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error_message))
        self._outbox.put_nowait(request)

    def ack(
        self, response: discovery_pb2.DiscoveryResponse, resource_names: Iterable[str] = ()
    ) -> None:
        self.request(response.type_url, resource_names, response.version_info, response.nonce)

    def nack(
        self,
        response: discovery_pb2.DiscoveryResponse,
        last_accepted_version: str,
        message: str,
        resource_names: Iterable[str] = (),
    ) -> None:
        self.request(
            response.type_url, resource_names, last_accepted_version, response.nonce, message
        )


class DeltaClient(
    _AdsClient[discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse]
):
    def _open(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> Any:
        return stub.DeltaAggregatedResources(self._requests())

    def request(
        self,
        type_url: str,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        initial_resource_versions: Mapping[str, str] | None = None,
        response_nonce: str = "",
        error_message: str | None = None,
    ) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            initial_resource_versions=dict(initial_resource_versions or {}),
            response_nonce=response_nonce,
        )
        if error_message is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error_message))
        self._outbox.put_nowait(request)

    def ack(self, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        self.request(response.type_url, response_nonce=response.nonce)

    def nack(self, response: discovery_pb2.DeltaDiscoveryResponse, message: str) -> None:
        self.request(response.type_url, response_nonce=response.nonce, error_message=message)


# --- hand-built resources: one listener -> RDS route -> EDS cluster -> one endpoint ----------


@dataclass(frozen=True)
class SimpleResources:
    clusters: tuple[cluster_pb2.Cluster, ...] = ()
    load_assignments: tuple[endpoint_pb2.ClusterLoadAssignment, ...] = ()
    listeners: tuple[listener_pb2.Listener, ...] = ()
    routes: tuple[route_pb2.RouteConfiguration, ...] = ()

    @property
    def by_type(self) -> dict[str, tuple[Message, ...]]:
        return {
            type_urls.CLUSTER: self.clusters,
            type_urls.ENDPOINT: self.load_assignments,
            type_urls.LISTENER: self.listeners,
            type_urls.ROUTE: self.routes,
        }


def eds_cluster(name: str) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    cluster.connect_timeout.FromMilliseconds(1000)
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    cluster.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
    return cluster


def load_assignment(cluster_name: str, port: int) -> endpoint_pb2.ClusterLoadAssignment:
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster_name)
    locality = assignment.endpoints.add()
    locality.load_balancing_weight.value = 1
    address = locality.lb_endpoints.add().endpoint.address.socket_address
    address.address = "127.0.0.1"
    address.port_value = port
    return assignment


def http_listener(name: str, port: int, route_name: str) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(name=name)
    listener.address.socket_address.address = "127.0.0.1"
    listener.address.socket_address.port_value = port
    manager = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    manager.rds.route_config_name = route_name
    manager.rds.config_source.ads.SetInParent()
    manager.rds.config_source.resource_api_version = config_source_pb2.V3
    router_filter = manager.http_filters.add(name="envoy.filters.http.router")
    router_filter.typed_config.Pack(router_pb2.Router())
    listener.filter_chains.add().filters.add(name="envoy.filters.network.http_connection_manager")
    listener.filter_chains[0].filters[0].typed_config.Pack(manager)
    return listener


def route_to(route_name: str, cluster_name: str) -> route_pb2.RouteConfiguration:
    config = route_pb2.RouteConfiguration(name=route_name)
    host = config.virtual_hosts.add(name="all", domains=["*"])
    route = host.routes.add()
    route.match.prefix = "/"
    route.route.cluster = cluster_name
    return config


def http_resources(
    listener_port: int, backend_port: int, cluster_name: str = "backend"
) -> SimpleResources:
    return SimpleResources(
        clusters=(eds_cluster(cluster_name),),
        load_assignments=(load_assignment(cluster_name, backend_port),),
        listeners=(http_listener("http", listener_port, "local"),),
        routes=(route_to("local", cluster_name),),
    )
