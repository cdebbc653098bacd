"""The transparent outbound listener: chains by each service's address and port."""

from __future__ import annotations

import dataclasses
import ipaddress

from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from tests.unit.translate.conftest import mesh_service, view_of

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import MeshConfig, ServicePort
from pilotfish.model.service_addresses import service_addresses
from pilotfish.model.services import MeshView
from pilotfish.snapshot import SnapshotCache, type_urls
from pilotfish.translate import GENERATORS, TranslationContext
from pilotfish.translate.listeners import HCM_FILTER_NAME, build_outbound_listener
from pilotfish.translate.naming import OUTBOUND_LISTENER
from pilotfish.translate.transparent_outbound import (
    BLACKHOLE_CLUSTER,
    HTTP_INSPECTOR_NAME,
    ORIGINAL_DST_FILTER_NAME,
    PASSTHROUGH_CLUSTER,
    build_transparent_clusters,
    build_transparent_outbound_listener,
)

WEB = "web.default.svc.cluster.local"
DB = "db.default.svc.cluster.local"
CACHE = "cache.default.svc.cluster.local"


def transparent(node: ProxyNode) -> ProxyNode:
    return dataclasses.replace(node, interception="transparent", bind_address="10.250.0.2")


def mixed_view() -> MeshView:
    return view_of(
        MeshConfig(),
        mesh_service("web", ServicePort(8080, "http", "HTTP")),
        mesh_service("db", ServicePort(5432, "tcp", "TCP")),
        mesh_service("cache", ServicePort(6379, "redis", "AUTO")),
    )


def _chain(listener: object, name: str) -> listener_components_pb2.FilterChain:
    chains = {chain.name: chain for chain in listener.filter_chains}  # type: ignore[attr-defined]
    return chains[name]


def _tcp_cluster(chain: listener_components_pb2.FilterChain) -> str:
    proxy = tcp_proxy_pb2.TcpProxy()
    chain.filters[0].typed_config.Unpack(proxy)
    return proxy.cluster


def test_each_service_port_has_a_chain_for_its_address_and_port(
    frontend_sidecar: ProxyNode,
) -> None:
    view = mixed_view()
    listener = build_transparent_outbound_listener(view, transparent(frontend_sidecar))
    assert listener is not None
    assert listener.name == OUTBOUND_LISTENER
    address = listener.address.socket_address
    assert (address.address, address.port_value) == ("127.0.0.1", 15001)
    assert [f.name for f in listener.listener_filters] == [
        ORIGINAL_DST_FILTER_NAME,
        HTTP_INSPECTOR_NAME,
    ]
    addresses = service_addresses(view)
    web = _chain(listener, f"{WEB}:8080")
    assert web.filters[0].name == HCM_FILTER_NAME
    assert web.filter_chain_match.destination_port.value == 8080
    (prefix,) = web.filter_chain_match.prefix_ranges
    assert (prefix.address_prefix, prefix.prefix_len.value) == (addresses[WEB].address, 32)
    db = _chain(listener, f"{DB}:5432")
    assert _tcp_cluster(db) == f"outbound|5432||{DB}"
    assert db.filter_chain_match.prefix_ranges[0].address_prefix == addresses[DB].address


def test_an_auto_port_is_http_when_the_inspector_says_so_else_tcp(
    frontend_sidecar: ProxyNode,
) -> None:
    listener = build_transparent_outbound_listener(mixed_view(), transparent(frontend_sidecar))
    http = _chain(listener, f"{CACHE}:6379-http")
    assert http.filters[0].name == HCM_FILTER_NAME
    assert list(http.filter_chain_match.application_protocols) == ["http/1.1", "http/1.0", "h2c"]
    tcp = _chain(listener, f"{CACHE}:6379")
    assert not tcp.filter_chain_match.application_protocols
    assert _tcp_cluster(tcp) == f"outbound|6379||{CACHE}"
    assert tcp.filter_chain_match.destination_port.value == 6379


def test_anything_else_passes_through_and_loopback_is_refused(frontend_sidecar: ProxyNode) -> None:
    listener = build_transparent_outbound_listener(mixed_view(), transparent(frontend_sidecar))
    assert listener is not None
    assert _tcp_cluster(listener.default_filter_chain) == PASSTHROUGH_CLUSTER
    loopback = _chain(listener, "loopback-refused")
    assert _tcp_cluster(loopback) == BLACKHOLE_CLUSTER
    assert loopback.filter_chain_match.prefix_ranges[0].address_prefix == "127.0.0.0"
    clusters = {c.name: c for c in build_transparent_clusters(transparent(frontend_sidecar))}
    assert clusters[PASSTHROUGH_CLUSTER].type == clusters[PASSTHROUGH_CLUSTER].ORIGINAL_DST
    assert not clusters[BLACKHOLE_CLUSTER].load_assignment.endpoints


def test_no_two_chains_match_the_same_destination(frontend_sidecar: ProxyNode) -> None:
    listener = build_transparent_outbound_listener(mixed_view(), transparent(frontend_sidecar))
    assert listener is not None
    matches = [chain.filter_chain_match.SerializeToString() for chain in listener.filter_chains]
    assert len(matches) == len(set(matches))  # Envoy rejects a listener with duplicates
    for chain in listener.filter_chains:
        for prefix in chain.filter_chain_match.prefix_ranges:
            ipaddress.ip_network(f"{prefix.address_prefix}/{prefix.prefix_len.value}")


def test_explicit_sidecars_keep_their_proxy_listener_and_get_none_of_this(
    frontend_sidecar: ProxyNode,
) -> None:
    view = mixed_view()
    assert build_transparent_outbound_listener(view, frontend_sidecar) is None
    assert build_transparent_clusters(frontend_sidecar) == ()
    assert build_outbound_listener(view, frontend_sidecar) is not None
    assert build_outbound_listener(view, transparent(frontend_sidecar)) is None


def test_a_transparent_sidecars_snapshot_is_consistent(frontend_sidecar: ProxyNode) -> None:
    cache = SnapshotCache(GENERATORS, TranslationContext)
    cache.publish(mixed_view())
    snapshot = cache.snapshot_for(transparent(frontend_sidecar))
    assert snapshot is not None
    assert snapshot.dangling == () and snapshot.duplicate_names == ()
    assert OUTBOUND_LISTENER in snapshot.of_type(type_urls.LISTENER)
    clusters = snapshot.of_type(type_urls.CLUSTER)
    assert PASSTHROUGH_CLUSTER in clusters and BLACKHOLE_CLUSTER in clusters
