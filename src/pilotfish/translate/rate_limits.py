"""RateLimitPolicy -> the rate limit filters of the HTTP connection manager that receives
the target's traffic (a Service's sidecar inbound, a Gateway's listeners).

Local rules: one ``envoy.filters.http.local_ratelimit`` per rule, so that each keeps its
own token bucket and names itself on the 429 it answers (``RATE_LIMIT_RULE_HEADER``; the
filter's headers are per filter, not per descriptor). A rule without selectors is the
filter's bucket; one with selectors is a descriptor the filter's own ``rate_limits``
produce (Distinct values: a wildcard entry, one bucket per value seen).

Global rules: one ``envoy.filters.http.ratelimit`` whose ``rate_limits`` produce the wire
of ``model.rate_limits`` (one descriptor per rule, all sent in one call), asking the
control plane over the bootstrap's xDS cluster. The service names the rule that said
OVER_LIMIT in the same response header, so one body mapper per rule can name it too.

Both filters carry their ``rate_limits`` themselves rather than on routes: every request
the connection manager receives is the target's, and the limits stay out of RDS.

A local bucket belongs to one filter of one connection manager, and each listener filter
chain has its own: a PERMISSIVE inbound port counts mTLS and plain text apart, a Gateway
each port and each HTTPS server (so up to N x the limit over N chains, which the load
warns of). Envoy 1.40's LocalRateLimit has no way to share a bucket between them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.config.ratelimit.v3 import rls_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import regex_pb2
from envoy.type.v3 import percent_pb2, token_bucket_pb2
from google.protobuf import wrappers_pb2

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.rate_limits import (
    HEADER_DESCRIPTOR_PREFIX,
    HEADER_MATCH_DESCRIPTOR_KEY,
    PATH_DESCRIPTOR_KEY,
    RATE_LIMIT_DOMAIN,
    RATE_LIMIT_RULE_HEADER,
    RULE_DESCRIPTOR_KEY,
    SOURCE_DESCRIPTOR_KEY,
    ClientSelector,
    PathSelector,
    RateLimitPolicy,
    RateLimitRule,
    RateLimitSettings,
    SourceSelector,
    rule_id,
)
from pilotfish.model.resources import Gateway
from pilotfish.translate.authorization import cel_filter, text_body
from pilotfish.translate.proto_values import duration_from_seconds, format_literal, pack
from pilotfish.translate.telemetry import LOCAL_REPLY_WHERE, XDS_CLUSTER_NAME

LOCAL_RATE_LIMIT_FILTER_NAME = "envoy.filters.http.local_ratelimit"
RATE_LIMIT_FILTER_NAME = "envoy.filters.http.ratelimit"
# Envoy's response code details for the global filter's replies.
GLOBAL_RATE_LIMITED_DETAILS = "request_rate_limited"
SERVICE_ERROR_DETAILS = "rate_limiter_error"
# Distinct values a local rule keeps a bucket for, per replica; past it Envoy forgets the
# least recently seen value (which then starts over with a full bucket).
MAX_DYNAMIC_DESCRIPTORS = 10_000
_STAT_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class HttpRateLimits:
    """``filters`` go after the security filters (a refused request costs no token);
    ``reply_mappers`` before telemetry's, which would otherwise answer every 429."""

    filters: tuple[hcm_pb2.HttpFilter, ...] = ()
    reply_mappers: tuple[hcm_pb2.ResponseMapper, ...] = ()


NO_RATE_LIMITS = HttpRateLimits()


def sidecar_rate_limits(
    policies: Iterable[RateLimitPolicy], node: ProxyNode, settings: RateLimitSettings
) -> HttpRateLimits:
    """What a sidecar's inbound gets: the policies that target its Service."""
    chosen = [
        p
        for p in policies
        if p.target.kind == "Service"
        and p.target.name == node.service
        and p.meta.namespace == node.namespace
    ]
    return http_rate_limits(chosen, node.id, settings)


def gateway_rate_limits(
    policies: Iterable[RateLimitPolicy],
    node: ProxyNode,
    gateways: Iterable[Gateway],
    settings: RateLimitSettings,
) -> HttpRateLimits:
    """What one gateway filter chain gets: the policies that target a Gateway it serves
    (their local buckets are this chain's own, apart from the gateway's other chains)."""
    served = {(g.meta.namespace, g.meta.name) for g in gateways}
    chosen = [
        p
        for p in policies
        if p.target.kind == "Gateway" and (p.meta.namespace, p.target.name) in served
    ]
    return http_rate_limits(chosen, node.id, settings)


def http_rate_limits(
    policies: Sequence[RateLimitPolicy], proxy: str, settings: RateLimitSettings
) -> HttpRateLimits:
    filters: list[hcm_pb2.HttpFilter] = []
    mappers: list[hcm_pb2.ResponseMapper] = []
    global_rules: list[tuple[str, RateLimitRule]] = []
    for policy in policies:
        for index, rule in enumerate(policy.local):
            identity = rule_id(policy, "local", index)
            filters.append(local_rate_limit_filter(identity, rule))
            mappers.append(_rule_mapper(proxy, policy, "local", index, rule))
        for index, rule in enumerate(policy.global_):
            global_rules.append((rule_id(policy, "global", index), rule))
            mappers.append(_rule_mapper(proxy, policy, "global", index, rule))
    if global_rules:
        filters.append(global_rate_limit_filter(global_rules, settings))
        mappers.extend(_service_mappers(proxy, settings))
    return HttpRateLimits(tuple(filters), tuple(mappers))


# --- the descriptors (the wire, for global rules; the same entries for local ones) -------------


@dataclass(frozen=True)
class _Entry:
    """One action and the descriptor entry it produces; ``value`` is empty when it varies
    with the request (a Distinct header or address), Envoy's wildcard in a local descriptor."""

    action: rc.RateLimit.Action
    key: str
    value: str = ""


def rate_limit_actions(identity: str, rule: RateLimitRule) -> list[rc.RateLimit.Action]:
    """The actions whose entries make up a rule's descriptor, in the order of the wire."""
    return [entry.action for entry in _entries(identity, rule)]


def _entries(identity: str, rule: RateLimitRule) -> list[_Entry]:
    rule_key = rc.RateLimit.Action.GenericKey(
        descriptor_key=RULE_DESCRIPTOR_KEY, descriptor_value=identity
    )
    entries = [_Entry(rc.RateLimit.Action(generic_key=rule_key), RULE_DESCRIPTOR_KEY, identity)]
    for selector in rule.client_selectors:
        entries.extend(_selector_entries(selector))
    return entries


def _selector_entries(selector: ClientSelector) -> Iterable[_Entry]:
    for header in selector.headers:
        if header.type == "Distinct":
            # A request without the header produces no descriptor: the rule skips it.
            key = HEADER_DESCRIPTOR_PREFIX + header.name
            action = rc.RateLimit.Action(
                request_headers=rc.RateLimit.Action.RequestHeaders(
                    header_name=header.name, descriptor_key=key
                )
            )
            yield _Entry(action, key)
            continue
        assert header.value is not None
        matcher = rc.HeaderMatcher(name=header.name, invert_match=header.invert)
        if header.type == "Exact":
            matcher.string_match.exact = header.value
        else:
            matcher.string_match.safe_regex.CopyFrom(_regex(header.value))
        yield _match_entry(HEADER_MATCH_DESCRIPTOR_KEY, header.name, matcher)
    if selector.source_cidr is not None:
        yield _source_entry(selector.source_cidr)
    if selector.path is not None:
        matcher = rc.HeaderMatcher(name=":path")
        matcher.string_match.safe_regex.CopyFrom(_regex(path_pattern(selector.path)))
        yield _match_entry(PATH_DESCRIPTOR_KEY, selector.path.value, matcher)


def _match_entry(key: str, value: str, matcher: rc.HeaderMatcher) -> _Entry:
    """The entry ``(key, value)`` only when ``matcher`` holds; otherwise no descriptor."""
    action = rc.RateLimit.Action(
        header_value_match=rc.RateLimit.Action.HeaderValueMatch(
            descriptor_key=key, descriptor_value=value, headers=[matcher]
        )
    )
    return _Entry(action, key, value)


def _source_entry(source: SourceSelector) -> _Entry:
    """The caller's address masked to the CIDR's prefix (Envoy's ``masked_remote_address``
    entry, whose key it fixes). An Exact CIDR is the value a local descriptor asks for; a
    caller of the other IP version is kept whole, so it never equals the CIDR."""
    network = ipaddress.ip_network(source.cidr)
    masked = rc.RateLimit.Action.MaskedRemoteAddress()
    if network.version == 6:
        masked.v6_prefix_mask_len.value = network.prefixlen
        masked.v4_prefix_mask_len.value = 32
    else:
        masked.v4_prefix_mask_len.value = network.prefixlen
        masked.v6_prefix_mask_len.value = 128
    value = str(network) if source.type == "Exact" else ""
    return _Entry(rc.RateLimit.Action(masked_remote_address=masked), SOURCE_DESCRIPTOR_KEY, value)


_QUERY = r"(\?.*)?"


def path_pattern(path: PathSelector) -> str:
    """An RE2 pattern for ``:path``, which carries the query too: a match looks at the path
    before any ``?``. PathPrefix matches whole segments, as in the Gateway API: ``/api``
    takes ``/api`` and ``/api/v1``, never ``/apis``."""
    if path.type == "Exact":
        return re.escape(path.value) + _QUERY
    if path.type == "PathPrefix":
        prefix = path.value.rstrip("/")
        return re.escape(prefix) + r"(/[^?]*)?" + _QUERY
    return f"(?:{_query_at_end(path.value)}){_QUERY}"


def _query_at_end(pattern: str) -> str:
    """``pattern`` with each end-of-text anchor (``$``, ``\\z``) letting a query come first:
    the user's ``$`` means the end of the path, which RE2 cannot test by itself (no
    lookahead). Escapes, ``\\Q...\\E`` and character classes are literal text."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        if pattern.startswith("\\Q", i):
            end = pattern.find("\\E", i + 2)
            step = len(pattern) - i if end < 0 else end + 2 - i
        elif pattern.startswith("\\z", i) and not in_class:
            out.append(_QUERY + "$")
            i += 2
            continue
        elif pattern[i] == "\\":
            step = 2
        elif in_class:
            posix_end = pattern.find(":]", i) if pattern.startswith("[:", i) else -1
            step = posix_end + 2 - i if posix_end >= 0 else 1
            in_class = pattern[i] != "]"
        elif pattern[i] == "[":
            # A ``]`` right after ``[`` or ``[^`` is a member, not the end.
            step = 2 if pattern.startswith("[^", i) else 1
            step += pattern.startswith("]", i + step)
            in_class = True
        elif pattern[i] == "$":
            out.append(_QUERY + "$")
            i += 1
            continue
        else:
            step = 1
        out.append(pattern[i : i + step])
        i += step
    return "".join(out)


def _regex(pattern: str) -> regex_pb2.RegexMatcher:
    return regex_pb2.RegexMatcher(regex=pattern)


# --- the filters -------------------------------------------------------------------------------


def _token_bucket(rule: RateLimitRule) -> token_bucket_pb2.TokenBucket:
    """A full bucket of ``requests`` that refills at ``requests`` per unit (Envoy refills it
    continuously, so a burst of the whole limit is allowed, then the steady rate)."""
    return token_bucket_pb2.TokenBucket(
        max_tokens=rule.limit.requests,
        tokens_per_fill=wrappers_pb2.UInt32Value(value=rule.limit.requests),
        fill_interval=duration_from_seconds(rule.limit.window_seconds),
    )


def local_rate_limit_filter(identity: str, rule: RateLimitRule) -> hcm_pb2.HttpFilter:
    config = local_rate_limit_pb2.LocalRateLimit(
        stat_prefix="ratelimit_" + _STAT_UNSAFE.sub("_", identity),
        # Both default to 0%: unset, the filter counts nothing and refuses nothing.
        filter_enabled=_all_requests(),
        filter_enforced=_all_requests(),
        enable_x_ratelimit_headers=ratelimit_pb2.DRAFT_VERSION_03,
        response_headers_to_add=[_rule_header(identity)],
        # gRPC's own code for "slow down" rather than Envoy's default UNAVAILABLE, which
        # gRPC clients may retry at once.
        rate_limited_as_resource_exhausted=True,
    )
    if not rule.client_selectors:
        config.token_bucket.CopyFrom(_token_bucket(rule))
    else:
        entries = _entries(identity, rule)
        config.rate_limits.append(rc.RateLimit(actions=[e.action for e in entries]))
        config.descriptors.append(
            ratelimit_pb2.LocalRateLimitDescriptor(
                entries=[
                    ratelimit_pb2.RateLimitDescriptor.Entry(key=e.key, value=e.value)
                    for e in entries
                ],
                token_bucket=_token_bucket(rule),
            )
        )
        # Without a bucket of its own the filter lets through what no descriptor matches.
        config.always_consume_default_token_bucket.value = False
        if any(not entry.value for entry in entries):
            config.max_dynamic_descriptors.value = MAX_DYNAMIC_DESCRIPTORS
    # A name of its own per rule: several of these filters share one connection manager.
    return hcm_pb2.HttpFilter(
        name=f"{LOCAL_RATE_LIMIT_FILTER_NAME}/{identity}", typed_config=pack(config)
    )


def global_rate_limit_filter(
    rules: Sequence[tuple[str, RateLimitRule]], settings: RateLimitSettings
) -> hcm_pb2.HttpFilter:
    config = rate_limit_pb2.RateLimit(
        domain=RATE_LIMIT_DOMAIN,
        timeout=duration_from_seconds(settings.timeout),
        failure_mode_deny=settings.failure_mode == "deny",
        rate_limited_as_resource_exhausted=True,
        enable_x_ratelimit_headers=rate_limit_pb2.RateLimit.DRAFT_VERSION_03,
        rate_limit_service=rls_pb2.RateLimitServiceConfig(
            grpc_service=grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=XDS_CLUSTER_NAME)
            ),
            transport_api_version=config_source_pb2.V3,
        ),
        rate_limits=[
            rc.RateLimit(actions=rate_limit_actions(identity, rule)) for identity, rule in rules
        ],
    )
    return hcm_pb2.HttpFilter(name=RATE_LIMIT_FILTER_NAME, typed_config=pack(config))


def _all_requests() -> base_pb2.RuntimeFractionalPercent:
    return base_pb2.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(
            numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED
        )
    )


def _rule_header(identity: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=RATE_LIMIT_RULE_HEADER, value=format_literal(identity)),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


# --- the bodies of the 429s ----------------------------------------------------------------------


RuleKind = Literal["local", "global"]


def rule_words(policy: RateLimitPolicy, kind: RuleKind, index: int, rule: RateLimitRule) -> str:
    """``rate limit default/api local/0 (100 per Second)``."""
    limit = rule.limit
    return f"rate limit {policy.qualified_name} {kind}/{index} ({limit.requests} per {limit.unit})"


def _rule_mapper(
    proxy: str, policy: RateLimitPolicy, kind: RuleKind, index: int, rule: RateLimitRule
) -> hcm_pb2.ResponseMapper:
    # The filter's flag (RL) is set only after the reply is rewritten, so the mapper cannot
    # select on it; the rule's header is already there.
    identity = rule_id(policy, kind, index)
    header = RATE_LIMIT_RULE_HEADER
    return hcm_pb2.ResponseMapper(
        filter=cel_filter(
            f"'{header}' in response.headers && response.headers['{header}'] == '{identity}'"
        ),
        body_format_override=text_body(
            f"pilotfish: {proxy} answered 429: {rule_words(policy, kind, index, rule)} [RL]"
        ),
    )


def _service_mappers(proxy: str, settings: RateLimitSettings) -> list[hcm_pb2.ResponseMapper]:
    """For a 429 of the service that names no rule, and for the 500 of ``failureMode:
    deny`` when the service failed or did not answer in time."""
    mappers = [
        hcm_pb2.ResponseMapper(
            filter=cel_filter(f"response.code_details == '{GLOBAL_RATE_LIMITED_DETAILS}'"),
            body_format_override=text_body(
                f"pilotfish: {proxy} answered 429: the mesh's rate limit service said over "
                "limit [RL]"
            ),
        )
    ]
    if settings.failure_mode == "deny":
        mappers.append(
            hcm_pb2.ResponseMapper(
                filter=cel_filter(f"response.code_details == '{SERVICE_ERROR_DETAILS}'"),
                # Envoy's details are the same for an error and a timeout: say both.
                body_format_override=text_body(
                    f"pilotfish: {proxy} answered 500: the mesh's rate limit service failed or "
                    f"did not answer within {settings.timeout * 1000:g} ms and failureMode is "
                    "deny",
                    LOCAL_REPLY_WHERE,
                ),
            )
        )
    return mappers
