"""A small evaluator of Envoy's RBAC filter config, for testing translation without Envoy.

It follows Envoy's documented semantics for the matchers translation emits (and fails
loudly on any other, so a new matcher cannot be silently misjudged): a policy matches when
one of its permissions and one of its principals match; an ALLOW filter passes a request
that some policy matches, a DENY filter stops it, a LOG filter never decides. Of several
matching policies Envoy reports the first by name.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import metadata_pb2, string_pb2, value_pb2


@dataclass(frozen=True)
class EnvoyRequest:
    headers: Mapping[str, str]
    """Lower-case names, with the pseudo-headers :method, :path and :authority."""
    direct_remote_ip: str
    remote_ip: str
    destination_ip: str
    destination_port: int
    sni: str = ""
    peer_uri_san: str | None = None
    """None: the connection is plaintext."""
    metadata: Mapping[str, object] = field(default_factory=dict)


def evaluate(filters: Sequence[hcm_pb2.HttpFilter], request: EnvoyRequest) -> tuple[bool, str]:
    """Whether the request passes every RBAC filter, and the response code details Envoy
    would set when one denies (``rbac_access_denied_matched_policy[...]``); "" if allowed."""
    for http_filter in filters:
        if http_filter.name != "envoy.filters.http.rbac":
            continue
        config = rbac_filter_pb2.RBAC()
        assert http_filter.typed_config.Unpack(config)
        if not config.HasField("rules"):
            continue  # shadow rules only: Envoy records their verdict, enforces nothing
        rules = config.rules
        matched = sorted(
            name for name, policy in rules.policies.items() if _policy(policy, request)
        )
        if rules.action == rbac_pb2.RBAC.ALLOW and not matched:
            return False, "rbac_access_denied_matched_policy[none]"
        if rules.action == rbac_pb2.RBAC.DENY and matched:
            return False, f"rbac_access_denied_matched_policy[{matched[0]}]"
    return True, ""


def _policy(policy: rbac_pb2.Policy, request: EnvoyRequest) -> bool:
    return any(_permission(p, request) for p in policy.permissions) and any(
        _principal(p, request) for p in policy.principals
    )


def _permission(permission: rbac_pb2.Permission, request: EnvoyRequest) -> bool:
    kind = permission.WhichOneof("rule")
    if kind == "any":
        return permission.any
    if kind == "and_rules":
        return all(_permission(p, request) for p in permission.and_rules.rules)
    if kind == "or_rules":
        return any(_permission(p, request) for p in permission.or_rules.rules)
    if kind == "not_rule":
        return not _permission(permission.not_rule, request)
    if kind == "header":
        return _header(permission.header, request)
    if kind == "url_path":
        path = request.headers.get(":path", "").split("?", 1)[0].split("#", 1)[0]
        return _string(permission.url_path.path, path)
    if kind == "destination_ip":
        return _cidr(permission.destination_ip, request.destination_ip)
    if kind == "destination_port":
        return permission.destination_port == request.destination_port
    if kind == "requested_server_name":
        return _string(permission.requested_server_name, request.sni)
    raise AssertionError(f"the evaluator does not know permission {kind}")


def _principal(principal: rbac_pb2.Principal, request: EnvoyRequest) -> bool:
    kind = principal.WhichOneof("identifier")
    if kind == "any":
        return principal.any
    if kind == "and_ids":
        return all(_principal(p, request) for p in principal.and_ids.ids)
    if kind == "or_ids":
        return any(_principal(p, request) for p in principal.or_ids.ids)
    if kind == "not_id":
        return not _principal(principal.not_id, request)
    if kind == "authenticated":
        if request.peer_uri_san is None:
            return False
        if not principal.authenticated.HasField("principal_name"):
            return True
        return _string(principal.authenticated.principal_name, request.peer_uri_san)
    if kind == "direct_remote_ip":
        return _cidr(principal.direct_remote_ip, request.direct_remote_ip)
    if kind == "remote_ip":
        return _cidr(principal.remote_ip, request.remote_ip)
    if kind == "header":
        return _header(principal.header, request)
    if kind == "metadata":
        return _metadata(principal.metadata, request.metadata)
    raise AssertionError(f"the evaluator does not know principal {kind}")


def _header(matcher: rc.HeaderMatcher, request: EnvoyRequest) -> bool:
    value = request.headers.get(matcher.name.lower())
    kind = matcher.WhichOneof("header_match_specifier")
    if value is None:
        # Envoy: an absent header matches nothing (invert_match aside, which we never set).
        return False
    if kind == "present_match":
        return matcher.present_match
    if kind == "string_match":
        return _string(matcher.string_match, value)
    raise AssertionError(f"the evaluator does not know header matcher {kind}")


def _string(matcher: string_pb2.StringMatcher, value: str) -> bool:
    kind = matcher.WhichOneof("match_pattern")
    pattern = getattr(matcher, kind) if kind != "safe_regex" else None
    if matcher.ignore_case and isinstance(pattern, str):
        value, pattern = value.lower(), pattern.lower()
    if kind == "exact":
        return value == pattern
    if kind == "prefix":
        return isinstance(pattern, str) and value.startswith(pattern)
    if kind == "suffix":
        return isinstance(pattern, str) and value.endswith(pattern)
    if kind == "safe_regex":
        return re.fullmatch(matcher.safe_regex.regex, value) is not None
    raise AssertionError(f"the evaluator does not know string matcher {kind}")


def _cidr(block: address_pb2.CidrRange, address: str) -> bool:
    network = ipaddress.ip_network(f"{block.address_prefix}/{block.prefix_len.value}", strict=False)
    return ipaddress.ip_address(address) in network


def _metadata(matcher: metadata_pb2.MetadataMatcher, metadata: Mapping[str, object]) -> bool:
    value: object = metadata.get(matcher.filter)
    for segment in matcher.path:
        if not isinstance(value, Mapping) or segment.key not in value:
            return False
        value = value[segment.key]
    return _value(matcher.value, value)


def _value(matcher: value_pb2.ValueMatcher, value: object) -> bool:
    kind = matcher.WhichOneof("match_pattern")
    if kind == "string_match":
        return isinstance(value, str) and _string(matcher.string_match, value)
    if kind == "list_match":
        return isinstance(value, list) and any(
            _value(matcher.list_match.one_of, item) for item in value
        )
    if kind == "or_match":
        return any(_value(m, value) for m in matcher.or_match.value_matchers)
    raise AssertionError(f"the evaluator does not know value matcher {kind}")
