"""Localities (``region/zone/subzone``) and Istio's ``localityLbSetting``, checked as Istio
checks them (``pkg/config/validation``): weights of 1 to 100 summing to 100, ``distribute``
or ``failover`` but not both, failover between two different regions, at most one trailing
wildcard, no empty region, zone or subzone, no overlapping localities."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pilotfish.load.fields import FieldReader, Fields, describe
from pilotfish.load.yaml_source import join_path
from pilotfish.model.destination_rules import DestinationRuleLookup
from pilotfish.model.diagnostics import Diagnostic
from pilotfish.model.resilience import (
    TOPOLOGY_LABELS,
    LocalityDistribution,
    LocalityFailover,
    LocalityLbSetting,
    locality_problem,
)
from pilotfish.model.resources import (
    DestinationRule,
    LoadBalancer,
    MeshConfig,
    TrafficPolicy,
    qualify_host,
)

LOCALITY_LB_FIELDS = ("distribute", "failover", "failoverPriority", "enabled")
MAX_WEIGHT = 100
# Istio gives endpoints of another network the next priority when this label comes first.
NETWORK_LABEL = "topology.istio.io/network"


def read_locality(reader: FieldReader, fields: Fields, key: str, path: str) -> str | None:
    """An endpoint's own locality: one to three non-empty parts, no wildcard."""
    text = reader.string(fields, key, path)
    if text is None or text == "":
        return None
    problem = locality_problem(text)
    if problem is not None:
        reader.error(join_path(path, key), f'"{text}" {problem}')
        return None
    return text


def read_locality_lb_setting(
    reader: FieldReader, fields: Fields, path: str, *, outlier_detection: bool = True
) -> LocalityLbSetting | None:
    """``fields[localityLbSetting]``; ``outlier_detection`` says whether the traffic policy
    that holds it sets one (failover without it is warned about, as Istio does)."""
    setting = reader.child_mapping(fields, "localityLbSetting", path, LOCALITY_LB_FIELDS)
    if setting is None:
        return None
    setting_path = join_path(path, "localityLbSetting")
    enabled = reader.boolean(setting, "enabled", setting_path)
    distribute = _distribute(reader, setting, setting_path)
    failover = _failover(reader, setting, setting_path)
    priority = reader.string_list(setting, "failoverPriority", setting_path)
    if setting.get("distribute") and setting.get("failover"):
        reader.error(setting_path, "set distribute or failover, not both (Istio refuses both)")
    if failover:
        for index, label in enumerate(priority):
            if label in TOPOLOGY_LABELS:
                reader.error(
                    f"{join_path(setting_path, 'failoverPriority')}[{index}]",
                    f'"{label}" says what failover already says: Istio refuses them together',
                )
    for index, label in enumerate(priority):
        if label.partition("=")[0] == NETWORK_LABEL:
            reader.warning(
                f"{join_path(setting_path, 'failoverPriority')}[{index}]",
                f"Pilotfish has no networks: {NETWORK_LABEL} is compared like any other label "
                "(endpoints and proxies carry it only when their labels set it), and unlike "
                "Istio a network mismatch in first place is not set aside: endpoints on "
                "another network are not ranked by the labels after it, they all get the "
                "lowest priority",
            )
    if (setting.get("failover") or setting.get("failoverPriority")) and not outlier_detection:
        reader.warning(
            setting_path,
            "failover needs outlierDetection and this trafficPolicy sets none: as in Istio, "
            "only ejected endpoints make traffic leave the caller's locality, so unless it "
            "inherits one (a subset from its rule) the endpoints of every locality share "
            "the traffic",
        )
    return LocalityLbSetting(
        distribute=tuple(distribute),
        failover=tuple(failover),
        failover_priority=tuple(p for p in priority if p),
        enabled=enabled,
    )


def _distribute(reader: FieldReader, setting: Fields, path: str) -> list[LocalityDistribution]:
    found: list[LocalityDistribution] = []
    sources: list[tuple[str, str]] = []
    for item, item_path in reader.items(setting, "distribute", path):
        fields = reader.mapping(item, item_path, ("from", "to"))
        if fields is None:
            continue
        source = reader.string(fields, "from", item_path, required=True)
        weights = _weights(reader, fields, item_path)
        if source is not None:
            sources.append((source, join_path(item_path, "from")))
        if source is not None and weights is not None:
            found.append(LocalityDistribution(from_=source, to=weights))
    _check_localities(reader, sources)
    return found


def _weights(reader: FieldReader, fields: Fields, path: str) -> dict[str, int] | None:
    value = fields.get("to")
    to_path = join_path(path, "to")
    if value is None:
        reader.error(to_path, "required field is missing")
        return None
    if not isinstance(value, dict):
        reader.error(to_path, f"expected a mapping of localities to weights, got {describe(value)}")
        return None
    weights: dict[str, int] = {}
    for locality, weight in value.items():
        weight_path = join_path(to_path, str(locality))
        if isinstance(weight, bool) or not isinstance(weight, int):
            reader.error(weight_path, f"expected a weight (an integer), got {describe(weight)}")
        elif not 1 <= weight <= MAX_WEIGHT:
            reader.error(weight_path, f"weight {weight} is out of range (1 to {MAX_WEIGHT})")
        else:
            weights[str(locality)] = weight
    if len(weights) != len(value):
        return None
    total = sum(weights.values())
    if total != MAX_WEIGHT:
        reader.error(to_path, f"the weights add up to {total}, not {MAX_WEIGHT}")
        return None
    if not _check_localities(reader, [(name, join_path(to_path, name)) for name in weights]):
        return None
    return weights


def _failover(reader: FieldReader, setting: Fields, path: str) -> list[LocalityFailover]:
    found: list[LocalityFailover] = []
    for item, item_path in reader.items(setting, "failover", path):
        fields = reader.mapping(item, item_path, ("from", "to"))
        if fields is None:
            continue
        source = reader.string(fields, "from", item_path, required=True)
        target = reader.string(fields, "to", item_path, required=True)
        if source is None or target is None:
            continue
        problems = [
            (key, problem)
            for key, region in (("from", source), ("to", target))
            if (problem := _region_problem(region)) is not None
        ]
        for key, problem in problems:
            reader.error(join_path(item_path, key), problem)
        if not problems and source == target:
            reader.error(join_path(item_path, "to"), f'fails over from region "{source}" to itself')
        elif not problems:
            found.append(LocalityFailover(from_=source, to=target))
    return found


def _region_problem(region: str) -> str | None:
    if "/" in region:
        return f'"{region}": failover names a region only (no zone or subzone)'
    if "*" in region:
        return f'"{region}": failover regions cannot hold the wildcard "*"'
    return None


def _check_localities(reader: FieldReader, localities: list[tuple[str, str]]) -> bool:
    """Istio's rule for the localities of one list: each a place or a trailing wildcard,
    and none inside one listed before it. Reports the first problem; True when none."""
    seen: dict[str, dict[str, set[str]]] = {}
    for locality, path in localities:
        problem = _locality_problem(locality, seen)
        if problem is not None:
            reader.error(path, f'"{locality}" {problem}')
            return False
    return True


def _locality_problem(locality: str, seen: dict[str, dict[str, set[str]]]) -> str | None:
    stars = locality.count("*")
    if stars > 1 or (stars == 1 and not locality.endswith("*")):
        return 'may hold one wildcard "*", and only at its end'
    parts = locality.split("/", 2)
    if "" in parts:
        return "has an empty region, zone or subzone"
    overlap = "overlaps a locality listed before it"
    if "*" in seen:
        return overlap
    region = parts[0]
    zones = seen.get(region)
    if len(parts) == 1:
        if zones is not None:
            return overlap
        seen[region] = {"*": {"*"}}
        return None
    zone = parts[1]
    if zones is not None and "*" in zones:
        return overlap
    subzones = zones.get(zone) if zones is not None else None
    if len(parts) == 2:  # region/zone
        if subzones is not None:
            return overlap
        seen.setdefault(region, {})[zone] = {"*"}
        return None
    if subzones is not None and ("*" in subzones or parts[2] in subzones):
        return overlap
    seen.setdefault(region, {}).setdefault(zone, set()).add(parts[2])
    return None


def dns_locality_warnings(config: MeshConfig) -> Iterator[Diagnostic]:
    """A DNS ServiceEntry's endpoints sit inline in the one cluster every caller shares, so
    no caller gets its own priorities or weights: say so where locality load balancing
    would otherwise act (its rule sets a localityLbSetting that does, or the mesh's applies
    and its endpoints have localities)."""
    rules = DestinationRuleLookup(config.destination_rules)
    mesh = config.mesh.locality_lb_setting or LocalityLbSetting()
    for entry in config.service_entries:
        if entry.resolution != "DNS":
            continue
        located = any(endpoint.locality for endpoint in entry.endpoints)
        found = (rules.rule_for(qualify_host(host, entry.meta.namespace)) for host in entry.hosts)
        rule = next((r for r in found if r is not None), None)
        source = _locality_lb_source(rule, mesh, located) if rule is not None else None
        if source is not None:
            yield entry.meta.source.diagnostic(
                "spec.resolution",
                f"resolution DNS: localityLbSetting/failover is not applied ({source}); every "
                "endpoint has priority 0 and the same weight for every caller",
                "warning",
            )


def _locality_lb_source(
    rule: DestinationRule, mesh: LocalityLbSetting, located: bool
) -> str | None:
    """What would make locality load balancing change something for some caller (the same
    test as translation's: ``distribute``, or outlier detection to fail over with), or None."""
    policies = _policies(rule)
    detection = any(
        p.outlier_detection is not None
        or any(port.outlier_detection is not None for port in p.port_settings.values())
        for p in policies
    )
    own = [
        balancer.locality_lb_setting
        for balancer in _balancers(policies)
        if balancer.locality_lb_setting is not None
    ]

    def acts(setting: LocalityLbSetting) -> bool:
        return setting.enabled is not False and (bool(setting.distribute) or detection)

    name = f"DestinationRule {rule.meta.namespace}/{rule.meta.name}"
    if any(map(acts, own)):
        return f"the localityLbSetting of {name}"
    if not own and located and acts(mesh):
        return f"the mesh's localityLbSetting, on by default, with {name}"
    return None


def _policies(rule: DestinationRule) -> list[TrafficPolicy]:
    found = [rule.traffic_policy, *(subset.traffic_policy for subset in rule.subsets)]
    return [policy for policy in found if policy is not None]


def _balancers(policies: Iterable[TrafficPolicy]) -> Iterator[LoadBalancer]:
    for policy in policies:
        if policy.load_balancer is not None:
            yield policy.load_balancer
        for port in policy.port_settings.values():
            if port.load_balancer is not None:
                yield port.load_balancer
