"""Locality-aware load balancing: priorities per caller, distribute weights, failoverPriority,
and which proxies share which assignments."""

from __future__ import annotations

from dataclasses import replace

from conftest import BACKEND, http_port, mesh_service, meta, view_of
from envoy.config.endpoint.v3 import endpoint_pb2

from pilotfish.discovery import build_view
from pilotfish.load import load_text
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resilience import (
    LocalityDistribution,
    LocalityFailover,
    LocalityLbSetting,
    OutlierDetection,
)
from pilotfish.model.resources import (
    DestinationRule,
    LoadBalancer,
    MeshConfig,
    MeshSettings,
    Subset,
    TrafficPolicy,
)
from pilotfish.model.services import Endpoint, MeshView
from pilotfish.snapshot import SnapshotCache, type_urls
from pilotfish.translate import GENERATORS, MeshTranslator, TranslationContext
from pilotfish.translate.locality import (
    Caller,
    LocalityGroup,
    LocalityPolicy,
    Place,
    by_labels,
    by_locality,
    caller_of,
    distribute,
    failover_labels,
    group_by_locality,
    prioritize,
)

CLUSTER = f"outbound|8080||{BACKEND}"
DETECTION = OutlierDetection(consecutive_5xx_errors=1)


def group(locality: str | None, *weights: int, priority: int = 0) -> LocalityGroup:
    endpoints = tuple(
        Endpoint(f"10.0.0.{i}", {8080: 80}, weight=w, locality=locality)
        for i, w in enumerate(weights or (1,))
    )
    return LocalityGroup(locality, endpoints, sum(weights or (1,)), priority)


def priorities(groups: tuple[LocalityGroup, ...]) -> dict[str | None, int]:
    return {g.locality: g.priority for g in groups}


# --- priorities by locality --------------------------------------------------------------


NEAR_TO_FAR = (
    group("us-east/a/1"),
    group("us-east/a/2"),
    group("us-east/b/1"),
    group("eu-west/c/1"),
    group("ap-south/d/1"),
    group(None),
)


def test_priorities_follow_subzone_zone_region_then_failover_target() -> None:
    failover = (LocalityFailover("us-east", "eu-west"), LocalityFailover("eu-west", "us-east"))
    ranked = by_locality(NEAR_TO_FAR, Place.of("us-east/a/1"), failover)
    assert priorities(ranked) == {
        "us-east/a/1": 0,
        "us-east/a/2": 1,
        "us-east/b/1": 2,
        "eu-west/c/1": 3,
        "ap-south/d/1": 4,
        None: 4,
    }


def test_without_failover_every_other_region_is_one_priority() -> None:
    ranked = by_locality(NEAR_TO_FAR, Place.of("us-east/a/1"), ())
    assert priorities(ranked)["eu-west/c/1"] == priorities(ranked)["ap-south/d/1"] == 3
    # A failover rule for another region changes nothing for this caller.
    other = by_locality(NEAR_TO_FAR, Place.of("us-east/a/1"), (LocalityFailover("x", "y"),))
    assert other == ranked


def test_priorities_have_no_gaps() -> None:
    """Envoy wants 0..N: a caller with nothing in its zone still gets a priority 0."""
    groups = (group("us-east/b/1"), group("eu-west/c/1"))
    assert priorities(by_locality(groups, Place.of("us-east/a/1"), ())) == {
        "us-east/b/1": 0,
        "eu-west/c/1": 1,
    }


def test_a_caller_without_locality_prefers_endpoints_without_one() -> None:
    """As Istio compares an empty locality: only the same (empty) one is near."""
    ranked = by_locality((group("us-east/a/1"), group(None)), Place.of(None), ())
    assert priorities(ranked) == {None: 0, "us-east/a/1": 1}


def test_groups_weigh_what_their_endpoints_weigh() -> None:
    endpoints = [
        Endpoint("10.0.0.1", {}, weight=3, locality="b"),
        Endpoint("10.0.0.2", {}, weight=0, locality="a"),
        Endpoint("10.0.0.3", {}, weight=2, locality="b"),
    ]
    groups = group_by_locality(endpoints)
    assert [(g.locality, g.weight, len(g.endpoints)) for g in groups] == [("a", 1, 1), ("b", 5, 2)]


# --- distribute ----------------------------------------------------------------------------


def test_distribute_sets_locality_weights_for_matching_callers() -> None:
    groups = (group("us-east/a/1", 1), group("us-east/a/2", 3), group("us-east/b/1"), group("eu"))
    rules = (
        LocalityDistribution("eu/*", {"eu": 100}),
        LocalityDistribution("us-east/a/*", {"us-east/a/*": 80, "us-east/b/*": 20}),
    )
    weighted = distribute(groups, Place.of("us-east/a/1"), rules)
    # us-east/a/* matches two groups weighing 1 and 3: its 80 is shared 20/60; eu is not
    # named, so it goes.
    assert {g.locality: g.weight for g in weighted} == {
        "us-east/a/1": 20,
        "us-east/a/2": 60,
        "us-east/b/1": 20,
    }
    assert all(g.priority == 0 for g in weighted)


def test_distribute_rounds_shares_up() -> None:
    groups = (group("a/1"), group("a/2"), group("a/3"))
    weighted = distribute(groups, Place.of("a/1"), (LocalityDistribution("a", {"a": 100}),))
    assert [g.weight for g in weighted] == [34, 34, 34]


def test_distribute_leaves_callers_no_rule_matches_alone() -> None:
    groups = (group("us-east/a/1"), group("eu"))
    rules = (LocalityDistribution("eu", {"eu": 100}),)
    assert distribute(groups, Place.of("us-east/a/1"), rules) == groups


# --- failoverPriority ----------------------------------------------------------------------


def labelled(locality: str, **labels: str) -> Endpoint:
    return Endpoint(f"10.0.0.{len(labels)}", {}, labels=labels, locality=locality)


def test_failover_priority_ranks_by_the_longest_matching_prefix_of_labels() -> None:
    endpoints = (
        labelled("r1/z1", version="v1", tier="gold"),
        labelled("r1/z1", version="v1", tier="silver"),
        labelled("r1/z1", version="v2", tier="gold"),
    )
    (one,) = group_by_locality(endpoints)
    ranked = by_labels((one,), {"version": "v1", "tier": "gold"}, ("version", "tier"))
    # Both labels match: 0; only version: 1; not even version: 2 (one group each).
    assert [(g.priority, [dict(e.labels) for e in g.endpoints]) for g in ranked] == [
        (0, [{"version": "v1", "tier": "gold"}]),
        (1, [{"version": "v1", "tier": "silver"}]),
        (2, [{"version": "v2", "tier": "gold"}]),
    ]
    assert [g.weight for g in ranked] == [1, 1, 1]


def test_failover_priority_overrides_and_topology_labels() -> None:
    """``label=value`` compares with the value, not the caller's; topology labels come from
    localities."""
    endpoints = (labelled("r1/z1", version="v2"), labelled("r1/z2", version="v1"))
    groups = group_by_locality(endpoints)
    caller = {"topology.kubernetes.io/zone": "z2", "version": "v1"}
    by_zone = by_labels(groups, caller, ("topology.kubernetes.io/zone",))
    assert priorities(by_zone) == {"r1/z2": 0, "r1/z1": 1}
    by_version = by_labels(groups, caller, ("version=v2",))
    assert priorities(by_version) == {"r1/z1": 0, "r1/z2": 1}


def test_failover_priority_then_failover_compose() -> None:
    endpoints = (
        labelled("r1/z1", version="v2"),
        labelled("r2/z1", version="v1"),
        labelled("r3/z1", version="v1"),
    )
    setting = LocalityLbSetting(
        failover=(LocalityFailover("r1", "r3"),), failover_priority=("version",)
    )
    caller = Caller("r1/z1", (("version", "v1"),), labelled=True)
    ranked = prioritize(group_by_locality(endpoints), caller, LocalityPolicy(setting, True))
    # version first (v1 before v2), then within v1 the failover target r3 before r2.
    assert priorities(ranked) == {"r3/z1": 0, "r2/z1": 1, "r1/z1": 2}


def test_an_override_applies_to_a_caller_without_that_label() -> None:
    """Istio skips ``failoverPriority`` only for a proxy with no label at all: a caller
    labelled app=frontend (no env label) still prefers env=prod."""
    endpoints = (labelled("r1/z1", env="prod"), labelled("r1/z2", env="dev"))
    policy = LocalityPolicy(LocalityLbSetting(failover_priority=("env=prod",)), True)
    caller = caller_of(ProxyNode(id="c", labels={"app": "frontend"}), ("env",))
    assert priorities(prioritize(group_by_locality(endpoints), caller, policy)) == {
        "r1/z1": 0,
        "r1/z2": 1,
    }
    unlabelled = caller_of(ProxyNode(id="d"), ("env",))
    assert priorities(prioritize(group_by_locality(endpoints), unlabelled, policy)) == {
        "r1/z1": 0,
        "r1/z2": 0,
    }


def test_nothing_changes_without_outlier_detection() -> None:
    groups = group_by_locality((labelled("r1/z1"), labelled("r2/z1")))
    policy = LocalityPolicy(LocalityLbSetting(), failover=False)
    assert prioritize(groups, Caller("r2/z1"), policy) == groups


# --- translation -------------------------------------------------------------------------------


def backend_view(
    policy: TrafficPolicy | None, mesh_setting: LocalityLbSetting | None = None
) -> MeshView:
    rule = DestinationRule(
        meta=meta("DestinationRule", "backend"),
        host="backend",
        traffic_policy=policy,
        subsets=(Subset("v1", {"version": "v1"}),),
    )
    config = MeshConfig(
        destination_rules=(rule,),
        mesh=replace(MeshSettings(), locality_lb_setting=mesh_setting),
    )
    endpoints = tuple(
        Endpoint("127.0.0.1", {8080: port}, {"version": "v1"}, name=f"b-{zone}", locality=zone)
        for port, zone in ((7001, "r1/za"), (7002, "r1/zb"))
    )
    return view_of(config, mesh_service("backend", http_port(8080)), backend=endpoints)


def caller(node_id: str, locality: str | None = None) -> ProxyNode:
    return ProxyNode(id=node_id, outbound_port=1, inbound_port=2, app_port=3, locality=locality)


def assignment_for(view: MeshView, node: ProxyNode) -> endpoint_pb2.ClusterLoadAssignment:
    found = [
        a
        for a in MeshTranslator(view).resources_for(node).load_assignments
        if a.cluster_name == CLUSTER
    ]
    assert len(found) == 1  # never both a shared and a caller's own
    return found[0]


def zones(assignment: endpoint_pb2.ClusterLoadAssignment) -> dict[str, tuple[int, int]]:
    return {
        f"{g.locality.region}/{g.locality.zone}": (g.priority, g.load_balancing_weight.value)
        for g in assignment.endpoints
    }


def test_outlier_detection_makes_the_callers_zone_priority_zero() -> None:
    view = backend_view(TrafficPolicy(outlier_detection=DETECTION))
    assert zones(assignment_for(view, caller("a", "r1/za"))) == {"r1/za": (0, 1), "r1/zb": (1, 1)}
    assert zones(assignment_for(view, caller("b", "r1/zb"))) == {"r1/za": (1, 1), "r1/zb": (0, 1)}
    # Its subset's cluster inherits the rule's outlier detection.
    subset = next(
        a
        for a in MeshTranslator(view).resources_for(caller("b", "r1/zb")).load_assignments
        if a.cluster_name == f"outbound|8080|v1|{BACKEND}"
    )
    assert zones(subset) == {"r1/za": (1, 1), "r1/zb": (0, 1)}


def test_without_outlier_detection_every_caller_sees_one_priority() -> None:
    view = backend_view(TrafficPolicy(load_balancer=LoadBalancer(simple="RANDOM")))
    assert zones(assignment_for(view, caller("a", "r1/za"))) == {"r1/za": (0, 1), "r1/zb": (0, 1)}


def test_disabled_locality_lb_is_off_in_the_rule_or_the_mesh() -> None:
    off = LocalityLbSetting(enabled=False)
    on = LocalityLbSetting(enabled=True)
    rule_off = TrafficPolicy(
        outlier_detection=DETECTION, load_balancer=LoadBalancer(locality_lb_setting=off)
    )
    mesh_off = backend_view(TrafficPolicy(outlier_detection=DETECTION), mesh_setting=off)
    rule_on = TrafficPolicy(
        outlier_detection=DETECTION, load_balancer=LoadBalancer(locality_lb_setting=on)
    )
    flat = {"r1/za": (0, 1), "r1/zb": (0, 1)}
    assert zones(assignment_for(backend_view(rule_off), caller("a", "r1/za"))) == flat
    assert zones(assignment_for(mesh_off, caller("a", "r1/za"))) == flat
    # The rule's own setting replaces the mesh's.
    overruled = backend_view(rule_on, mesh_setting=off)
    assert zones(assignment_for(overruled, caller("a", "r1/za")))["r1/zb"] == (1, 1)


def test_the_mesh_distribute_applies_without_a_rule_setting() -> None:
    to_b = LocalityLbSetting(
        distribute=(LocalityDistribution("r1/za", {"r1/za": 10, "r1/zb": 90}),)
    )
    view = backend_view(None, mesh_setting=to_b)
    assert zones(assignment_for(view, caller("a", "r1/za"))) == {
        "r1/za": (0, 10),
        "r1/zb": (0, 90),
    }
    (cluster,) = [
        c for c in MeshTranslator(view).resources_for(caller("a")).clusters if c.name == CLUSTER
    ]
    assert cluster.common_lb_config.HasField("locality_weighted_lb_config")


def test_locality_weights_are_asked_of_envoy_only_where_istio_asks() -> None:
    def weighted(policy: TrafficPolicy) -> bool:
        resources = MeshTranslator(backend_view(policy)).resources_for(caller("a", "r1/za"))
        (cluster,) = [c for c in resources.clusters if c.name == CLUSTER]
        return cluster.common_lb_config.HasField("locality_weighted_lb_config")

    failover = LoadBalancer(
        locality_lb_setting=LocalityLbSetting(failover=(LocalityFailover("r1", "r2"),))
    )
    assert weighted(TrafficPolicy(load_balancer=failover, outlier_detection=DETECTION))
    assert not weighted(TrafficPolicy(load_balancer=failover))  # no failover without it
    assert not weighted(TrafficPolicy(outlier_detection=DETECTION))  # default failover


def test_only_failover_priorities_that_apply_tell_callers_apart() -> None:
    """Beside ``distribute`` (or disabled) Istio ignores ``failoverPriority``: its labels
    must not split callers into separate assignments."""
    distributed = LocalityLbSetting(
        distribute=(LocalityDistribution("r1/*", {"r1/*": 100}),), failover_priority=("tier",)
    )
    disabled = LocalityLbSetting(failover_priority=("zone",), enabled=False)
    applied = LocalityLbSetting(failover_priority=("version",))
    for setting, expected in ((distributed, ()), (disabled, ()), (applied, ("version",))):
        view = backend_view(TrafficPolicy(load_balancer=LoadBalancer(locality_lb_setting=setting)))
        assert failover_labels(view.config) == expected


def test_callers_in_one_locality_share_one_assignment_and_the_rest_share_theirs() -> None:
    cache: SnapshotCache[TranslationContext] = SnapshotCache(GENERATORS, TranslationContext)
    cache.publish(backend_view(TrafficPolicy(outlier_detection=DETECTION)))
    snapshots = {
        node.id: cache.snapshot_for(node)
        for node in (
            caller("a-0", "r1/za"),
            caller("a-1", "r1/za"),
            caller("b-0", "r1/zb"),
            caller("x-0"),
            caller("x-1"),
        )
    }
    found = {
        node_id: s.of_type(type_urls.ENDPOINT)[CLUSTER]
        for node_id, s in snapshots.items()
        if s is not None
    }
    assert found["a-0"] is found["a-1"]
    assert found["x-0"] is found["x-1"]
    assert len({id(found[n]) for n in ("a-0", "b-0", "x-0")}) == 3
    stats = cache.stats().generators["locality-load-assignments"]
    assert stats.misses == 3  # one build per locality (and one for none)


def test_service_entry_and_workload_entry_endpoints_carry_their_locality() -> None:
    result = load_text(
        """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [ext.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.2, locality: eu-west/b}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vms}
spec:
  hosts: [vms.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: vm}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1}
spec: {address: 10.0.0.3, labels: {app: vm}, locality: us-east/a/1}
""",
        "entries.yaml",
    )
    assert result.config is not None, result.diagnostics
    view = build_view(result.config)
    assert [e.locality for e in view.endpoints_of("ext.example.com")] == ["eu-west/b"]
    assert [e.locality for e in view.endpoints_of("vms.example.com")] == ["us-east/a/1"]
