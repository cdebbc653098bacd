"""pilotfish.io/v1alpha1 RateLimitPolicy -> ``model.rate_limits.RateLimitPolicy``.

Shaped as Envoy Gateway's BackendTrafficPolicy ``rateLimit``::

    apiVersion: pilotfish.io/v1alpha1
    kind: RateLimitPolicy
    metadata: {name: backend-per-user}
    spec:
      targetRef: {kind: Service, name: backend}      # or {kind: Gateway, name: gw}
      local:                                         # each replica's own token buckets
        rules:
        - limit: {requests: 100, unit: Second}
      global:                                        # counters shared by every replica
        rules:
        - clientSelectors:
          - headers: [{name: x-user, type: Distinct}]   # Exact | RegularExpression | Distinct
            sourceCIDR: {type: Exact, value: 10.0.0.0/8}
            path: {type: PathPrefix, value: /api}       # Exact | PathPrefix | RegularExpression
          limit: {requests: 10, unit: Minute}           # Second | Minute | Hour | Day
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal, cast

from pilotfish.load.fields import FieldReader, Fields, describe
from pilotfish.load.http_headers import header_name_problem
from pilotfish.load.regex_check import re2_problem
from pilotfish.load.yaml_source import join_path
from pilotfish.model.diagnostics import Diagnostic
from pilotfish.model.rate_limits import (
    ClientSelector,
    HeaderMatchType,
    HeaderSelector,
    PathMatchType,
    PathSelector,
    RateLimitPolicy,
    RateLimitRule,
    RateLimitTarget,
    RateLimitUnit,
    RateLimitValue,
    SourceMatchType,
    SourceSelector,
    TargetKind,
)
from pilotfish.model.resources import Gateway, Meta, qualify_host
from pilotfish.model.services import Service

SPEC_FIELDS = ("targetRef", "local", "global")
TARGET_FIELDS = ("kind", "name")
TARGET_KINDS = ("Service", "Gateway")
RULES_FIELDS = ("rules",)
RULE_FIELDS = ("clientSelectors", "limit")
SELECTOR_FIELDS = ("headers", "sourceCIDR", "path")
HEADER_FIELDS = ("name", "type", "value", "invert")
HEADER_TYPES = ("Exact", "RegularExpression", "Distinct")
SOURCE_FIELDS = ("type", "value")
SOURCE_TYPES = ("Exact", "Distinct")
PATH_FIELDS = ("type", "value")
PATH_TYPES = ("Exact", "PathPrefix", "RegularExpression")
LIMIT_FIELDS = ("requests", "unit")
UNITS = ("Second", "Minute", "Hour", "Day")
# Envoy's token buckets and the service's counters are 32-bit.
MAX_REQUESTS = 2**32 - 1


def parse_rate_limit_policy(reader: FieldReader, spec: Fields, meta: Meta) -> RateLimitPolicy:
    target = _target(reader, spec)
    local = _rules(reader, spec, "local")
    global_ = _rules(reader, spec, "global")
    if spec.get("local") is None and spec.get("global") is None:
        reader.error("spec", "needs local or global rules: this policy would limit nothing")
    return RateLimitPolicy(
        meta=meta,
        target=target or RateLimitTarget("Service", ""),
        local=local,
        global_=global_,
    )


def _target(reader: FieldReader, spec: Fields) -> RateLimitTarget | None:
    fields = reader.child_mapping(spec, "targetRef", "spec", TARGET_FIELDS, required=True)
    if fields is None:
        return None
    kind = reader.choice(fields, "kind", "spec.targetRef", TARGET_KINDS, required=True)
    name = reader.string(fields, "name", "spec.targetRef", required=True)
    if kind is None or name is None:
        return None
    if "." in name or "/" in name:
        reader.error(
            "spec.targetRef.name",
            f'"{name}": name the {kind} by its short name; it is looked up in the policy\'s '
            "namespace",
        )
    return RateLimitTarget(cast(TargetKind, kind), name)


def _rules(
    reader: FieldReader, spec: Fields, key: Literal["local", "global"]
) -> tuple[RateLimitRule, ...]:
    fields = reader.child_mapping(spec, key, "spec", RULES_FIELDS)
    if fields is None:
        return ()
    rules: list[RateLimitRule] = []
    for item, path in reader.items(fields, "rules", f"spec.{key}", required=True):
        rule = _rule(reader, item, path)
        if rule is not None:
            rules.append(reader.paths.remember(rule, path))
    return tuple(rules)


def _rule(reader: FieldReader, value: object, path: str) -> RateLimitRule | None:
    fields = reader.mapping(value, path, RULE_FIELDS)
    if fields is None:
        return None
    limit = _limit(reader, fields, path)
    if fields.get("clientSelectors") == []:
        # Refused, as an empty selector is: either reading surprises someone.
        reader.error(
            join_path(path, "clientSelectors"),
            'an empty list reads as "every request" (Envoy Gateway) or as "no request" (as '
            "Istio's `rules: []`): leave clientSelectors out to limit every request",
        )
        return None
    selectors: list[ClientSelector] = []
    for item, item_path in reader.items(fields, "clientSelectors", path):
        selector = _selector(reader, item, item_path)
        if selector is not None:
            selectors.append(selector)
    if limit is None:
        return None
    return RateLimitRule(limit=limit, client_selectors=tuple(selectors))


def _limit(reader: FieldReader, fields: Fields, path: str) -> RateLimitValue | None:
    limit = reader.child_mapping(fields, "limit", path, LIMIT_FIELDS, required=True)
    if limit is None:
        return None
    limit_path = join_path(path, "limit")
    requests = reader.integer(
        limit, "requests", limit_path, required=True, minimum=1, maximum=MAX_REQUESTS
    )
    unit = reader.choice(limit, "unit", limit_path, UNITS, required=True)
    if requests is None or unit is None:
        return None
    return RateLimitValue(requests, cast(RateLimitUnit, unit))


def _selector(reader: FieldReader, value: object, path: str) -> ClientSelector | None:
    fields = reader.mapping(value, path, SELECTOR_FIELDS)
    if fields is None:
        return None
    if not fields:
        reader.error(
            path,
            "an empty selector matches every request: leave clientSelectors out to limit "
            "every request",
        )
        return None
    # An empty list is an error rather than "no header condition", as a typo would read.
    listed = reader.items(fields, "headers", path, required="headers" in fields)
    headers = tuple(
        header for item, item_path in listed if (header := _header(reader, item, item_path))
    )
    return ClientSelector(
        headers=headers,
        path=_path(reader, fields, path),
        source_cidr=_source(reader, fields, path),
    )


def _header(reader: FieldReader, value: object, path: str) -> HeaderSelector | None:
    fields = reader.mapping(value, path, HEADER_FIELDS)
    if fields is None:
        return None
    name = reader.string(fields, "name", path, required=True)
    kind = reader.choice(fields, "type", path, HEADER_TYPES) or "Exact"
    text = reader.string(fields, "value", path)
    invert = reader.boolean(fields, "invert", path) or False
    if name is not None:
        problem = header_name_problem(name)
        if problem is not None:
            reader.error(join_path(path, "name"), problem)
    ok = _value_for_type(reader, fields, path, kind, text)
    if kind == "Distinct" and invert:
        reader.error(
            join_path(path, "invert"),
            "a Distinct header counts each value it has; there is nothing to invert",
        )
        ok = False
    if name is None or not ok:
        return None
    return HeaderSelector(
        name=name.lower(), type=cast(HeaderMatchType, kind), value=text, invert=invert
    )


def _value_for_type(
    reader: FieldReader, fields: Fields, path: str, kind: str, text: str | None
) -> bool:
    """Distinct takes no value (each value the request has gets its own counter); Exact and
    RegularExpression need one."""
    value_path = join_path(path, "value")
    if kind == "Distinct":
        if "value" in fields:
            reader.error(
                value_path,
                "a Distinct header has no value: every value it takes gets its own counter "
                "(use type Exact to limit one value)",
            )
            return False
        return True
    if text is None:
        if "value" not in fields:
            reader.error(value_path, f"required for type {kind}")
        return False
    if kind == "RegularExpression":
        problem = re2_problem(text)
        if problem is not None:
            reader.error(value_path, problem)
            return False
    return True


def _path(reader: FieldReader, fields: Fields, path: str) -> PathSelector | None:
    found = reader.child_mapping(fields, "path", path, PATH_FIELDS)
    if found is None:
        return None
    path = join_path(path, "path")
    kind = reader.choice(found, "type", path, PATH_TYPES) or "PathPrefix"
    text = reader.string(found, "value", path, required=True)
    if text is None:
        return None
    value_path = join_path(path, "value")
    if kind == "RegularExpression":
        problem = re2_problem(text)
        if problem is not None:
            reader.error(value_path, problem)
            return None
    elif not text.startswith("/"):
        reader.error(value_path, f'"{text}" must start with "/"')
        return None
    elif "?" in text or "#" in text:
        reader.error(value_path, f'"{text}": a path match compares the path only, not "?" or "#"')
        return None
    return PathSelector(cast(PathMatchType, kind), text)


def _source(reader: FieldReader, fields: Fields, path: str) -> SourceSelector | None:
    found = reader.child_mapping(fields, "sourceCIDR", path, SOURCE_FIELDS)
    if found is None:
        return None
    path = join_path(path, "sourceCIDR")
    kind = reader.choice(found, "type", path, SOURCE_TYPES) or "Exact"
    text = reader.string(found, "value", path, required=True)
    if text is None:
        return None
    value_path = join_path(path, "value")
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        reader.error(value_path, f"{describe(text)} is not a CIDR (like 10.0.0.0/8)")
        return None
    if "/" not in text:
        reader.error(value_path, f'"{text}" needs a prefix length (like {network})')
        return None
    if kind == "Exact" and str(network) != text:
        # Envoy masks the caller's address to the prefix and compares: host bits would
        # make the CIDR match nobody.
        reader.error(value_path, f'"{text}" has host bits set; did you mean "{network}"?')
        return None
    if kind == "Distinct" and int(network.network_address) != 0:
        zero = "0.0.0.0" if network.version == 4 else "::"
        reader.error(
            value_path,
            f'"{text}": for Distinct only the prefix length counts (one counter per '
            f"/{network.prefixlen} of callers, wherever they are): write "
            f'"{zero}/{network.prefixlen}"',
        )
        return None
    return SourceSelector(cast(SourceMatchType, kind), str(network))


def rate_limit_policy_problems(
    policies: Iterable[RateLimitPolicy],
    services: Mapping[str, Service],
    gateways: Mapping[tuple[str, str], Gateway],
    sidecar_services: set[str],
    *,
    complete: bool = True,
) -> Iterator[Diagnostic]:
    """Targets that exist, and at most one policy per target. ``sidecar_services`` are
    the hostnames whose replicas run a sidecar (a Workload's service): only there do the
    limits act. ``gateways`` by (namespace, name)."""
    first: dict[tuple[str, str, str], RateLimitPolicy] = {}
    for policy in policies:
        target = policy.target
        if not target.name:
            continue
        namespace = policy.meta.namespace
        key = (target.kind, namespace, target.name)
        earlier = first.setdefault(key, policy)
        if earlier is not policy:
            line, col = earlier.meta.source.locate("spec.targetRef")
            yield policy.meta.source.diagnostic(
                "spec.targetRef",
                f"{target.kind} {namespace}/{target.name} already has RateLimitPolicy "
                f"{earlier.qualified_name} ({earlier.meta.source.file}:{line}:{col}); a "
                "target takes one policy: put these rules in that one",
            )
        if not complete:
            continue
        if target.kind == "Gateway":
            gateway = gateways.get((namespace, target.name))
            if gateway is None:
                yield policy.meta.source.diagnostic(
                    "spec.targetRef.name", f'unknown Gateway "{namespace}/{target.name}"'
                )
            elif policy.local:
                yield from _buckets_per_chain(policy, gateway)
            continue
        hostname = qualify_host(target.name, namespace)
        if hostname not in services:
            yield policy.meta.source.diagnostic(
                "spec.targetRef.name", f'unknown Service "{target.name}" in namespace {namespace}'
            )
        elif hostname not in sidecar_services:
            yield policy.meta.source.diagnostic(
                "spec.targetRef.name",
                f'no replica of Service "{target.name}" runs a sidecar of this mesh (it is '
                "not a Workload's service), so these limits are applied nowhere",
                "warning",
            )


def _buckets_per_chain(policy: RateLimitPolicy, gateway: Gateway) -> Iterator[Diagnostic]:
    """Envoy's local rate limit filter keeps its buckets per connection manager, and a
    gateway has one per listener filter chain: one for the plaintext HTTP servers of a
    port, one per HTTPS server (told apart by SNI). Envoy 1.40 cannot share them: its
    LocalRateLimit has no share key, and one connection manager for several ports would
    lose each port's own routes."""
    tls: Counter[int] = Counter()
    plaintext: set[int] = set()
    # TCP and TLS passthrough servers have no connection manager, so no HTTP rate limits.
    for server in gateway.servers:
        if server.protocol in ("TCP", "TLS"):
            continue
        if server.tls is None:
            plaintext.add(server.port)
        else:
            tls[server.port] += 1
    chains = {port: tls[port] + (port in plaintext) for port in sorted(plaintext | set(tls))}
    total = sum(chains.values())
    if total < 2:
        return
    where = ", ".join(str(port) if n == 1 else f"{port} ({n} by SNI)" for port, n in chains.items())
    yield policy.meta.source.diagnostic(
        "spec.local",
        f"Gateway {gateway.meta.namespace}/{gateway.meta.name} has {total} listener filter "
        f"chains (ports {where}) and each keeps its own local buckets: a gateway replica "
        f"admits up to {total} x each local limit; a global rule counts them together",
        "warning",
    )
