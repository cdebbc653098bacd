"""RateLimitPolicies built in code, for tests of the rate limit service that run before (or
without) the loader: a policy with one global rule per ``rules`` item."""

from __future__ import annotations

from pilotfish.model.diagnostics import SourceMap
from pilotfish.model.rate_limits import (
    ClientSelector,
    HeaderSelector,
    RateLimitPolicy,
    RateLimitRule,
    RateLimitTarget,
    RateLimitUnit,
    RateLimitValue,
    SourceMatchType,
    SourceSelector,
)
from pilotfish.model.resources import MeshConfig, Meta


def global_policy(
    name: str, *rules: RateLimitRule, namespace: str = "default", target: str = "backend"
) -> RateLimitPolicy:
    meta = Meta("RateLimitPolicy", name, namespace, SourceMap(f"{name}.yaml"))
    return RateLimitPolicy(meta, RateLimitTarget("Service", target), global_=rules)


def rule(
    requests: int,
    unit: RateLimitUnit = "Minute",
    *,
    distinct_header: str | None = None,
    exact_header: tuple[str, str] | None = None,
    source: tuple[SourceMatchType, str] | None = None,
) -> RateLimitRule:
    headers: list[HeaderSelector] = []
    if distinct_header is not None:
        headers.append(HeaderSelector(distinct_header, "Distinct"))
    if exact_header is not None:
        headers.append(HeaderSelector(exact_header[0], "Exact", exact_header[1]))
    cidr = SourceSelector(source[0], source[1]) if source is not None else None
    selectors = (ClientSelector(tuple(headers), None, cidr),) if headers or cidr else ()
    return RateLimitRule(RateLimitValue(requests, unit), selectors)


def mesh_with(*policies: RateLimitPolicy) -> MeshConfig:
    return MeshConfig(rate_limit_policies=policies)
