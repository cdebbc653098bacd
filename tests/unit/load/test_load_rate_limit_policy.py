"""RateLimitPolicy: parsed values and every validation rule, each at its file:line."""

from __future__ import annotations

from pathlib import Path

import pytest
from load_cases import assert_at, load, workload

from pilotfish.load import LoadResult
from pilotfish.model.rate_limits import (
    ClientSelector,
    HeaderSelector,
    PathSelector,
    RateLimitRule,
    RateLimitTarget,
    RateLimitValue,
    SourceSelector,
)

GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
"""


def policy(spec: str, name: str = "limits") -> str:
    indented = "\n".join("  " + line for line in spec.strip("\n").split("\n"))
    return (
        "apiVersion: pilotfish.io/v1alpha1\nkind: RateLimitPolicy\n"
        f"metadata: {{name: {name}}}\nspec:\n{indented}\n"
    )


def rule_spec(selector: str) -> str:
    """A local rule with one client selector (given as YAML flow)."""
    return f"""targetRef: {{kind: Service, name: backend}}
local:
  rules:
  - clientSelectors:
    - {selector}
    limit: {{requests: 5, unit: Second}}"""


def load_policy(spec: str) -> tuple[str, LoadResult]:
    return load(workload("backend-v1", "backend"), policy(spec))


def test_parsed_values() -> None:
    _text, result = load(
        workload("backend-v1", "backend"),
        policy("""targetRef: {kind: Service, name: backend}
local:
  rules:
  - limit: {requests: 100, unit: Second}
global:
  rules:
  - clientSelectors:
    - headers:
      - {name: X-User, type: Distinct}
      - {name: x-plan, value: free, invert: true}
      - {name: x-tier, type: RegularExpression, value: "gold|silver"}
      sourceCIDR: {type: Distinct, value: 0.0.0.0/24}
      path: {value: /api}
    - sourceCIDR: {value: 10.0.0.0/8}
      path: {type: Exact, value: /login}
    limit: {requests: 10, unit: Minute}"""),
    )
    assert result.diagnostics == ()
    assert result.config is not None
    (parsed,) = result.config.rate_limit_policies
    assert parsed.qualified_name == "default/limits"
    assert parsed.target == RateLimitTarget("Service", "backend")
    assert parsed.local == (RateLimitRule(RateLimitValue(100, "Second")),)
    assert parsed.global_ == (
        RateLimitRule(
            RateLimitValue(10, "Minute"),
            (
                ClientSelector(
                    headers=(
                        HeaderSelector("x-user", "Distinct"),
                        HeaderSelector("x-plan", "Exact", "free", invert=True),
                        HeaderSelector("x-tier", "RegularExpression", "gold|silver"),
                    ),
                    path=PathSelector("PathPrefix", "/api"),
                    source_cidr=SourceSelector("Distinct", "0.0.0.0/24"),
                ),
                ClientSelector(
                    path=PathSelector("Exact", "/login"),
                    source_cidr=SourceSelector("Exact", "10.0.0.0/8"),
                ),
            ),
        ),
    )


def test_a_gateway_target() -> None:
    _text, result = load(
        GATEWAY,
        policy(
            "targetRef: {kind: Gateway, name: gw}\nlocal:\n  rules:\n"
            "  - limit: {requests: 1, unit: Day}"
        ),
    )
    assert result.diagnostics == ()
    assert result.config is not None
    assert result.config.rate_limit_policies[0].target == RateLimitTarget("Gateway", "gw")


def test_a_gateway_with_several_filter_chains_warns_of_a_bucket_each(tmp_path: Path) -> None:
    """Two plaintext ports, two HTTPS servers on a third (one chain each, by SNI); the
    plaintext servers of one port share a chain, and a TCP server has none."""
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    tls = (
        f"{{mode: SIMPLE, serverCertificate: {tmp_path}/cert.pem, privateKey: {tmp_path}/key.pem}}"
    )
    gateway = f"""\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  servers:
  - {{port: {{number: 8080, name: http, protocol: HTTP}}, hosts: ["*"]}}
  - {{port: {{number: 8080, name: http-b, protocol: HTTP}}, hosts: [b.example.com]}}
  - {{port: {{number: 8081, name: http2, protocol: HTTP}}, hosts: ["*"]}}
  - {{port: {{number: 8443, name: https-a, protocol: HTTPS}}, hosts: [a.example.com], tls: {tls}}}
  - {{port: {{number: 8443, name: https-b, protocol: HTTPS}}, hosts: [b.example.com], tls: {tls}}}
  - {{port: {{number: 9000, name: tcp, protocol: TCP}}, hosts: ["*"]}}
"""
    local = "local:\n  rules:\n  - limit: {requests: 1, unit: Day}"
    text, result = load(gateway, policy("targetRef: {kind: Gateway, name: gw}\n" + local))
    diagnostic = assert_at(result, text, "spec.local", "local:", "up to 4 x", severity="warning")
    assert "4 listener filter chains (ports 8080, 8081, 8443 (2 by SNI))" in diagnostic.message
    # A global rule is counted by the service, whichever chain the request came through.
    global_ = "global:\n  rules:\n  - limit: {requests: 1, unit: Day}"
    _text, result = load(gateway, policy("targetRef: {kind: Gateway, name: gw}\n" + global_))
    assert not [d for d in result.diagnostics if d.field.startswith("spec.local")]


def test_unknown_field_is_an_error_with_a_hint() -> None:
    text, result = load_policy(rule_spec("{headers: [{name: x-user, valeu: a}]}"))
    diagnostic = assert_at(
        result,
        text,
        "spec.local.rules[0].clientSelectors[0].headers[0].valeu",
        "valeu",
        "unknown field",
    )
    assert '"value"' in diagnostic.message


@pytest.mark.parametrize("requests", ["0", "-3", "1.5", '"ten"'])
def test_requests_must_be_a_positive_integer(requests: str) -> None:
    text, result = load_policy(
        f"targetRef: {{kind: Service, name: backend}}\nlocal:\n  rules:\n"
        f"  - limit: {{requests: {requests}, unit: Second}}"
    )
    assert_at(result, text, "spec.local.rules[0].limit.requests", f"requests: {requests}", "")


def test_unknown_unit_is_an_error() -> None:
    text, result = load_policy(
        "targetRef: {kind: Service, name: backend}\nlocal:\n  rules:\n"
        "  - limit: {requests: 1, unit: Week}"
    )
    assert_at(result, text, "spec.local.rules[0].limit.unit", "unit: Week", "must be one of")


def test_a_limit_is_required() -> None:
    text, result = load_policy(
        "targetRef: {kind: Service, name: backend}\nlocal:\n  rules:\n"
        "  - clientSelectors: [{path: {value: /a}}]"
    )
    assert_at(result, text, "spec.local.rules[0].limit", "clientSelectors", "required")


def test_a_policy_without_rules_is_an_error() -> None:
    text, result = load_policy("targetRef: {kind: Service, name: backend}")
    assert_at(result, text, "spec", "spec:\n  targetRef", "limit nothing")


def test_re2_invalid_header_regex() -> None:
    text, result = load_policy(
        rule_spec('{headers: [{name: x-user, type: RegularExpression, value: "(?=a)b"}]}')
    )
    assert_at(
        result,
        text,
        "spec.local.rules[0].clientSelectors[0].headers[0].value",
        'value: "(?=a)b"',
        "RE2",
    )


def test_re2_invalid_path_regex() -> None:
    text, result = load_policy(rule_spec('{path: {type: RegularExpression, value: "/a(\\\\1)"}}'))
    assert_at(result, text, "spec.local.rules[0].clientSelectors[0].path.value", "value:", "RE2")


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("10.0.0.300/8", "is not a CIDR"),
        ("banana", "is not a CIDR"),
        ("10.0.0.1/8", 'did you mean "10.0.0.0/8"'),
        ("10.0.0.0", "needs a prefix length"),
    ],
)
def test_bad_cidr(cidr: str, message: str) -> None:
    text, result = load_policy(rule_spec(f"{{sourceCIDR: {{value: {cidr}}}}}"))
    assert_at(
        result, text, "spec.local.rules[0].clientSelectors[0].sourceCIDR.value", "value:", message
    )


def test_distinct_cidr_names_only_a_prefix_length() -> None:
    text, result = load_policy(rule_spec("{sourceCIDR: {type: Distinct, value: 10.0.0.0/24}}"))
    assert_at(
        result,
        text,
        "spec.local.rules[0].clientSelectors[0].sourceCIDR.value",
        "value: 10.0.0.0/24",
        '"0.0.0.0/24"',
    )


def test_distinct_header_with_a_value_is_an_error() -> None:
    text, result = load_policy(rule_spec("{headers: [{name: x-user, type: Distinct, value: a}]}"))
    assert_at(
        result,
        text,
        "spec.local.rules[0].clientSelectors[0].headers[0].value",
        "value: a",
        "has no value",
    )


def test_distinct_header_cannot_be_inverted() -> None:
    text, result = load_policy(
        rule_spec("{headers: [{name: x-user, type: Distinct, invert: true}]}")
    )
    assert_at(
        result,
        text,
        "spec.local.rules[0].clientSelectors[0].headers[0].invert",
        "invert",
        "nothing to invert",
    )


@pytest.mark.parametrize("kind", ["Exact", "RegularExpression"])
def test_exact_header_without_a_value_is_an_error(kind: str) -> None:
    text, result = load_policy(rule_spec(f"{{headers: [{{name: x-user, type: {kind}}}]}}"))
    assert_at(
        result,
        text,
        "spec.local.rules[0].clientSelectors[0].headers[0].value",
        "{name: x-user",
        f"required for type {kind}",
    )


def test_bad_header_name() -> None:
    text, result = load_policy(rule_spec('{headers: [{name: "x user", value: a}]}'))
    assert_at(
        result,
        text,
        "spec.local.rules[0].clientSelectors[0].headers[0].name",
        'name: "x user"',
        "not a valid HTTP header name",
    )


def test_path_must_start_with_a_slash() -> None:
    text, result = load_policy(rule_spec("{path: {type: Exact, value: api}}"))
    assert_at(
        result,
        text,
        "spec.local.rules[0].clientSelectors[0].path.value",
        "value: api",
        'start with "/"',
    )


def test_empty_selector_is_an_error() -> None:
    text, result = load_policy(rule_spec("{}"))
    assert_at(result, text, "spec.local.rules[0].clientSelectors[0]", "{}", "every request")


def test_empty_selector_list_is_an_error_as_an_empty_selector_is() -> None:
    text, result = load_policy("""targetRef: {kind: Service, name: backend}
local:
  rules:
  - clientSelectors: []
    limit: {requests: 5, unit: Second}""")
    assert_at(
        result, text, "spec.local.rules[0].clientSelectors", "clientSelectors", "every request"
    )


def test_unknown_target_service() -> None:
    text, result = load_policy(
        "targetRef: {kind: Service, name: frontend}\nlocal:\n  rules:\n"
        "  - limit: {requests: 1, unit: Second}"
    )
    assert_at(result, text, "spec.targetRef.name", "name: frontend", 'unknown Service "frontend"')


def test_unknown_target_gateway() -> None:
    text, result = load_policy(
        "targetRef: {kind: Gateway, name: edge}\nlocal:\n  rules:\n"
        "  - limit: {requests: 1, unit: Second}"
    )
    assert_at(result, text, "spec.targetRef.name", "name: edge", 'unknown Gateway "default/edge"')


def test_unknown_target_kind() -> None:
    text, result = load_policy(
        "targetRef: {kind: Deployment, name: backend}\nlocal:\n  rules:\n"
        "  - limit: {requests: 1, unit: Second}"
    )
    assert_at(result, text, "spec.targetRef.kind", "kind: Deployment", "must be one of")


def test_target_names_a_short_name() -> None:
    text, result = load_policy(
        "targetRef: {kind: Service, name: backend.default.svc.cluster.local}\nlocal:\n"
        "  rules:\n  - limit: {requests: 1, unit: Second}"
    )
    assert_at(result, text, "spec.targetRef.name", "name: backend.default", "short name")


def test_two_policies_on_one_target_is_an_error_at_the_second() -> None:
    spec = (
        "targetRef: {kind: Service, name: backend}\nlocal:\n  rules:\n"
        "  - limit: {requests: 1, unit: Second}"
    )
    text, result = load(
        workload("backend-v1", "backend"), policy(spec, "first"), policy(spec, "second")
    )
    diagnostic = assert_at(result, text, "spec.targetRef", "targetRef", "already has", occurrence=2)
    assert "default/first (mesh.yaml:" in diagnostic.message


def test_a_service_without_sidecars_warns() -> None:
    entry = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [ext]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
"""
    text, result = load(
        entry,
        policy(
            "targetRef: {kind: Service, name: ext}\nlocal:\n  rules:\n"
            "  - limit: {requests: 1, unit: Second}"
        ),
    )
    assert_at(
        result,
        text,
        "spec.targetRef.name",
        "name: ext}",
        "applied nowhere",
        severity="warning",
        occurrence=2,
    )
