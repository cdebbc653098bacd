"""AuthorizationPolicy -> Envoy ``envoy.filters.http.rbac`` filters, as Istio builds them.

One RBAC filter per action, in Istio's order: AUDIT (log only), DENY, then ALLOW; one Envoy
policy per rule, named ``<namespace>/<name>:rules[<i>]`` so that Envoy's response code
details (``rbac_access_denied_matched_policy[...]``) and its access log name the rule.
No ALLOW policy: no ALLOW filter (everything not denied passes); ALLOW policies whose rules
all fail to match (or that have none) leave the filter with nothing to allow: denied.

Each rule becomes permissions (its ``to`` entries, ORed) and principals (its ``from``
entries, ORed); the ``when`` conditions go on whichever side Envoy reads them from, ANDed
into every entry of that side.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import TypeAlias

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    substitution_format_string_pb2,
)
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, regex_pb2, string_pb2, value_pb2
from google.protobuf import wrappers_pb2

from pilotfish.model.authorization import (
    AuthorizationPolicy,
    Condition,
    Operation,
    Rule,
    Source,
    Values,
)
from pilotfish.model.identity import SPIFFE_SCHEME
from pilotfish.translate.proto_values import format_literal, pack

RBAC_FILTER_NAME = "envoy.filters.http.rbac"
JWT_FILTER_NAME = "envoy.filters.http.jwt_authn"
# Where the jwt_authn filter leaves a verified token's payload (its dynamic metadata), for
# requestPrincipals and the request.auth.* conditions to read.
JWT_PAYLOAD_KEY = "payload"
DENIED_DETAILS = "rbac_access_denied_matched_policy"
CEL_FILTER_NAME = "envoy.access_loggers.extension_filters.cel"

_Principal: TypeAlias = rbac_pb2.Principal
_Permission: TypeAlias = rbac_pb2.Permission
PortMap: TypeAlias = Callable[[int], int | None]


def rule_name(policy: AuthorizationPolicy, index: int) -> str:
    return f"{policy.ref}:rules[{index}]"


def same_port(port: int) -> int | None:
    return port


def build_rbac_filters(
    policies: Sequence[AuthorizationPolicy], listener_port: PortMap = same_port
) -> list[hcm_pb2.HttpFilter]:
    """The RBAC filters for the policies that apply to one workload (already chosen).

    Policies name the workload's ports; Envoy sees the port its listener accepted the
    connection on. ``listener_port`` maps the first to the second (None: never reached)."""
    filters = []
    for action, envoy_action in (
        ("AUDIT", rbac_pb2.RBAC.LOG),
        ("DENY", rbac_pb2.RBAC.DENY),
        ("ALLOW", rbac_pb2.RBAC.ALLOW),
    ):
        chosen = [p for p in policies if p.action == action]
        if not chosen:
            continue
        config = rbac_filter_pb2.RBAC()
        enforced = [p for p in chosen if not p.dry_run]
        if enforced:
            config.rules.CopyFrom(_rules(envoy_action, enforced, listener_port))
        dry_runs = [p for p in chosen if p.dry_run]
        if dry_runs:
            # Without enforced policies the filter has no rules at all, so enforces nothing.
            config.shadow_rules.CopyFrom(_rules(envoy_action, dry_runs, listener_port))
            config.shadow_rules_stat_prefix = f"istio_dry_run_{action.lower()}_"
        filters.append(hcm_pb2.HttpFilter(name=RBAC_FILTER_NAME, typed_config=pack(config)))
    return filters


def _rules(
    action: rbac_pb2.RBAC.Action.ValueType,
    policies: Sequence[AuthorizationPolicy],
    listener_port: PortMap,
) -> rbac_pb2.RBAC:
    rules = rbac_pb2.RBAC(action=action)
    for policy in policies:
        for index, rule in enumerate(policy.rules):
            rules.policies[rule_name(policy, index)].CopyFrom(rule_to_policy(rule, listener_port))
    return rules


def rule_to_policy(rule: Rule, listener_port: PortMap = same_port) -> rbac_pb2.Policy:
    permission_conditions = [c for c in rule.conditions if c.kind in _PERMISSION_KINDS]
    principal_conditions = [c for c in rule.conditions if c.kind not in _PERMISSION_KINDS]
    permission_extra = [
        p for c in permission_conditions for p in _condition_permission(c, listener_port)
    ]
    principal_extra = [p for c in principal_conditions for p in _condition_principal(c)]
    operations: Sequence[Operation | None] = rule.operations or (None,)
    sources: Sequence[Source | None] = rule.sources or (None,)
    return rbac_pb2.Policy(
        permissions=[
            _all_permissions([*(_operation(o, listener_port) if o else []), *permission_extra])
            for o in operations
        ],
        principals=[
            _all_principals([*(_source(s) if s else []), *principal_extra]) for s in sources
        ],
    )


# --- sources and operations -----------------------------------------------------------------


def _source(source: Source) -> list[_Principal]:
    return [
        *_principal_values(source.principals, _peer_principal),
        *_principal_values(source.request_principals, request_principal),
        *_principal_values(source.namespaces, _peer_namespace),
        *_principal_values(source.ip_blocks, _direct_remote_ip),
        *_principal_values(source.remote_ip_blocks, _remote_ip),
        *_principal_values(source.service_accounts, _peer_service_account),
        *_principal_values(source.trust_domains, _peer_trust_domain),
    ]


def _operation(operation: Operation, listener_port: PortMap) -> list[_Permission]:
    return [
        *_permission_values(operation.hosts, _host),
        *_permission_values(operation.ports, lambda p: _port(p, listener_port)),
        *_permission_values(operation.methods, _method),
        *_permission_values(operation.paths, _path),
    ]


_PERMISSION_KINDS = frozenset({"destination.ip", "destination.port", "connection.sni"})


def _condition_permission(condition: Condition, listener_port: PortMap) -> list[_Permission]:
    one: Callable[[str], _Permission]
    if condition.kind == "destination.ip":
        one = _destination_ip
    elif condition.kind == "destination.port":

        def one(value: str) -> _Permission:
            return _port(value, listener_port)

    else:
        one = _sni
    return _permission_values(condition.match, one)


def _condition_principal(condition: Condition) -> list[_Principal]:
    kind = condition.kind
    one: Callable[[str], _Principal]
    if kind == "request.headers":
        header = condition.name[0]

        def one(value: str) -> _Principal:
            return _Principal(header=header_matcher(header, value))

    elif kind == "source.ip":
        one = _direct_remote_ip
    elif kind == "remote.ip":
        one = _remote_ip
    elif kind == "source.namespace":
        one = _peer_namespace
    elif kind == "source.principal":
        one = _peer_principal
    elif kind == "source.serviceAccount":
        one = _peer_service_account
    elif kind == "source.trustDomain":
        one = _peer_trust_domain
    elif kind == "request.auth.principal":
        one = request_principal
    else:
        claim = {
            "request.auth.audiences": ("aud",),
            "request.auth.presenter": ("azp",),
        }.get(kind, condition.name)

        def one(value: str) -> _Principal:
            return _Principal(metadata=_claim_matcher(claim, string_matcher(value)))

    return _principal_values(condition.match, one)


# --- combinators ----------------------------------------------------------------------------


def _principal_values(values: Values, one: Callable[[str], _Principal]) -> list[_Principal]:
    found = []
    if values.values:
        found.append(_any_principal([one(v) for v in values.values]))
    if values.not_values:
        found.append(_Principal(not_id=_any_principal([one(v) for v in values.not_values])))
    return found


def _permission_values(values: Values, one: Callable[[str], _Permission]) -> list[_Permission]:
    found = []
    if values.values:
        found.append(_any_permission([one(v) for v in values.values]))
    if values.not_values:
        found.append(_Permission(not_rule=_any_permission([one(v) for v in values.not_values])))
    return found


def _any_principal(ids: list[_Principal]) -> _Principal:
    return ids[0] if len(ids) == 1 else _Principal(or_ids=_Principal.Set(ids=ids))


def _all_principals(ids: list[_Principal]) -> _Principal:
    if not ids:
        return _Principal(any=True)
    return ids[0] if len(ids) == 1 else _Principal(and_ids=_Principal.Set(ids=ids))


def _any_permission(rules: list[_Permission]) -> _Permission:
    return rules[0] if len(rules) == 1 else _Permission(or_rules=_Permission.Set(rules=rules))


def _all_permissions(rules: list[_Permission]) -> _Permission:
    if not rules:
        return _Permission(any=True)
    return rules[0] if len(rules) == 1 else _Permission(and_rules=_Permission.Set(rules=rules))


# --- single values --------------------------------------------------------------------------


def string_matcher(
    value: str, prefix: str = "", ignore_case: bool = False
) -> string_pb2.StringMatcher:
    """Istio's string forms: ``*`` any non-empty value, ``*abc`` suffix, ``abc*`` prefix.

    With a ``prefix`` (``spiffe://`` for principals) a suffix form becomes a regex, so that
    the prefix still has to be there."""
    if value == "*":
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".+"))
    if value.startswith("*"):
        if prefix:
            pattern = re.escape(prefix) + ".*" + re.escape(value[1:])
            return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))
        return string_pb2.StringMatcher(suffix=value[1:], ignore_case=ignore_case)
    if value.endswith("*"):
        return string_pb2.StringMatcher(prefix=prefix + value[:-1], ignore_case=ignore_case)
    return string_pb2.StringMatcher(exact=prefix + value, ignore_case=ignore_case)


def header_matcher(name: str, value: str, ignore_case: bool = False) -> rc.HeaderMatcher:
    """Istio's header forms: ``*`` means the header is present (even empty)."""
    if value == "*":
        return rc.HeaderMatcher(name=name, present_match=True)
    return rc.HeaderMatcher(name=name, string_match=string_matcher(value, ignore_case=ignore_case))


def _peer_principal(value: str) -> _Principal:
    return _Principal(
        authenticated=_Principal.Authenticated(
            principal_name=string_matcher(value, prefix=SPIFFE_SCHEME)
        )
    )


def _peer_namespace(value: str) -> _Principal:
    namespace = ".*".join(re.escape(part) for part in value.split("*"))
    return _Principal(
        authenticated=_Principal.Authenticated(
            principal_name=string_pb2.StringMatcher(
                safe_regex=regex_pb2.RegexMatcher(regex=f".*/ns/{namespace}/.*")
            )
        )
    )


def _peer_service_account(value: str) -> _Principal:
    """``<namespace>/<account>`` in any trust domain, as Istio matches it."""
    namespace, _, account = value.partition("/")
    pattern = f"spiffe://.+/ns/{re.escape(namespace)}/(.+/|)sa/{re.escape(account)}(/.+)?"
    return _authenticated(
        string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))
    )


def _peer_trust_domain(value: str) -> _Principal:
    if value == "*":
        return _authenticated(string_pb2.StringMatcher(prefix=SPIFFE_SCHEME))
    if "*" not in value:
        return _authenticated(string_pb2.StringMatcher(prefix=f"{SPIFFE_SCHEME}{value}/"))
    before, _, after = value.partition("*")
    pattern = f"spiffe://{re.escape(before)}[^/]*{re.escape(after)}/.*"
    return _authenticated(
        string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))
    )


def _authenticated(name: string_pb2.StringMatcher) -> _Principal:
    return _Principal(authenticated=_Principal.Authenticated(principal_name=name))


def request_principal(value: str) -> _Principal:
    """``<iss>/<sub>`` split at the last ``/``, each half matched on its own, as Istio does
    (``*`` forms apply to the half that carries them)."""
    issuer, found, subject = value.rpartition("/")
    if not found:
        issuer, subject = value, ""
    anything = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".+"))
    if value == "*":
        match_issuer, match_subject = anything, anything
    elif value.startswith("*"):
        if found:
            match_issuer = (
                anything if issuer == "*" else string_pb2.StringMatcher(suffix=issuer[1:])
            )
            match_subject = string_pb2.StringMatcher(exact=subject)
        else:
            match_issuer, match_subject = anything, string_pb2.StringMatcher(suffix=value[1:])
    elif value.endswith("*"):
        if found:
            match_issuer = string_pb2.StringMatcher(exact=issuer)
            match_subject = (
                anything if subject == "*" else string_pb2.StringMatcher(prefix=subject[:-1])
            )
        else:
            match_issuer, match_subject = string_pb2.StringMatcher(prefix=value[:-1]), anything
    else:
        match_issuer = string_pb2.StringMatcher(exact=issuer)
        match_subject = string_pb2.StringMatcher(exact=subject)
    return _Principal(
        and_ids=_Principal.Set(
            ids=[
                _Principal(metadata=_claim_matcher(("iss",), match_issuer, as_list=False)),
                _Principal(metadata=_claim_matcher(("sub",), match_subject, as_list=False)),
            ]
        )
    )


def _claim_matcher(
    claim: Iterable[str], match: string_pb2.StringMatcher, *, as_list: bool = True
) -> metadata_pb2.MetadataMatcher:
    """A claim of the verified token's payload; a list claim matches when one item does."""
    value = value_pb2.ValueMatcher(string_match=match)
    if as_list:
        value = value_pb2.ValueMatcher(
            or_match=value_pb2.OrMatcher(
                value_matchers=[
                    value,
                    value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=value)),
                ]
            )
        )
    return metadata_pb2.MetadataMatcher(
        filter=JWT_FILTER_NAME,
        path=[
            metadata_pb2.MetadataMatcher.PathSegment(key=key) for key in (JWT_PAYLOAD_KEY, *claim)
        ],
        value=value,
    )


def cidr(value: str) -> address_pb2.CidrRange:
    address, _, length = value.partition("/")
    bits = int(length) if length else (128 if ":" in address else 32)
    return address_pb2.CidrRange(
        address_prefix=address, prefix_len=wrappers_pb2.UInt32Value(value=bits)
    )


def _direct_remote_ip(value: str) -> _Principal:
    return _Principal(direct_remote_ip=cidr(value))


def _remote_ip(value: str) -> _Principal:
    return _Principal(remote_ip=cidr(value))


def _destination_ip(value: str) -> _Permission:
    return _Permission(destination_ip=cidr(value))


def _host(value: str) -> _Permission:
    return _Permission(header=header_matcher(":authority", value, ignore_case=True))


def _port(value: str, listener_port: PortMap) -> _Permission:
    port = listener_port(int(value))
    if port is None:
        return _Permission(not_rule=_Permission(any=True))
    return _Permission(destination_port=port)


def _method(value: str) -> _Permission:
    return _Permission(header=header_matcher(":method", value))


def _path(value: str) -> _Permission:
    return _Permission(url_path=path_pb2.PathMatcher(path=string_matcher(value)))


def _sni(value: str) -> _Permission:
    return _Permission(requested_server_name=string_matcher(value))


# --- why a request was denied ---------------------------------------------------------------


def denial_mappers(
    proxy: str, policies: Sequence[AuthorizationPolicy]
) -> list[hcm_pb2.ResponseMapper]:
    """Local-reply mappers that turn Envoy's bare "RBAC: access denied" into a body naming
    the proxy and the DENY rule that matched, or the ALLOW policies none of which did."""
    mappers = []
    for policy in policies:
        if policy.action != "DENY" or policy.dry_run:
            continue
        for index in range(len(policy.rules)):
            mappers.append(
                _details_mapper(
                    f"{DENIED_DETAILS}[{rule_name(policy, index)}]",
                    f"RBAC: access denied by {proxy}: DENY policy {policy.ref} matched "
                    f"(rules[{index}])",
                )
            )
    allowing = [p for p in policies if p.action == "ALLOW" and not p.dry_run]
    if allowing:
        described = ", ".join(
            p.ref if p.rules else f"{p.ref} (no rules: allows nothing)" for p in allowing
        )
        mappers.append(
            _details_mapper(
                f"{DENIED_DETAILS}[none]",
                f"RBAC: access denied by {proxy}: no ALLOW policy matched this request; "
                f"the ALLOW policies of this workload are {described}",
            )
        )
    return mappers


def details_starting_with(prefix: str) -> accesslog_pb2.AccessLogFilter:
    return cel_filter(f"response.code_details.startsWith('{prefix}')")


def _details_mapper(details: str, text: str) -> hcm_pb2.ResponseMapper:
    return hcm_pb2.ResponseMapper(
        filter=cel_filter(f"response.code_details == '{details}'"),
        body_format_override=text_body(text),
    )


def cel_filter(expression: str) -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(
        extension_filter=accesslog_pb2.ExtensionFilter(
            name=CEL_FILTER_NAME,
            typed_config=pack(cel_pb2.ExpressionFilter(expression=expression)),
        )
    )


def text_body(
    text: str, operators: str = ""
) -> substitution_format_string_pb2.SubstitutionFormatString:
    """``text`` as it is (a ``%`` of ours must not read as an Envoy operator), then
    ``operators``, Envoy's format string, as it is."""
    return substitution_format_string_pb2.SubstitutionFormatString(
        text_format_source=base_pb2.DataSource(
            inline_string=format_literal(text) + operators + "\n"
        )
    )
