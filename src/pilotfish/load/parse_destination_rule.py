"""networking.istio.io DestinationRule -> ``model.DestinationRule`` (subsets and load balancing)."""

from __future__ import annotations

from typing import cast

from pilotfish.load.fields import FieldReader, Fields
from pilotfish.load.http_headers import header_name_problem, header_value_problem
from pilotfish.load.yaml_source import join_path
from pilotfish.model.resources import (
    ConsistentHash,
    DestinationRule,
    HTTPCookie,
    LoadBalancer,
    Meta,
    SimpleLB,
    Subset,
    TrafficPolicy,
)

SPEC_FIELDS = ("host", "trafficPolicy", "subsets")
SPEC_NOT_IMPLEMENTED = ("exportTo", "workloadSelector")

POLICY_FIELDS = ("loadBalancer",)
POLICY_NOT_IMPLEMENTED = (
    "connectionPool",
    "outlierDetection",
    "tls",
    "portLevelSettings",
    "tunnel",
    "proxyProtocol",
)

LB_FIELDS = ("simple", "consistentHash")
LB_NOT_IMPLEMENTED = ("localityLbSetting", "warmupDurationSecs", "warmup")
SIMPLE_LB = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM")
# LEAST_CONN is Istio's deprecated spelling of LEAST_REQUEST.
SIMPLE_LB_ALIASES = {"LEAST_CONN": "LEAST_REQUEST"}
SIMPLE_LB_NOT_SUPPORTED = ("PASSTHROUGH", "UNSPECIFIED")

HASH_KEYS = ("httpHeaderName", "httpCookie", "useSourceIp")
HASH_NOT_IMPLEMENTED = ("httpQueryParameterName", "ringHash", "maglev", "minimumRingSize")


def parse_destination_rule(reader: FieldReader, spec: Fields, meta: Meta) -> DestinationRule:
    host = reader.string(spec, "host", "spec", required=True)
    policy = _traffic_policy(reader, spec, "spec")
    subsets: list[Subset] = []
    first_seen: set[str] = set()
    for item, path in reader.items(spec, "subsets", "spec"):
        subset = _subset(reader, item, path)
        if subset is None:
            continue
        if subset.name in first_seen:
            reader.error(join_path(path, "name"), f'duplicate subset name "{subset.name}"')
            continue
        first_seen.add(subset.name)
        subsets.append(subset)
    return DestinationRule(
        meta=meta, host=host or "", traffic_policy=policy, subsets=tuple(subsets)
    )


def _subset(reader: FieldReader, value: object, path: str) -> Subset | None:
    fields = reader.mapping(value, path, ("name", "labels", "trafficPolicy"))
    if fields is None:
        return None
    name = reader.string(fields, "name", path, required=True)
    labels = reader.string_map(fields, "labels", path, required=True, non_empty=True)
    policy = _traffic_policy(reader, fields, path)
    if name is None:
        return None
    return Subset(name=name, labels=labels, traffic_policy=policy)


def _traffic_policy(reader: FieldReader, fields: Fields, path: str) -> TrafficPolicy | None:
    policy = reader.child_mapping(
        fields, "trafficPolicy", path, POLICY_FIELDS, POLICY_NOT_IMPLEMENTED
    )
    if policy is None:
        return None
    return TrafficPolicy(
        load_balancer=_load_balancer(reader, policy, join_path(path, "trafficPolicy"))
    )


def _load_balancer(reader: FieldReader, fields: Fields, path: str) -> LoadBalancer | None:
    balancer = reader.child_mapping(fields, "loadBalancer", path, LB_FIELDS, LB_NOT_IMPLEMENTED)
    if balancer is None:
        return None
    balancer_path = join_path(path, "loadBalancer")
    chosen = [key for key in LB_FIELDS if balancer.get(key) is not None]
    if len(chosen) != 1:
        reader.error(balancer_path, "needs exactly one of simple, consistentHash")
    simple_text = balancer.get("simple")
    if isinstance(simple_text, str) and simple_text in SIMPLE_LB_ALIASES:
        simple: str | None = SIMPLE_LB_ALIASES[simple_text]
    else:
        simple = reader.choice(
            balancer, "simple", balancer_path, SIMPLE_LB, not_supported=SIMPLE_LB_NOT_SUPPORTED
        )
    return LoadBalancer(
        simple=cast(SimpleLB, simple) if simple is not None else None,
        consistent_hash=_consistent_hash(reader, balancer, balancer_path),
    )


def _consistent_hash(reader: FieldReader, fields: Fields, path: str) -> ConsistentHash | None:
    hashing = reader.child_mapping(fields, "consistentHash", path, HASH_KEYS, HASH_NOT_IMPLEMENTED)
    if hashing is None:
        return None
    hash_path = join_path(path, "consistentHash")
    # ``useSourceIp: false`` names no key at all, so it does not count as the one chosen.
    keys = [key for key in HASH_KEYS if hashing.get(key) not in (None, False)]
    if len(keys) != 1:
        reader.error(hash_path, f"exactly one of {', '.join(HASH_KEYS)} must be set")
    cookie = None
    cookie_fields = reader.child_mapping(hashing, "httpCookie", hash_path, ("name", "ttl", "path"))
    if cookie_fields is not None:
        cookie_path = join_path(hash_path, "httpCookie")
        name = reader.string(cookie_fields, "name", cookie_path, required=True)
        problem = header_value_problem(name) if name else None
        if problem is not None:
            reader.error(join_path(cookie_path, "name"), problem)
            name = None
        ttl = reader.duration(cookie_fields, "ttl", cookie_path, allow_zero=True)
        cookie_route = reader.string(cookie_fields, "path", cookie_path)
        if name is not None:
            cookie = HTTPCookie(name=name, ttl=ttl, path=cookie_route)
    use_source_ip = reader.boolean(hashing, "useSourceIp", hash_path)
    header_name = reader.string(hashing, "httpHeaderName", hash_path)
    problem = header_name_problem(header_name) if header_name is not None else None
    if problem is not None:
        reader.error(join_path(hash_path, "httpHeaderName"), problem)
        header_name = None
    return ConsistentHash(
        http_header_name=header_name,
        http_cookie=cookie,
        use_source_ip=bool(use_source_ip),
    )
