"""Locality-aware load balancing: which endpoints a caller prefers, as Istio computes it
(``pilot/pkg/networking/core/loadbalancer``).

Endpoints are grouped by locality (one ``LocalityLbEndpoints`` each). For a cluster whose
effective ``localityLbSetting`` is enabled (the mesh's, on by default, unless the
DestinationRule has its own), either ``distribute`` sets each locality's weight for callers
matching a ``from``, or, only when outlier detection is set (without ejections Envoy never
leaves priority 0), the groups get priorities relative to the caller: the same
region/zone/subzone 0, the same zone 1, the same region 2, a ``failover`` target region 3, the
rest 4, compacted to 0..N; ``failoverPriority`` ranks endpoints by how many of its labels
match the caller's first. Envoy then sends everything to priority 0 while it is healthy
enough and spills to the next one as endpoints are ejected.

So the assignment of such a cluster depends on the caller: ``Caller`` is what of a proxy it
depends on, and callers with equal ones share one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resilience import (
    TOPOLOGY_LABELS,
    LocalityDistribution,
    LocalityFailover,
    LocalityLbSetting,
)
from pilotfish.model.resources import DestinationRule, LoadBalancer, MeshConfig, TrafficPolicy
from pilotfish.model.services import Endpoint, MeshView, Service
from pilotfish.translate.destinations import DestinationIndex, EffectivePolicy

# Istio's spelling of "compare with this value, not the caller's": ``label=value``.
_OVERRIDE_SEPARATOR = "="
_SAME_SUBZONE, _SAME_ZONE, _SAME_REGION, _OTHER_REGION, _NOT_FAILOVER_TARGET = range(5)
_LOCALITY_PRIORITIES = 5


@dataclass(frozen=True)
class Place:
    region: str = ""
    zone: str = ""
    subzone: str = ""

    @classmethod
    def of(cls, locality: str | None) -> Place:
        region, _, rest = (locality or "").partition("/")
        zone, _, subzone = rest.partition("/")
        return cls(region, zone, subzone)

    def matches(self, rule: str) -> bool:
        """Whether a rule's locality (``*`` and missing parts match anything) covers this."""
        wanted = Place.of(rule)
        return (
            wanted.region in ("*", self.region)
            and wanted.zone in ("*", "", self.zone)
            and wanted.subzone in ("*", "", self.subzone)
        )

    def labels(self) -> dict[str, str]:
        """The topology labels Istio adds for this place."""
        values = (self.region, self.zone, self.subzone)
        return {name: value for name, value in zip(TOPOLOGY_LABELS, values, strict=True) if value}


@dataclass(frozen=True)
class Caller:
    """What of a calling proxy its assignments depend on: its locality, and its values of the
    labels the config's ``failoverPriority`` lists name (sorted by label); ``labelled`` says
    whether it has any label at all (its own or its locality's), which Istio requires before
    it applies ``failoverPriority``. When no ``failoverPriority`` applies, ``labels`` stays
    empty and ``labelled`` false, so that callers are not told apart for nothing."""

    locality: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    labelled: bool = False


def caller_of(node: ProxyNode, failover_labels: Sequence[str]) -> Caller:
    if not failover_labels:  # the usual case: callers differ by locality alone
        return Caller(node.locality)
    labels = {**node.labels, **Place.of(node.locality).labels()}
    return Caller(
        node.locality,
        tuple((name, labels.get(name, "")) for name in failover_labels),
        labelled=bool(failover_labels) and bool(labels),
    )


def failover_labels(config: MeshConfig) -> tuple[str, ...]:
    """Every label name a ``failoverPriority`` of the config compares, sorted."""
    settings = [config.mesh.locality_lb_setting]
    for rule in config.destination_rules:
        settings.extend(_balancer_settings(rule))
    return tuple(
        sorted(
            {
                label.partition(_OVERRIDE_SEPARATOR)[0]
                for setting in settings
                # Istio ignores failoverPriority beside distribute (or when disabled).
                if setting is not None and not setting.distribute and setting.enabled is not False
                for label in setting.failover_priority
            }
        )
    )


def _balancer_settings(rule: DestinationRule) -> Iterable[LocalityLbSetting | None]:
    policies: list[TrafficPolicy | None] = [rule.traffic_policy]
    policies.extend(subset.traffic_policy for subset in rule.subsets)
    balancers: list[LoadBalancer | None] = []
    for policy in policies:
        if policy is not None:
            balancers.append(policy.load_balancer)
            balancers.extend(port.load_balancer for port in policy.port_settings.values())
    return (b.locality_lb_setting for b in balancers if b is not None)


@dataclass(frozen=True)
class LocalityPolicy:
    """A cluster's locality load balancing, when it changes anything: the setting, and
    whether failover applies (outlier detection is set)."""

    setting: LocalityLbSetting
    failover: bool

    @property
    def weights_localities(self) -> bool:
        """Envoy must weigh localities (``locality_weighted_lb_config``), as Istio asks."""
        setting = self.setting
        return bool(setting.distribute) or (
            self.failover and bool(setting.failover or setting.failover_priority)
        )


def locality_policy(
    mesh_setting: LocalityLbSetting | None, policy: EffectivePolicy
) -> LocalityPolicy | None:
    """The cluster's setting (its DestinationRule's replaces the mesh's; with neither, Istio's
    default: enabled), or None when it would change nothing for any caller."""
    balancer = policy.load_balancer
    own = balancer.locality_lb_setting if balancer is not None else None
    setting = own or mesh_setting or LocalityLbSetting()
    if setting.enabled is False:
        return None
    failover = policy.outlier_detection is not None
    if not setting.distribute and not failover:
        return None
    return LocalityPolicy(setting, failover)


def cluster_locality_policy(
    view: MeshView, index: DestinationIndex, hostname: str, subset: str | None, port: int
) -> LocalityPolicy | None:
    policy = index.effective_policy(hostname, subset, port)
    return locality_policy(view.config.mesh.locality_lb_setting, policy)


def has_locality_clusters(view: MeshView, service: Service, index: DestinationIndex) -> bool:
    """Whether an EDS cluster of ``service`` has locality load balancing."""
    if service.resolution == "DNS":
        return False
    mesh_setting = view.config.mesh.locality_lb_setting
    if index.rule_for(service.hostname) is None and not (mesh_setting and mesh_setting.distribute):
        return False  # the common case, decided without merging policies
    subsets = [None, *(s.name for s in index.subsets_of(service.hostname))]
    return any(
        cluster_locality_policy(view, index, service.hostname, subset, port.number) is not None
        for port in service.ports
        for subset in subsets
    )


@dataclass(frozen=True)
class LocalityGroup:
    """Endpoints of one locality at one priority; ``weight`` is the locality's weight."""

    locality: str | None
    endpoints: tuple[Endpoint, ...]
    weight: int
    priority: int = 0


def endpoint_weight(endpoint: Endpoint) -> int:
    return max(endpoint.weight, 1)


def group_by_locality(endpoints: Iterable[Endpoint]) -> tuple[LocalityGroup, ...]:
    """One group per locality, in locality order, weighing what its endpoints weigh (gRPC
    proxyless clients split traffic between localities by these weights)."""
    grouped: dict[str, list[Endpoint]] = {}
    for endpoint in endpoints:
        grouped.setdefault(endpoint.locality or "", []).append(endpoint)
    return tuple(
        LocalityGroup(name or None, tuple(found), sum(map(endpoint_weight, found)))
        for name, found in sorted(grouped.items())
    )


def prioritize(
    groups: Sequence[LocalityGroup], caller: Caller, policy: LocalityPolicy
) -> tuple[LocalityGroup, ...]:
    """The groups as ``caller`` sees them: weights by ``distribute``, else (with failover)
    priorities by ``failoverPriority`` labels, by locality, or both."""
    setting = policy.setting
    place = Place.of(caller.locality)
    if setting.distribute:
        return distribute(groups, place, setting.distribute)
    if not policy.failover:
        return tuple(groups)
    if setting.failover_priority:
        if caller.labelled:  # Istio: a proxy without any label gets no label priorities
            groups = by_labels(groups, dict(caller.labels), setting.failover_priority)
        if not setting.failover:
            return tuple(groups)
    return by_locality(groups, place, setting.failover)


def distribute(
    groups: Sequence[LocalityGroup], place: Place, rules: Sequence[LocalityDistribution]
) -> tuple[LocalityGroup, ...]:
    """The first rule whose ``from`` matches the caller: each ``to`` locality's weight is
    shared among the groups it matches, by their own weights; groups it does not name go."""
    rule = next((r for r in rules if place.matches(r.from_)), None)
    if rule is None:
        return tuple(groups)
    weights: dict[int, int] = {}
    for target, share in rule.to.items():
        matched = [
            i
            for i, group in enumerate(groups)
            if i not in weights and Place.of(group.locality).matches(target)
        ]
        total = sum(groups[i].weight for i in matched)
        for i in matched:
            weights[i] = max(math.ceil(groups[i].weight * share / total), 1)
    return tuple(replace(g, weight=weights[i]) for i, g in enumerate(groups) if i in weights)


def by_locality(
    groups: Sequence[LocalityGroup], place: Place, failover: Sequence[LocalityFailover]
) -> tuple[LocalityGroup, ...]:
    """Priorities by how near each group is to the caller, within any it has already."""
    target = next((f.to for f in failover if f.from_ == place.region), None)
    ranked = []
    for group in groups:
        where = Place.of(group.locality)
        if where.region != place.region:
            near = _OTHER_REGION if target in (None, where.region) else _NOT_FAILOVER_TARGET
        elif where.zone != place.zone:
            near = _SAME_REGION
        elif where.subzone != place.subzone:
            near = _SAME_ZONE
        else:
            near = _SAME_SUBZONE
        ranked.append(replace(group, priority=group.priority * _LOCALITY_PRIORITIES + near))
    return _compacted(ranked)


def by_labels(
    groups: Sequence[LocalityGroup], caller_labels: Mapping[str, str], priorities: Sequence[str]
) -> tuple[LocalityGroup, ...]:
    """Each group split by priority: 0 for endpoints that match the caller on every label of
    ``priorities``, then by how long a prefix of them they match (none: the lowest)."""
    names = [p.partition(_OVERRIDE_SEPARATOR)[0] for p in priorities]
    expected = {name: caller_labels.get(name, "") for name in names}
    expected.update(
        (name, value)
        for name, separator, value in (p.partition(_OVERRIDE_SEPARATOR) for p in priorities)
        if separator
    )
    split: list[LocalityGroup] = []
    for group in groups:
        by_priority: dict[int, list[Endpoint]] = {}
        for endpoint in group.endpoints:
            labels = {**endpoint.labels, **Place.of(endpoint.locality).labels()}
            priority = next(
                (
                    len(names) - index
                    for index, name in enumerate(names)
                    if expected[name] != labels.get(name, "")
                ),
                0,
            )
            by_priority.setdefault(priority, []).append(endpoint)
        split.extend(
            LocalityGroup(group.locality, tuple(found), sum(map(endpoint_weight, found)), priority)
            for priority, found in sorted(by_priority.items())
        )
    return _compacted(split)


def _compacted(groups: Sequence[LocalityGroup]) -> tuple[LocalityGroup, ...]:
    """Envoy wants priorities 0..N without gaps."""
    order = {p: i for i, p in enumerate(sorted({g.priority for g in groups}))}
    return tuple(replace(g, priority=order[g.priority]) for g in groups)


def weigh_localities(cluster: cluster_pb2.Cluster, policy: LocalityPolicy | None) -> None:
    """Without ``locality_weighted_lb_config`` Envoy ignores the groups' weights."""
    if policy is not None and policy.weights_localities:
        cluster.common_lb_config.locality_weighted_lb_config.SetInParent()


def locality_to_proto(locality: str | None) -> base_pb2.Locality:
    place = Place.of(locality)
    return base_pb2.Locality(region=place.region, zone=place.zone, sub_zone=place.subzone)
