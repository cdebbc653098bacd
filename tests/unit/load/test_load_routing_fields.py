"""VirtualService routing fields: mirror/mirrors, corsPolicy, delegate and match conditions."""

from __future__ import annotations

import textwrap

import pytest
from load_cases import BOOKINFO_REGISTRY, REVIEWS_RULE, assert_at, documents, errors, load

from pilotfish.load import LoadResult, load_texts
from pilotfish.model.resources import (
    CorsPolicy,
    Delegate,
    Destination,
    HTTPMatchRequest,
    MirrorPolicy,
    StringMatch,
    VirtualService,
)

REGISTRY = documents(*BOOKINFO_REGISTRY)


def route(fields: str, *, route_lines: str = "route: [{destination: {host: reviews}}]") -> str:
    """A VirtualService for reviews whose only route has ``fields`` (YAML at route level)."""
    body = textwrap.indent(textwrap.dedent(fields).strip("\n") + "\n" + route_lines, "    ")
    return (
        "apiVersion: networking.istio.io/v1\n"
        "kind: VirtualService\n"
        "metadata:\n  name: reviews\n"
        "spec:\n  hosts: [reviews]\n  http:\n  - " + body.lstrip() + "\n"
    )


def parsed(text: str) -> VirtualService:
    _, result = load(text, REVIEWS_RULE, *BOOKINFO_REGISTRY)
    assert errors(result) == []
    assert result.config is not None
    return result.config.virtual_services[0]


def load_route(text: str) -> tuple[str, LoadResult]:
    return load(text, REVIEWS_RULE, *BOOKINFO_REGISTRY)


# --- mirroring ---------------------------------------------------------------------------------


def test_mirror_with_percentage_and_mirrors_list() -> None:
    single = parsed(route("mirror: {host: ratings}\nmirrorPercentage: {value: 12.5}"))
    assert single.http[0].mirrors == (MirrorPolicy(Destination("ratings"), 12.5),)

    several = parsed(
        route(
            """mirrors:
            - destination: {host: ratings}
            - destination: {host: reviews, subset: v2}
              percentage: {value: 0}"""
        )
    )
    assert several.http[0].mirrors == (
        MirrorPolicy(Destination("ratings"), 100.0),
        MirrorPolicy(Destination("reviews", "v2"), 0.0),
    )


def test_legacy_mirror_percent_is_accepted_with_a_deprecation_warning() -> None:
    text, result = load_route(route("mirror: {host: ratings}\nmirrorPercent: 30"))
    assert_at(
        result,
        text,
        "spec.http[0].mirrorPercent",
        "mirrorPercent",
        "deprecated",
        severity="warning",
    )
    assert result.config is not None
    assert result.config.virtual_services[0].http[0].mirrors[0].percent == 30.0


@pytest.mark.parametrize(
    ("fields", "field", "needle", "message"),
    [
        (
            "mirror: {host: ratings}\nmirrorPercentage: {value: 101}",
            "spec.http[0].mirrorPercentage.value",
            "value: 101",
            "out of range",
        ),
        (
            "mirror: {host: ratings}\nmirrors: [{destination: {host: ratings}}]",
            "spec.http[0].mirrors",
            "mirrors:",
            "cannot be combined with mirror",
        ),
        (
            "mirrors: [{percentage: {value: 5}}]",
            "spec.http[0].mirrors[0].destination",
            "{percentage",
            "required",
        ),
        (
            "mirror: {host: nowhere}",
            "spec.http[0].mirror.host",
            "host: nowhere",
            'unknown service "nowhere"',
        ),
        (
            "mirror: {host: reviews, subset: v9}",
            "spec.http[0].mirror.subset",
            "subset: v9",
            'subset "v9" is not defined',
        ),
        (
            "mirrors: [{destination: {host: ratings, port: {number: 1}}}]",
            "spec.http[0].mirrors[0].destination.port.number",
            "number: 1",
            "has no port 1",
        ),
    ],
)
def test_bad_mirrors_are_errors_at_their_field(
    fields: str, field: str, needle: str, message: str
) -> None:
    text, result = load_route(route(fields))
    assert_at(result, text, field, needle, message)


# --- CORS --------------------------------------------------------------------------------------


def test_cors_policy_values() -> None:
    service = parsed(
        route(
            """corsPolicy:
              allowOrigins: [{exact: "https://a.example"}, {regex: ".*[.]b[.]example"}]
              allowMethods: [GET, POST]
              allowHeaders: [x-a]
              exposeHeaders: [x-b]
              maxAge: 24h
              allowCredentials: true
              unmatchedPreflights: IGNORE"""
        )
    )
    assert service.http[0].cors_policy == CorsPolicy(
        allow_origins=(
            StringMatch("exact", "https://a.example"),
            StringMatch("regex", ".*[.]b[.]example"),
        ),
        allow_methods=("GET", "POST"),
        allow_headers=("x-a",),
        expose_headers=("x-b",),
        max_age=86400.0,
        allow_credentials=True,
        forward_unmatched_preflights=False,
    )


def test_deprecated_allow_origin_becomes_exact_matches() -> None:
    text, result = load_route(route("corsPolicy: {allowOrigin: [https://a.example]}"))
    assert_at(
        result,
        text,
        "spec.http[0].corsPolicy.allowOrigin",
        "allowOrigin",
        "deprecated",
        severity="warning",
    )
    assert result.config is not None
    policy = result.config.virtual_services[0].http[0].cors_policy
    assert policy is not None
    assert policy.allow_origins == (StringMatch("exact", "https://a.example"),)


@pytest.mark.parametrize(
    ("fields", "field", "needle", "message"),
    [
        (
            "corsPolicy: {allowMethods: [GET, FETCH]}",
            "spec.http[0].corsPolicy.allowMethods[1]",
            "FETCH",
            "not a supported HTTP method",
        ),
        (
            "corsPolicy: {allowHeaders: [bad header]}",
            "spec.http[0].corsPolicy.allowHeaders[0]",
            "bad header",
            "",
        ),
        ("corsPolicy: {maxAge: 1.5s}", "spec.http[0].corsPolicy.maxAge", "maxAge", "whole seconds"),
        (
            "corsPolicy: {allowOrigins: [{regex: '('}]}",
            "spec.http[0].corsPolicy.allowOrigins[0].regex",
            "regex",
            "",
        ),
        (
            "corsPolicy: {unmatchedPreflights: DROP}",
            "spec.http[0].corsPolicy.unmatchedPreflights",
            "unmatchedPreflights",
            "must be one of",
        ),
    ],
)
def test_bad_cors_policies_are_errors(fields: str, field: str, needle: str, message: str) -> None:
    text, result = load_route(route(fields))
    assert_at(result, text, field, needle, message)


# --- match conditions --------------------------------------------------------------------------


def test_every_match_condition_is_parsed() -> None:
    service = parsed(
        route(
            """match:
            - scheme: {exact: https}
              port: 9080
              sourceLabels: {app: productpage}
              sourceNamespace: team-a
              gateways: [mesh]
              ignoreUriCase: true
              uri: {prefix: /Reviews}
              withoutHeaders: {x-debug: {exact: "1"}}"""
        )
    )
    assert service.http[0].match == (
        HTTPMatchRequest(
            uri=StringMatch("prefix", "/Reviews"),
            scheme=StringMatch("exact", "https"),
            without_headers={"x-debug": StringMatch("exact", "1")},
            ignore_uri_case=True,
            port=9080,
            source_labels={"app": "productpage"},
            source_namespace="team-a",
            gateways=("mesh",),
        ),
    )


def test_stat_prefix_is_the_only_match_field_still_warned_about() -> None:
    text, result = load_route(route("match: [{statPrefix: reviews}]"))
    assert_at(
        result,
        text,
        "spec.http[0].match[0].statPrefix",
        "statPrefix",
        "not implemented",
        severity="warning",
    )


@pytest.mark.parametrize(
    ("condition", "field", "needle", "message"),
    [
        ("port: 0", "spec.http[0].match[0].port", "port", "out of range"),
        (
            "sourceNamespace: Team_A",
            "spec.http[0].match[0].sourceNamespace",
            "sourceNamespace",
            "not a valid namespace",
        ),
        (
            "sourceLabels: {app: 'a b'}",
            "spec.http[0].match[0].sourceLabels.app",
            "sourceLabels",
            "not a valid label value",
        ),
        (
            "gateways: [nowhere]",
            "spec.http[0].match[0].gateways[0]",
            "gateways",
            'unknown Gateway "default/nowhere"',
        ),
        (
            "withoutHeaders: {x-a: {}}",
            "spec.http[0].match[0].withoutHeaders.x-a",
            "withoutHeaders",
            "",
        ),
        (
            "scheme: {prefix: ''}",
            "spec.http[0].match[0].scheme.prefix",
            "scheme",
            "must not be empty",
        ),
        (
            "ignoreUriCase: yes-please",
            "spec.http[0].match[0].ignoreUriCase",
            "ignoreUriCase",
            "expected true or false",
        ),
    ],
)
def test_bad_match_conditions_are_errors(
    condition: str, field: str, needle: str, message: str
) -> None:
    text, result = load_route(route(f"match:\n- {condition}"))
    diagnostic = next(d for d in result.diagnostics if d.field == field)
    assert diagnostic.severity == "error"
    assert message in diagnostic.message
    assert result.config is None
    # Located on the condition's own line.
    assert text.splitlines()[diagnostic.line - 1].lstrip("- ").startswith(needle)


# --- delegation --------------------------------------------------------------------------------

ROOT = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /v2}}]
    delegate: {name: DELEGATE, namespace: default}
  - route: [{destination: {host: reviews}}]
"""

DELEGATE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-v2}
spec:
  http:
  - route: [{destination: {host: reviews, subset: v2}}]
"""


def load_files(**files: str) -> LoadResult:
    return load_texts([(f"{name}.yaml", text) for name, text in files.items()])


def test_a_delegate_is_loaded_and_used() -> None:
    result = load_files(
        a=ROOT.replace("DELEGATE", "reviews-v2"), b=DELEGATE, c=REVIEWS_RULE, r=REGISTRY
    )
    assert [d for d in result.diagnostics if d.severity == "error"] == []
    assert result.config is not None
    root = result.config.virtual_services[0]
    assert root.http[0].delegate == Delegate("reviews-v2", "default")
    assert result.config.virtual_services[1].is_delegate


def test_delegate_problems_are_errors_at_the_delegating_route() -> None:
    chain = DELEGATE.replace(
        "  - route: [{destination: {host: reviews, subset: v2}}]",
        "  - delegate: {name: reviews-v2}",
    ).replace("name: reviews-v2}", "name: chain}", 1)
    with_hosts = (
        DELEGATE.replace("spec:\n", "spec:\n  hosts: [ratings]\n")
        .replace("reviews-v2", "has-hosts", 1)
        .replace("host: reviews, subset: v2", "host: ratings")
    )
    missing = ROOT.replace("DELEGATE", "missing")
    to_hosts = (
        ROOT.replace("DELEGATE", "has-hosts")
        .replace("name: root", "name: root-b")
        .replace("[reviews]", "[details]")
        .replace("host: reviews}", "host: details}")
    )
    result = load_files(a=missing, b=to_hosts, c=chain, d=with_hosts, r=REGISTRY)
    messages = {(d.file, d.field): d.message for d in result.diagnostics if d.severity == "error"}

    assert messages[("a.yaml", "spec.http[0].delegate")] == (
        'unknown VirtualService "default/missing"'
    )
    assert messages[("b.yaml", "spec.http[0].delegate")] == (
        'VirtualService "default/has-hosts" has hosts, so it is not a delegate (d.yaml:5:3); '
        "a delegate has no hosts"
    )
    assert messages[("c.yaml", "spec.http[0].delegate")] == (
        "a delegate VirtualService (one without hosts) cannot delegate again"
    )
    assert result.config is None


def test_a_delegate_with_gateways_is_an_error() -> None:
    text, result = load(
        DELEGATE.replace("spec:\n", "spec:\n  gateways: [mesh]\n"), *BOOKINFO_REGISTRY
    )
    assert_at(result, text, "spec.gateways", "gateways", "a delegate VirtualService")


def test_a_delegate_route_outside_the_root_match_is_dropped_with_a_warning() -> None:
    narrower = DELEGATE.replace("  - route:", "  - match: [{uri: {prefix: /v1}}]\n    route:")
    result = load_files(
        a=ROOT.replace("DELEGATE", "reviews-v2"), b=narrower, c=REVIEWS_RULE, r=REGISTRY
    )
    (warning,) = [d for d in result.diagnostics if d.field == "spec.http[0]"]
    assert warning.severity == "warning"
    assert "of delegate default/reviews-v2 (b.yaml:6:5)" in warning.message
    assert "dropped" in warning.message


# --- wildcard DestinationRule hosts --------------------------------------------------------------

WILDCARD_RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: everything}
spec:
  host: "*.default.svc.cluster.local"
  subsets:
  - {name: v3, labels: {version: v3}}
"""


def test_a_wildcard_rule_defines_subsets_for_the_services_it_matches() -> None:
    text = route("name: a", route_lines="route: [{destination: {host: reviews, subset: v3}}]")
    result = load_files(a=text, b=WILDCARD_RULE, r=REGISTRY)
    assert result.diagnostics == ()


def test_an_exact_rule_wins_over_a_wildcard_one_for_subsets() -> None:
    text = route("name: a", route_lines="route: [{destination: {host: reviews, subset: v3}}]")
    result = load_files(a=text, b=WILDCARD_RULE, c=REVIEWS_RULE, r=REGISTRY)
    (diagnostic,) = result.diagnostics
    assert diagnostic.field == "spec.http[0].route[0].destination.subset"
    assert "not defined in DestinationRule default/reviews (it has v1, v2)" in diagnostic.message


def test_a_wildcard_rule_that_matches_no_service_is_a_warning() -> None:
    rule = WILDCARD_RULE.replace("*.default.svc.cluster.local", "*.example.com")
    result = load_files(b=rule, r=REGISTRY)
    (diagnostic,) = result.diagnostics
    assert (diagnostic.field, diagnostic.severity) == ("spec.host", "warning")
    assert diagnostic.message.startswith('"*.example.com" matches no service')


def test_a_mirror_percentage_without_mirror_is_only_a_warning() -> None:
    text, result = load_route(
        route("mirrors: [{destination: {host: ratings}}]\nmirrorPercentage: {value: 5}")
    )
    assert_at(
        result,
        text,
        "spec.http[0].mirrorPercentage",
        "mirrorPercentage",
        "has no effect without mirror",
        severity="warning",
    )
    assert result.config is not None
    assert result.config.virtual_services[0].http[0].mirrors[0].percent == 100.0


def test_ignore_uri_case_on_a_regex_says_it_has_no_effect() -> None:
    text, result = load_route(route("match: [{uri: {regex: /a.*}, ignoreUriCase: true}]"))
    assert_at(
        result,
        text,
        "spec.http[0].match[0].ignoreUriCase",
        "ignoreUriCase",
        "write (?i) in the regex",
        severity="warning",
    )
