"""AuthorizationPolicy translation: the RBAC filters decide every request as Istio's semantics
(the simulator) do, filter order and names, and the bodies that say why a request was denied."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TypeVar

import pytest
from envoy.config.rbac.v3 import rbac_pb2 as rbac_rules_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.translate.rbac_evaluator import EnvoyRequest, evaluate

from pilotfish.model.authorization import (
    AuthorizationPolicy,
    Condition,
    ConditionKind,
    Operation,
    Rule,
    Source,
    Values,
)
from pilotfish.model.diagnostics import SourceMap
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import Gateway, GatewayServer, Meta
from pilotfish.model.services import MeshView
from pilotfish.translate import MeshTranslator
from pilotfish.translate.authorization import build_rbac_filters
from pilotfish.translate.authz_simulator import Decision, Request, decide, rule_matches

JWT_FILTER = "envoy.filters.http.jwt_authn"
_T = TypeVar("_T")

PATHS = ["/", "/admin", "/admin/users", "/public/app.js", "/index.php"]
PATH_PATTERNS = [*PATHS, "/admin*", "/p*", "*.js", "*.php", "*", "/admin/*"]
METHODS = ["GET", "POST", "PUT"]
METHOD_PATTERNS = [*METHODS, "*", "P*", "*T"]
HOSTS = ["a.example", "B.example", "api.svc"]
HOST_PATTERNS = ["a.example", "A.EXAMPLE", "*.example", "api.*", "*", "b.example"]
PORTS = [8080, 9090]
PEERS = [
    None,
    "spiffe://cluster.local/ns/prod/sa/web",
    "spiffe://cluster.local/ns/prod/sa/admin",
    "spiffe://cluster.local/ns/dev/sa/web",
    "spiffe://other.domain/ns/prod/sa/web",
    "spiffe://cluster.local/ns/production/sa/dev",
    "spiffe://cluster.local/ns/team.domain/sa/web",
]
PRINCIPAL_PATTERNS = [
    "cluster.local/ns/prod/sa/web",
    "*admin",
    "cluster.local/ns/dev/*",
    "*",
    "other.domain/*",
    "*/sa/web",
]
NAMESPACE_PATTERNS = ["prod", "dev", "pr*", "*", "*ev"]
SERVICE_ACCOUNTS = ["prod/web", "prod/admin", "dev/web", "production/dev"]
TRUST_DOMAIN_PATTERNS = ["cluster.local", "other.domain", "*", "cluster.*", "*.domain", "cluster"]
ISSUERS = ["https://issuer.example", "iss"]
SUBJECTS = ["alice", "bob"]
REQUEST_PRINCIPAL_PATTERNS = [
    "https://issuer.example/alice",
    "iss/*",
    "*/bob",
    "*",
    "https://issuer.example/al*",
    "*example/alice",
    "iss",
    "iss*",
    "*ce",
]
ADDRESSES = ["10.0.0.1", "192.168.1.5", "127.0.0.1"]
BLOCKS = ["10.0.0.0/8", "192.168.1.5", "127.0.0.0/24", "0.0.0.0/0"]
HEADER_VALUES = [None, "bob", "eve", ""]
HEADER_PATTERNS = ["bob", "e*", "*", "*b", "eve"]
CLAIM_PATTERNS = ["admin", "dev", "ad*", "*", "web", "api", "*pi"]
SNIS = ["", "a.example", "api.svc"]


def meta(name: str, namespace: str = "default") -> Meta:
    return Meta("AuthorizationPolicy", name, namespace, SourceMap(f"{name}.yaml"))


def values(patterns: list[str]) -> st.SearchStrategy[Values]:
    some = st.lists(st.sampled_from(patterns), max_size=2).map(tuple)
    return st.builds(Values, values=some, not_values=some).filter(bool)


def one_field_or_several(kind: type[_T], fields: Mapping[str, list[str]]) -> st.SearchStrategy[_T]:
    """Mostly a single attribute, so that each one is tried on its own, and sometimes all."""
    singles = [st.builds(kind, **{name: values(patterns)}) for name, patterns in fields.items()]
    several = st.builds(
        kind, **{name: st.one_of(st.just(Values()), values(p)) for name, p in fields.items()}
    )
    return st.one_of(*singles, several)


sources = one_field_or_several(
    Source,
    {
        "principals": PRINCIPAL_PATTERNS,
        "request_principals": REQUEST_PRINCIPAL_PATTERNS,
        "namespaces": NAMESPACE_PATTERNS,
        "ip_blocks": BLOCKS,
        "remote_ip_blocks": BLOCKS,
        "service_accounts": SERVICE_ACCOUNTS,
        "trust_domains": TRUST_DOMAIN_PATTERNS,
    },
)
operations = one_field_or_several(
    Operation,
    {
        "hosts": HOST_PATTERNS,
        "ports": [str(p) for p in PORTS],
        "methods": METHOD_PATTERNS,
        "paths": PATH_PATTERNS,
    },
)
CONDITION_PATTERNS: Mapping[ConditionKind, list[str]] = {
    "request.headers": HEADER_PATTERNS,
    "source.ip": BLOCKS,
    "remote.ip": BLOCKS,
    "source.namespace": NAMESPACE_PATTERNS,
    "source.principal": PRINCIPAL_PATTERNS,
    "source.serviceAccount": SERVICE_ACCOUNTS,
    "source.trustDomain": TRUST_DOMAIN_PATTERNS,
    "request.auth.principal": REQUEST_PRINCIPAL_PATTERNS,
    "request.auth.audiences": CLAIM_PATTERNS,
    "request.auth.presenter": CLAIM_PATTERNS,
    "request.auth.claims": CLAIM_PATTERNS,
    "destination.ip": BLOCKS,
    "destination.port": [str(p) for p in PORTS],
    "connection.sni": ["a.example", "api.*", "*", "*.svc"],
}
CLAIM_PATHS = [("groups",), ("realm", "role"), ("missing",), ("sub",)]


@st.composite
def conditions(draw: st.DrawFn) -> Condition:
    kind = draw(st.sampled_from(sorted(CONDITION_PATTERNS)))
    name: tuple[str, ...] = ()
    if kind == "request.headers":
        name = ("x-user",)
    elif kind == "request.auth.claims":
        name = draw(st.sampled_from(CLAIM_PATHS))
    return Condition(key=kind, kind=kind, match=draw(values(CONDITION_PATTERNS[kind])), name=name)


rules = st.builds(
    Rule,
    sources=st.lists(sources, max_size=2).map(tuple),
    operations=st.lists(operations, max_size=2).map(tuple),
    conditions=st.lists(conditions(), max_size=2).map(tuple),
)
# One part of a rule at a time, for the per-rule property.
single_part_rules = st.one_of(
    st.builds(Rule, sources=st.tuples(sources)),
    st.builds(Rule, operations=st.tuples(operations)),
    st.builds(Rule, conditions=st.tuples(conditions())),
    rules,
)


@st.composite
def policy_sets(draw: st.DrawFn) -> list[AuthorizationPolicy]:
    count = draw(st.integers(0, 4))
    return [
        AuthorizationPolicy(
            meta=meta(f"p{index}"),
            action=(action := draw(st.sampled_from(["ALLOW", "DENY", "AUDIT"]))),
            rules=tuple(draw(st.lists(rules, max_size=3))),
            dry_run=action != "AUDIT" and draw(st.booleans()),
        )
        for index in range(count)
    ]


jwts = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "iss": st.sampled_from(ISSUERS),
            "sub": st.sampled_from(SUBJECTS),
            "aud": st.sampled_from(["web", "api", ["web", "api"], ["other"]]),
            "azp": st.sampled_from(["web", "app"]),
            "groups": st.sampled_from([["admin", "dev"], ["dev"], "admin", 7]),
            "realm": st.sampled_from([{"role": "admin"}, {"role": ["dev"]}, "flat"]),
        }
    ),
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    header = draw(st.sampled_from(HEADER_VALUES))
    return Request(
        method=draw(st.sampled_from(METHODS)),
        path=draw(st.sampled_from(PATHS)),
        host=draw(st.sampled_from(HOSTS)),
        port=draw(st.sampled_from(PORTS)),
        headers={} if header is None else {"x-user": header},
        source_ip=draw(st.sampled_from(ADDRESSES)),
        remote_ip=draw(st.sampled_from(ADDRESSES)),
        destination_ip=draw(st.sampled_from(ADDRESSES)),
        sni=draw(st.sampled_from(SNIS)),
        peer=draw(st.sampled_from(PEERS)),
        jwt=draw(jwts),
    )


def as_envoy_sees_it(request: Request, query: str = "") -> EnvoyRequest:
    return EnvoyRequest(
        headers={
            ":method": request.method,
            ":path": request.path + query,
            ":authority": request.host,
            **request.headers,
        },
        direct_remote_ip=request.source_ip,
        remote_ip=request.remote_ip,
        destination_ip=request.destination_ip,
        destination_port=request.port,
        sni=request.sni,
        peer_uri_san=request.peer,
        metadata={} if request.jwt is None else {JWT_FILTER: {"payload": dict(request.jwt)}},
    )


def expected_details(decision: Decision) -> str:
    if decision.allowed:
        return ""
    return f"rbac_access_denied_matched_policy[{decision.rule or 'none'}]"


@settings(max_examples=400, deadline=None)
@given(policies=policy_sets(), request=requests(), query=st.sampled_from(["", "?a=1"]))
def test_generated_rbac_decides_as_istio_semantics(
    policies: list[AuthorizationPolicy], request: Request, query: str
) -> None:
    simulated = decide(policies, request)

    allowed, details = evaluate(build_rbac_filters(policies), as_envoy_sees_it(request, query))

    assert (allowed, details) == (simulated.allowed, expected_details(simulated))


@settings(max_examples=1500, deadline=None)
@given(rule=single_part_rules, request=requests())
def test_each_rule_matches_the_requests_istio_says_it_matches(rule: Rule, request: Request) -> None:
    """One rule at a time, so that no part of it hides behind the rest of a policy set."""
    deny = [policy("one", "DENY", rule)]

    allowed, _ = judge(deny, request)

    assert (not allowed) == rule_matches(rule, request)


# --- the rules Istio users rely on, one by one -------------------------------------------


def policy(name: str, action: str = "ALLOW", *rules: Rule) -> AuthorizationPolicy:
    return AuthorizationPolicy(meta=meta(name), action=action, rules=rules)  # type: ignore[arg-type]


def judge(policies: list[AuthorizationPolicy], request: Request) -> tuple[bool, str]:
    return evaluate(build_rbac_filters(policies), as_envoy_sees_it(request))


ADMIN = Rule(operations=(Operation(paths=Values(("/admin*",))),))


def test_no_policy_allows_everything() -> None:
    assert build_rbac_filters([]) == []
    assert decide([], Request()) == Decision(True)


def test_an_allow_policy_without_rules_denies_everything() -> None:
    assert judge([policy("nothing")], Request()) == (
        False,
        "rbac_access_denied_matched_policy[none]",
    )


def test_an_empty_rule_matches_everything() -> None:
    assert judge([policy("all", "ALLOW", Rule())], Request(path="/x"))[0]
    assert judge([policy("all", "DENY", Rule())], Request(path="/x")) == (
        False,
        "rbac_access_denied_matched_policy[default/all:rules[0]]",
    )


def test_deny_wins_over_allow() -> None:
    policies = [policy("open", "ALLOW", Rule()), policy("no-admin", "DENY", ADMIN)]
    assert judge(policies, Request(path="/admin/users")) == (
        False,
        "rbac_access_denied_matched_policy[default/no-admin:rules[0]]",
    )
    assert judge(policies, Request(path="/home"))[0]


def test_dry_run_policies_are_shadow_rules_that_never_decide() -> None:
    watch_deny = replace(policy("watch-deny", "DENY", Rule()), dry_run=True)
    watch_allow = replace(policy("watch-allow", "ALLOW", ADMIN), dry_run=True)

    filters = build_rbac_filters([watch_deny, watch_allow])

    assert judge([watch_deny, watch_allow], Request(path="/home")) == (True, "")
    for http_filter in filters:
        config = rbac_pb2.RBAC()
        http_filter.typed_config.Unpack(config)
        assert not config.HasField("rules")
        assert config.shadow_rules.policies
        assert config.shadow_rules_stat_prefix.startswith("istio_dry_run_")


def test_audit_never_decides() -> None:
    assert judge([policy("watch", "AUDIT", Rule())], Request()) == (True, "")


def test_filters_come_in_istios_order_audit_deny_allow() -> None:
    filters = build_rbac_filters(
        [policy("a", "ALLOW", Rule()), policy("d", "DENY", ADMIN), policy("w", "AUDIT", ADMIN)]
    )
    actions = []
    for http_filter in filters:
        config = rbac_pb2.RBAC()
        http_filter.typed_config.Unpack(config)
        actions.append((config.rules.action, sorted(config.rules.policies)))
    assert actions == [
        (rbac_rules_pb2.RBAC.LOG, ["default/w:rules[0]"]),
        (rbac_rules_pb2.RBAC.DENY, ["default/d:rules[0]"]),
        (rbac_rules_pb2.RBAC.ALLOW, ["default/a:rules[0]"]),
    ]


def test_principals_are_spiffe_ids_and_namespaces_are_path_segments() -> None:
    web = "spiffe://cluster.local/ns/prod/sa/web"
    only_web = policy(
        "web",
        "ALLOW",
        Rule(sources=(Source(principals=Values(("cluster.local/ns/prod/sa/web",))),)),
    )
    assert judge([only_web], Request(peer=web))[0]
    assert not judge([only_web], Request(peer="spiffe://cluster.local/ns/prod/sa/other"))[0]
    assert not judge([only_web], Request(peer=None))[0]
    prod = policy("prod", "ALLOW", Rule(sources=(Source(namespaces=Values(("prod",))),)))
    assert judge([prod], Request(peer=web))[0]
    assert not judge([prod], Request(peer="spiffe://cluster.local/ns/production/sa/web"))[0]


def test_a_query_string_does_not_hide_a_path_from_a_deny_rule() -> None:
    policies = [
        policy("no-admin", "DENY", Rule(operations=(Operation(paths=Values(("/admin",))),)))
    ]
    request = Request(path="/admin")
    assert not evaluate(build_rbac_filters(policies), as_envoy_sees_it(request, "?x=1"))[0]


def test_sidecar_ports_are_the_apps_ports_seen_on_the_inbound_listener() -> None:
    only_8080 = [policy("p", "ALLOW", Rule(operations=(Operation(ports=Values(("8080",))),)))]
    inbound = 41000
    filters = build_rbac_filters(only_8080, lambda port: inbound if port == 8080 else None)
    reached = as_envoy_sees_it(Request(port=8080))
    assert evaluate(filters, EnvoyRequest(**{**reached.__dict__, "destination_port": inbound}))[0]
    other = [policy("p", "ALLOW", Rule(operations=(Operation(ports=Values(("9090",))),)))]
    filters = build_rbac_filters(other, lambda port: inbound if port == 8080 else None)
    assert not evaluate(filters, EnvoyRequest(**{**reached.__dict__, "destination_port": inbound}))[
        0
    ]


# --- what a proxy's connection manager gets ------------------------------------------------


def _manager_of(view: MeshView, node: ProxyNode) -> hcm_pb2.HttpConnectionManager:
    listeners = MeshTranslator(view).resources_for(node).listeners
    wanted = "inbound" if node.kind == "sidecar" else listeners[0].name
    (listener,) = [item for item in listeners if item.name == wanted]
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def test_jwt_then_rbac_first_in_the_sidecar_inbound_manager(
    authorization_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    manager = _manager_of(authorization_view, frontend_sidecar)

    # After the peer header's filter (telemetry's, first on every HTTP connection manager).
    assert [f.name for f in manager.http_filters] == [
        "envoy.filters.http.header_to_metadata",
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.rbac",
        "envoy.filters.http.rbac",
        "envoy.filters.http.rbac",
        "envoy.filters.http.router",
    ]
    assert manager.normalize_path.value
    # The policies' bodies first; then telemetry's for every other reply (they start so).
    bodies = [
        m.body_format_override.text_format_source.inline_string
        for m in manager.local_reply_config.mappers
        if not m.body_format_override.text_format_source.inline_string.startswith("pilotfish:")
    ]
    assert bodies[0].startswith("JWT rejected by frontend-0")
    assert (
        "RBAC: access denied by frontend-0: DENY policy default/no-admin matched (rules[1])\n"
        in bodies
    )
    assert bodies[-1] == (
        "RBAC: access denied by frontend-0: no ALLOW policy matched this request; "
        "the ALLOW policies of this workload are default/callers\n"
    )


def test_the_gateway_takes_root_namespace_policies_only(
    authorization_view: MeshView, ingress_gateway: ProxyNode
) -> None:
    view = replace(
        authorization_view,
        config=replace(
            authorization_view.config,
            gateways=(Gateway(meta("web"), {}, (GatewayServer(18080, "http", "HTTP", ("*",)),)),),
            authorization_policies=(
                *authorization_view.config.authorization_policies,
                policy("everything-in-default"),
            ),
        ),
    )

    manager = _manager_of(view, ingress_gateway)

    # Only the mesh-wide AUDIT policy of istio-system, after the peer header's filter; then
    # CORS, fault, router.
    assert [f.name for f in manager.http_filters] == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.rbac",
        "envoy.filters.http.cors",
        "envoy.filters.http.fault",
        "envoy.filters.http.router",
    ]
    assert not [
        m
        for m in manager.local_reply_config.mappers
        if not m.body_format_override.text_format_source.inline_string.startswith("pilotfish:")
    ]


def test_no_policy_no_filters_and_paths_as_they_were(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    manager = _manager_of(quickstart_view, frontend_sidecar)

    assert [f.name for f in manager.http_filters] == [
        "envoy.filters.http.header_to_metadata",
        "envoy.filters.http.router",
    ]
    assert not manager.HasField("normalize_path")


@pytest.mark.parametrize(
    ("source", "peer", "matches"),
    [
        (Source(service_accounts=Values(("prod/web",))), "spiffe://any.td/ns/prod/sa/web", True),
        (Source(service_accounts=Values(("prod/web",))), "spiffe://td/ns/prod/sa/webby", False),
        (Source(service_accounts=Values(("prod/web",))), "spiffe://td/ns/dev/sa/web", False),
        (
            Source(trust_domains=Values(("cluster.local",))),
            "spiffe://cluster.local/ns/a/sa/b",
            True,
        ),
        (Source(trust_domains=Values(("cluster",))), "spiffe://cluster.local/ns/a/sa/b", False),
        (Source(trust_domains=Values(("*.domain",))), "spiffe://x.domain/ns/a/sa/b", True),
        (Source(trust_domains=Values(("*.domain",))), "spiffe://td/ns/a.domain/sa/b", False),
        (Source(trust_domains=Values(("cluster.*",))), "spiffe://cluster.local/ns/a/sa/b", True),
        (Source(trust_domains=Values(("*",))), "spiffe://td/ns/a/sa/b", True),
        (Source(trust_domains=Values(("*",))), None, False),
        (Source(namespaces=Values(("prod",))), "spiffe://td/ns/production/sa/b", False),
        (Source(principals=Values(("*-admin",))), "spiffe://td/ns/a/sa/ops-admin", True),
        (Source(principals=Values(("*-admin",))), "spiffe://td/ns/a/sa/admin", False),
    ],
)
def test_peer_identity_forms(source: Source, peer: str | None, matches: bool) -> None:
    rule = Rule(sources=(source,))
    request = Request(peer=peer)

    assert rule_matches(rule, request) == matches
    assert (not judge([policy("one", "DENY", rule)], request)[0]) == matches
