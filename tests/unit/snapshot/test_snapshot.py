from __future__ import annotations

from dataclasses import dataclass, replace

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from pilotfish.snapshot import (
    PackingCache,
    check_consistency,
    make_snapshot,
    type_urls,
)


@dataclass(frozen=True)
class FakeResources:
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


def eds_cluster(name: str, service_name: str = "") -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    if service_name:
        cluster.eds_cluster_config.service_name = service_name
    return cluster


def cla(name: str, port: int = 8080) -> endpoint_pb2.ClusterLoadAssignment:
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    endpoint = assignment.endpoints.add().lb_endpoints.add().endpoint
    endpoint.address.socket_address.address = "127.0.0.1"
    endpoint.address.socket_address.port_value = port
    return assignment


def route_config(
    name: str, *clusters: str, weighted: tuple[str, ...] = ()
) -> route_pb2.RouteConfiguration:
    config = route_pb2.RouteConfiguration(name=name)
    host = config.virtual_hosts.add(name="all", domains=["*"])
    for cluster in clusters:
        host.routes.add().route.cluster = cluster
    if weighted:
        action = host.routes.add().route
        for cluster in weighted:
            action.weighted_clusters.clusters.add(name=cluster).weight.value = 1
    return config


def packed(message: hcm_pb2.HttpConnectionManager | tcp_proxy_pb2.TcpProxy) -> any_pb2.Any:
    holder = any_pb2.Any()
    holder.Pack(message)
    return holder


def rds_listener(name: str, route_name: str) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(name=name)
    manager = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    manager.rds.route_config_name = route_name
    manager.rds.config_source.ads.SetInParent()
    listener.filter_chains.add().filters.add(name="hcm", typed_config=packed(manager))
    return listener


def tcp_listener(name: str, cluster: str) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(name=name)
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=name, cluster=cluster)
    listener.filter_chains.add().filters.add(name="tcp", typed_config=packed(proxy))
    return listener


def complete() -> FakeResources:
    return FakeResources(
        clusters=(eds_cluster("a"), eds_cluster("b")),
        load_assignments=(cla("a"), cla("b")),
        listeners=(rds_listener("http", "outbound"), tcp_listener("tcp", "b")),
        routes=(route_config("outbound", "a", weighted=("a", "b")),),
    )


def test_complete_snapshot_is_consistent() -> None:
    snapshot = make_snapshot(complete(), PackingCache())
    assert check_consistency(snapshot) == []
    assert list(snapshot.resources) == [
        type_urls.CLUSTER,
        type_urls.ENDPOINT,
        type_urls.LISTENER,
        type_urls.ROUTE,
    ]
    assert set(snapshot.of_type(type_urls.CLUSTER)) == {"a", "b"}


def test_same_content_same_versions_and_shared_any() -> None:
    cache = PackingCache()
    first = make_snapshot(complete(), cache)
    second = make_snapshot(complete(), cache)
    assert first.version == second.version
    a1 = first.of_type(type_urls.CLUSTER)["a"]
    a2 = second.of_type(type_urls.CLUSTER)["a"]
    assert a1.any is a2.any
    assert cache.hits == len(cache)


def test_changed_resource_changes_only_its_version_and_the_snapshot_version() -> None:
    cache = PackingCache()
    before = make_snapshot(complete(), cache)
    changed = replace(complete(), load_assignments=(cla("a", port=9090), cla("b")))
    after = make_snapshot(changed, cache)
    assert after.version != before.version
    assert (
        after.of_type(type_urls.ENDPOINT)["a"].version
        != before.of_type(type_urls.ENDPOINT)["a"].version
    )
    assert (
        after.of_type(type_urls.ENDPOINT)["b"].version
        == before.of_type(type_urls.ENDPOINT)["b"].version
    )
    assert after.type_version(type_urls.CLUSTER) == before.type_version(type_urls.CLUSTER)


def test_packed_any_unpacks_to_the_original() -> None:
    snapshot = make_snapshot(complete(), PackingCache())
    resource = snapshot.of_type(type_urls.ROUTE)["outbound"]
    unpacked = route_pb2.RouteConfiguration()
    assert resource.any.Unpack(unpacked)
    assert unpacked == route_config("outbound", "a", weighted=("a", "b"))


def test_cache_is_bounded() -> None:
    cache = PackingCache(max_entries=3)
    make_snapshot(FakeResources(clusters=tuple(eds_cluster(f"c{i}") for i in range(10))), cache)
    assert len(cache) == 3


def test_missing_route_cluster_is_reported() -> None:
    resources = replace(complete(), routes=(route_config("outbound", "a", weighted=("ghost",)),))
    problems = check_consistency(make_snapshot(resources, PackingCache()))
    assert problems == [
        "route configuration 'outbound' references cluster 'ghost', which does not exist"
    ]


def test_missing_tcp_cluster_rds_and_load_assignment_are_reported() -> None:
    resources = FakeResources(
        clusters=(eds_cluster("a", service_name="a-endpoints"),),
        load_assignments=(cla("a"),),
        listeners=(rds_listener("http", "nowhere"), tcp_listener("tcp", "gone")),
    )
    problems = check_consistency(make_snapshot(resources, PackingCache()))
    assert sorted(problems) == [
        "cluster 'a' references load assignment 'a-endpoints', which does not exist",
        "listener 'http' references route configuration 'nowhere', which does not exist",
        "listener 'tcp' references cluster 'gone', which does not exist",
    ]


def test_inline_route_config_in_listener_is_checked() -> None:
    listener = listener_pb2.Listener(name="inbound")
    manager = hcm_pb2.HttpConnectionManager(stat_prefix="inbound")
    manager.route_config.CopyFrom(route_config("inline", "missing"))
    listener.filter_chains.add().filters.add(name="hcm", typed_config=packed(manager))
    problems = check_consistency(
        make_snapshot(FakeResources(listeners=(listener,)), PackingCache())
    )
    assert problems == ["listener 'inbound' references cluster 'missing', which does not exist"]


def test_static_cluster_needs_no_load_assignment() -> None:
    static = cluster_pb2.Cluster(name="s", type=cluster_pb2.Cluster.STATIC)
    assert check_consistency(make_snapshot(FakeResources(clusters=(static,)), PackingCache())) == []


def test_duplicate_names_are_reported() -> None:
    resources = replace(complete(), clusters=(eds_cluster("a"), eds_cluster("b"), eds_cluster("a")))
    problems = check_consistency(make_snapshot(resources, PackingCache()))
    assert problems == ["cluster 'a' is defined more than once"]
