"""The snapshot cache with generators of our own making: outputs are kept exactly as long as
the inputs each generator declares, a new resource type is one generator, layers are shared."""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf.message import Message

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import MeshConfig, ServicePort
from pilotfish.model.services import Endpoint, MeshView, Service
from pilotfish.snapshot import (
    Input,
    MeshGenerator,
    NodeGenerator,
    PackingCache,
    Resource,
    ServiceGenerator,
    Snapshot,
    SnapshotCache,
    layered_snapshot,
    make_layer,
    type_urls,
)

PORT = (ServicePort(80, "http", "HTTP"),)


def view(
    config: MeshConfig, services: Sequence[str], endpoints: dict[str, int] | None = None
) -> MeshView:
    found = {h: Service(h, PORT) for h in services}
    return MeshView(
        config=config,
        services=found,
        endpoints={
            h: (Endpoint("127.0.0.1", {80: port}),) for h, port in (endpoints or {}).items()
        },
    )


def assignments(context: MeshView, service: Service) -> Sequence[Message]:
    port = [e.ports[80] for e in context.endpoints_of(service.hostname)]
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=service.hostname)
    for value in port:
        lb = cla.endpoints.add().lb_endpoints.add()
        lb.endpoint.address.socket_address.port_value = value
    return (cla,)


def clusters(context: MeshView) -> Sequence[Message]:
    return tuple(
        cluster_pb2.Cluster(name=h, type=cluster_pb2.Cluster.STATIC) for h in context.services
    )


def node_secret(_context: MeshView, node: ProxyNode) -> Sequence[Message]:
    # A per-proxy secret, as a workload certificate would be.
    return (secret_pb2.Secret(name=f"default-{node.labels.get('sa', 'none')}"),)


GENERATORS = (
    MeshGenerator("clusters", type_urls.CLUSTER, frozenset({Input.SERVICES}), clusters),
    ServiceGenerator("assignments", type_urls.ENDPOINT, frozenset({Input.ENDPOINTS}), assignments),
    NodeGenerator(
        "secrets",
        type_urls.SECRET,
        frozenset(),
        node_secret,
        node_key=lambda _context, node: node.labels.get("sa", "none"),
    ),
)
A = ProxyNode("a-0", labels={"sa": "a"})
A2 = ProxyNode("a-1", labels={"sa": "a"})
B = ProxyNode("b-0", labels={"sa": "b"})


def new_cache() -> SnapshotCache[MeshView]:
    return SnapshotCache(GENERATORS, lambda v: v)


def counts(cache: SnapshotCache[MeshView]) -> dict[str, tuple[int, int]]:
    return {name: (s.hits, s.misses) for name, s in cache.stats().generators.items()}


def test_a_new_resource_type_is_one_generator_and_arrives_in_push_order() -> None:
    cache = new_cache()
    cache.publish(view(MeshConfig(), ["x"], {"x": 1}))
    snapshot = cache.snapshot_for(A)
    assert snapshot is not None
    assert list(snapshot.resources) == [type_urls.CLUSTER, type_urls.ENDPOINT, type_urls.SECRET]
    assert list(snapshot.of_type(type_urls.SECRET)) == ["default-a"]


def test_outputs_are_rebuilt_only_when_a_declared_input_changes() -> None:
    cache = new_cache()
    config = MeshConfig()
    cache.publish(view(config, ["x", "y"], {"x": 1, "y": 1}))
    cache.snapshot_for(A)
    assert counts(cache) == {"clusters": (0, 1), "assignments": (0, 2), "secrets": (0, 1)}

    cache.publish(view(config, ["x", "y"], {"x": 2, "y": 1}))  # x's endpoints only
    cache.snapshot_for(A)
    assert counts(cache) == {"clusters": (1, 1), "assignments": (1, 3), "secrets": (1, 1)}

    cache.publish(view(config, ["x", "y", "z"], {"x": 2, "y": 1}))  # a new service
    cache.snapshot_for(A)
    assert counts(cache) == {"clusters": (1, 2), "assignments": (3, 4), "secrets": (2, 1)}


def test_proxies_with_the_same_node_key_share_one_output() -> None:
    cache = new_cache()
    cache.publish(view(MeshConfig(), ["x"]))
    first, second, other = (cache.snapshot_for(n) for n in (A, A2, B))
    assert first is not None and second is not None and other is not None
    secret = type_urls.SECRET
    assert first.of_type(secret)["default-a"] is second.of_type(secret)["default-a"]
    assert list(other.of_type(secret)) == ["default-b"]
    assert counts(cache)["secrets"] == (1, 2)


def test_an_unchanged_generation_hands_out_the_same_snapshot_object() -> None:
    cache = new_cache()
    config = MeshConfig()
    cache.publish(view(config, ["x"], {"x": 1}))
    before = cache.snapshot_for(A)
    cache.publish(view(config, ["x"], {"x": 1}))
    assert cache.snapshot_for(A) is before


def test_changes_are_named_per_type_between_generations() -> None:
    cache = new_cache()
    config = MeshConfig()
    cache.publish(view(config, ["x", "y"], {"x": 1, "y": 1}))
    old = cache.snapshot_for(A)
    cache.publish(view(config, ["x", "y"], {"x": 1, "y": 2}))
    new = cache.snapshot_for(A)
    assert old is not None and new is not None
    assert new.changed_names(old, type_urls.ENDPOINT) == ("y",)
    assert new.changed_names(old, type_urls.CLUSTER) == ()
    assert new.changed_names(old, type_urls.SECRET) == ()


def test_a_generator_that_raises_costs_only_its_proxy_and_is_reported() -> None:
    def failing(_context: MeshView, node: ProxyNode) -> Sequence[Message]:
        if node.id == "b-0":
            raise RuntimeError("boom")
        return ()

    cache = SnapshotCache(
        (*GENERATORS, NodeGenerator("failing", type_urls.LISTENER, frozenset(), failing)),
        lambda v: v,
    )
    cache.publish(view(MeshConfig(), ["x"]))
    assert cache.snapshot_for(A) is not None
    assert cache.snapshot_for(B) is None
    assert "boom" in cache.problems["b-0"][0]
    assert "a-0" not in cache.problems


def test_a_proxys_dangling_reference_is_checked_again_when_the_shared_layer_changes() -> None:
    from envoy.config.route.v3 import route_pb2

    def routes(_context: MeshView, _node: ProxyNode) -> Sequence[Message]:
        config = route_pb2.RouteConfiguration(name="outbound")
        config.virtual_hosts.add(name="all", domains=["*"]).routes.add().route.cluster = "y"
        return (config,)

    cache = SnapshotCache(
        (*GENERATORS, NodeGenerator("routes", type_urls.ROUTE, frozenset(), routes)),
        lambda v: v,
    )
    config = MeshConfig()
    cache.publish(view(config, ["x"]))
    assert cache.snapshot_for(A) is None
    assert "references cluster 'y', which does not exist" in cache.problems["a-0"][0]
    cache.publish(view(config, ["x", "y"]))  # the cluster appears in the shared layer
    snapshot = cache.snapshot_for(A)
    assert snapshot is not None
    assert cache.problems == {}
    cache.publish(view(config, ["x"]))  # and goes again
    assert cache.snapshot_for(A) is snapshot  # the last good one
    assert "which does not exist" in cache.problems["a-0"][0]


def test_a_failed_shared_build_costs_one_try_per_generation_and_is_tried_again_next() -> None:
    failing = {"y"}
    tries: list[str] = []

    def flaky(context: MeshView, service: Service) -> Sequence[Message]:
        tries.append(service.hostname)
        if service.hostname in failing:
            raise RuntimeError(f"cannot build {service.hostname}")
        return assignments(context, service)

    cache = SnapshotCache(
        (ServiceGenerator("assignments", type_urls.ENDPOINT, frozenset(), flaky),), lambda v: v
    )
    config = MeshConfig()
    cache.publish(view(config, ["x", "y"]))
    assert cache.snapshot_for(A) is None
    assert cache.snapshot_for(B) is None  # the same failure, not a second build
    assert tries.count("y") == 1
    assert "cannot build y" in cache.problems["a-0"][0]
    assert cache.problems["b-0"] == cache.problems["a-0"]

    failing.clear()
    cache.publish(view(config, ["x", "y"]))  # nothing changed, but y is tried again
    snapshot = cache.snapshot_for(A)
    assert snapshot is not None
    assert set(snapshot.of_type(type_urls.ENDPOINT)) == {"x", "y"}


def counting_generators(
    keys: list[str],
) -> tuple[MeshGenerator[MeshView] | ServiceGenerator[MeshView] | NodeGenerator[MeshView], ...]:
    """GENERATORS plus a proxy's own cluster (over the shared ones) and an own assignment that
    depends on every endpoint; both note each time their key is worked out."""

    def own_cluster(_context: MeshView, node: ProxyNode) -> Sequence[Message]:
        return (cluster_pb2.Cluster(name=f"inbound-{node.id}", type=cluster_pb2.Cluster.STATIC),)

    def own_assignment(context: MeshView, node: ProxyNode) -> Sequence[Message]:
        ports = sorted(e.ports[80] for h in context.services for e in context.endpoints_of(h))
        cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=f"own-{node.id}")
        for value in ports:
            cla.endpoints.add().lb_endpoints.add().endpoint.address.socket_address.port_value = (
                value
            )
        return (cla,)

    def key(name: str) -> object:
        def of(_context: MeshView, node: ProxyNode) -> str:
            keys.append(name)
            return node.id

        return of

    return (
        *GENERATORS,
        NodeGenerator(
            "own-cluster", type_urls.CLUSTER, frozenset(), own_cluster, node_key=key("c")
        ),
        NodeGenerator(
            "own-assignment",
            type_urls.ENDPOINT,
            frozenset({Input.ENDPOINTS}),
            own_assignment,
            node_key=key("e"),
        ),
    )


def test_own_outputs_are_looked_up_again_only_when_the_node_or_their_inputs_change() -> None:
    keys: list[str] = []
    cache = SnapshotCache(counting_generators(keys), lambda v: v)
    config = MeshConfig()
    cache.publish(view(config, ["x"], {"x": 1}))
    cache.snapshot_for(A)
    assert keys == ["c", "e"]

    keys.clear()
    cache.publish(view(config, ["x"], {"x": 2}))  # endpoints: only the assignment needs them
    snapshot = cache.snapshot_for(A)
    assert snapshot is not None
    assert keys == ["e"]
    fresh = fresh_snapshot(counting_generators([]), view(config, ["x"], {"x": 2}), A)
    built = snapshot.of_type(type_urls.ENDPOINT)["own-a-0"]
    assert built.version == fresh.of_type(type_urls.ENDPOINT)["own-a-0"].version
    assert counts(cache)["own-cluster"] == (1, 1)  # the skipped lookup counts as a hit

    keys.clear()
    cache.publish(view(config, ["x"], {"x": 2}))
    cache.snapshot_for(ProxyNode("a-0", labels={"sa": "a"}))  # equal to A, another object
    assert keys == []
    cache.publish(view(config, ["x"], {"x": 2}))
    cache.snapshot_for(ProxyNode("a-0", labels={"sa": "c"}))  # the node itself changed
    assert keys == ["c", "e"]


def fresh_snapshot(
    generators: Sequence[
        MeshGenerator[MeshView] | ServiceGenerator[MeshView] | NodeGenerator[MeshView]
    ],
    mesh: MeshView,
    node: ProxyNode,
) -> Snapshot:
    """The node's snapshot from a cache that never saw an earlier generation."""
    cache = SnapshotCache(generators, lambda v: v)
    cache.publish(mesh)
    snapshot = cache.snapshot_for(node)
    assert snapshot is not None
    return snapshot


def versions(snapshot: Snapshot, type_url: str) -> dict[str, str]:
    return {name: r.version for name, r in snapshot.of_type(type_url).items()}


def test_a_type_whose_shared_part_did_not_change_keeps_its_mapping_and_version() -> None:
    # The proxy's own cluster stays; the shared assignments change.
    generators = tuple(g for g in counting_generators([]) if g.name != "own-assignment")
    cache = SnapshotCache(generators, lambda v: v)
    config = MeshConfig()
    cache.publish(view(config, ["x", "y"], {"x": 1, "y": 1}))
    old = cache.snapshot_for(A)
    later = view(config, ["x", "y"], {"x": 1, "y": 2})
    cache.publish(later)
    new = cache.snapshot_for(A)
    assert old is not None and new is not None
    # Clusters (shared ones with the proxy's own over them): the same object.
    assert new.of_type(type_urls.CLUSTER) is old.of_type(type_urls.CLUSTER)
    assert new.changed_names(old, type_urls.CLUSTER) == ()
    assert new.of_type(type_urls.ENDPOINT) is not old.of_type(type_urls.ENDPOINT)
    # And the same content and versions as a snapshot made from nothing.
    fresh = fresh_snapshot(generators, later, A)
    assert new.version == fresh.version
    for type_url in fresh.resources:
        assert versions(new, type_url) == versions(fresh, type_url)
        assert new.type_version(type_url) == fresh.type_version(type_url)


def test_a_snapshot_made_from_the_previous_one_says_what_one_made_from_nothing_says() -> None:
    # Pure layers: the proxy's own cluster "x" replaces the shared one (a duplicate the
    # consistency check reports), and the shared assignments change between the two.
    packing = PackingCache()
    cds, eds = type_urls.CLUSTER, type_urls.ENDPOINT

    def cluster(name: str, seconds: int) -> Resource:
        message = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
        message.connect_timeout.seconds = seconds
        return packing.pack(cds, message)

    def assignment(name: str, port: int) -> Resource:
        message = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
        message.endpoints.add().lb_endpoints.add().endpoint.address.socket_address.port_value = port
        return packing.pack(eds, message)

    clusters = {"x": cluster("x", 1), "y": cluster("y", 1)}
    own = make_layer({cds: {"x": cluster("x", 2)}})
    before = make_layer({cds: clusters, eds: {"x": assignment("x", 1), "y": assignment("y", 1)}})
    after = make_layer({cds: clusters, eds: {"x": assignment("x", 1), "y": assignment("y", 2)}})
    first = layered_snapshot(before, own)
    # make_layer copies nothing: the clusters are the same mapping in both shared layers.
    assert before.by_type[cds] is after.by_type[cds]
    reused = layered_snapshot(after, own, previous=(before, first))
    fresh = layered_snapshot(after, own)
    assert reused.of_type(cds) is first.of_type(cds)
    assert reused.duplicate_names == fresh.duplicate_names == ((cds, "x"),)
    assert reused.dangling == fresh.dangling
    assert reused.version == fresh.version
    for type_url in (cds, eds):
        assert versions(reused, type_url) == versions(fresh, type_url)
        assert reused.type_version(type_url) == fresh.type_version(type_url)


def test_an_own_output_dropped_while_its_proxy_was_away_is_looked_up_again() -> None:
    keys: list[str] = []
    generators = tuple(g for g in counting_generators(keys) if g.name != "own-assignment")
    cache = SnapshotCache(generators, lambda v: v)
    config = MeshConfig()
    cache.publish(view(config, ["x"]))
    cache.snapshot_for(A)
    assert keys == ["c"]
    for _ in range(3):  # A does not ask for two generations: its own cluster is dropped
        cache.publish(view(config, ["x"]))
        cache.snapshot_for(B)
    keys.clear()
    cache.publish(view(config, ["x"]))
    cache.snapshot_for(A)
    assert keys == ["c"]  # looked up (and kept) again, not taken from A's own layer
    assert counts(cache)["own-cluster"][1] == 3  # A, B, and A again
