"""Snapshots built in layers (shared part packed once) must equal those built in one go."""

from __future__ import annotations

from pathlib import Path

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2

from pilotfish.discovery import build_view
from pilotfish.load import load_text
from pilotfish.model.proxy import ProxyNode
from pilotfish.snapshot import SharedMessagePacker, check_consistency, make_snapshot, type_urls
from pilotfish.translate import MeshTranslator, ProxyResources
from pilotfish.translate.translator import ResourceSet

MESH = """
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {name: web}
spec: {service: web, port: 8080, command: [web], labels: {version: v1}}
---
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {name: api}
spec: {service: api, port: 9090, command: [api], labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec: {host: api, subsets: [{name: v2, labels: {version: v2}}]}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec: {selector: {}, servers: [{port: {number: 18080, name: http, protocol: HTTP}, hosts: ["*"]}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: api, subset: v2}}]}]
"""
SIDECAR = ProxyNode(id="web-0", service="web", outbound_port=1, inbound_port=2, app_port=3)
GATEWAY = ProxyNode(id="gw-0", kind="gateway")
TYPES = (type_urls.CLUSTER, type_urls.ENDPOINT, type_urls.LISTENER, type_urls.ROUTE)


def translator() -> MeshTranslator:
    result = load_text(MESH, "mesh.yaml", directory=Path("/tmp"))
    assert result.config is not None, result.diagnostics
    return MeshTranslator(build_view(result.config))


def as_plain(resources: ProxyResources) -> ProxyResources:
    return ProxyResources(
        resources.clusters, resources.load_assignments, resources.listeners, resources.routes
    )


def contents(snapshot: object) -> dict[str, dict[str, str]]:
    return {
        type_url: {name: resource.version for name, resource in named.items()}
        for type_url, named in snapshot.resources.items()  # type: ignore[attr-defined]
    }


def test_layered_and_plain_snapshots_hold_the_same_resources() -> None:
    packer = SharedMessagePacker()
    mesh = translator()
    for node in (SIDECAR, GATEWAY):
        layered = make_snapshot(mesh.resources_for(node), packer)
        plain = make_snapshot(as_plain(mesh.resources_for(node)))
        assert contents(layered) == contents(plain)
        assert check_consistency(layered) == check_consistency(plain) == []
        for type_url in (type_urls.CLUSTER, type_urls.ENDPOINT, type_urls.ROUTE):
            assert layered.type_version(type_url) == plain.type_version(type_url)


def test_the_shared_part_is_packed_once_for_every_proxy() -> None:
    packer = SharedMessagePacker()
    mesh = translator()
    first = make_snapshot(mesh.resources_for(SIDECAR), packer)
    other = ProxyNode(id="web-1", service="web", outbound_port=4, inbound_port=5, app_port=6)
    second = make_snapshot(mesh.resources_for(other), packer)
    assert first.of_type(type_urls.ENDPOINT) == second.of_type(type_urls.ENDPOINT)
    shared_cluster = "outbound|9090|v2|api.default.svc.cluster.local"
    assert (
        first.of_type(type_urls.CLUSTER)[shared_cluster]
        is second.of_type(type_urls.CLUSTER)[shared_cluster]
    )
    assert first.version != second.version  # their own listeners differ


def test_layered_check_finds_what_the_plain_check_finds() -> None:
    """A proxy's own route naming a missing cluster, and an own cluster shadowing a shared one."""
    mesh = translator()
    good = mesh.resources_for(SIDECAR)
    assert good.shared is not None
    dangling_route = route_pb2.RouteConfiguration(name="own-routes")
    route = dangling_route.virtual_hosts.add(name="x", domains=["x"]).routes.add()
    route.match.prefix = "/"
    route.route.cluster = "no-such-cluster"
    twin = cluster_pb2.Cluster(name=good.shared.clusters[0].name, type=cluster_pb2.Cluster.STATIC)
    broken = ProxyResources(
        clusters=(*good.clusters, twin),
        load_assignments=good.load_assignments,
        listeners=good.listeners,
        routes=(*good.routes, dangling_route),
        shared=ResourceSet(
            clusters=good.shared.clusters,
            load_assignments=good.shared.load_assignments,
            routes=good.shared.routes,
        ),
    )
    layered = check_consistency(make_snapshot(broken, SharedMessagePacker()))
    plain = check_consistency(make_snapshot(as_plain(broken)))
    assert sorted(layered) == sorted(plain)
    assert any("no-such-cluster" in problem for problem in layered)
    assert any("defined more than once" in problem for problem in layered)


def naive_changes(old: object, new: object, type_url: str) -> set[str]:
    before = {n: r.version for n, r in old.of_type(type_url).items()}  # type: ignore[attr-defined]
    after = {n: r.version for n, r in new.of_type(type_url).items()}  # type: ignore[attr-defined]
    return {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}


def test_changes_between_layered_snapshots_cover_every_real_change() -> None:
    from pilotfish.snapshot import changed_names_between

    packer = SharedMessagePacker()
    first = translator()
    moved = MESH.replace("port: 9090", "port: 9191")  # changes shared clusters and routes
    result = load_text(moved, "mesh.yaml", directory=Path("/tmp"))
    assert result.config is not None
    second = MeshTranslator(build_view(result.config))
    other_sidecar = ProxyNode(
        id="web-0", service="web", outbound_port=1, inbound_port=2, app_port=7
    )
    pairs = [
        (first.resources_for(SIDECAR), second.resources_for(SIDECAR)),
        (first.resources_for(SIDECAR), first.resources_for(other_sidecar)),  # own layer only
        (first.resources_for(GATEWAY), second.resources_for(GATEWAY)),
    ]
    for old_resources, new_resources in pairs:
        old = make_snapshot(old_resources, packer)
        new = make_snapshot(new_resources, SharedMessagePacker())
        for type_url in (
            type_urls.CLUSTER,
            type_urls.ENDPOINT,
            type_urls.LISTENER,
            type_urls.ROUTE,
        ):
            reported = set(changed_names_between(old, new, type_url))
            assert naive_changes(old, new, type_url) <= reported, type_url
