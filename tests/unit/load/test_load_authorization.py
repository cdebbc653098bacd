"""AuthorizationPolicy and RequestAuthentication: values as parsed, and every problem Istio's
own validation refuses (its test cases by name), reported at its file:line:col."""

from __future__ import annotations

import textwrap

import pytest
from tests.unit.load.load_cases import assert_at, load, workload

from pilotfish.model.authorization import Condition, Operation, Source, Values


def policy(spec: str, kind: str = "AuthorizationPolicy", metadata: str = "{name: p}") -> str:
    return (
        f"apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {metadata}\nspec:\n"
        + textwrap.indent(textwrap.dedent(spec), "  ")
    )


def test_policy_values() -> None:
    _, result = load(
        policy(
            """\
            selector: {matchLabels: {app: web}}
            action: DENY
            rules:
            - from:
              - source: {principals: ["cluster.local/ns/a/sa/b"], notIpBlocks: ["10.0.0.0/8"]}
              to:
              - operation: {methods: [POST], paths: ["/admin*"], ports: [8080, "9090"]}
              when:
              - {key: "request.headers[X-User]", values: [bob]}
              - {key: "request.auth.claims[realm][role]", notValues: [guest]}
            - {}
            """
        )
    )
    assert result.config is not None, result.diagnostics
    (parsed,) = result.config.authorization_policies
    assert parsed.action == "DENY"
    assert parsed.selector == {"app": "web"}
    first, everything = parsed.rules
    assert first.sources == (
        Source(
            principals=Values(("cluster.local/ns/a/sa/b",)),
            ip_blocks=Values(not_values=("10.0.0.0/8",)),
        ),
    )
    assert first.operations == (
        Operation(
            methods=Values(("POST",)), paths=Values(("/admin*",)), ports=Values(("8080", "9090"))
        ),
    )
    assert first.conditions == (
        Condition("request.headers[X-User]", "request.headers", Values(("bob",)), ("x-user",)),
        Condition(
            "request.auth.claims[realm][role]",
            "request.auth.claims",
            Values(not_values=("guest",)),
            ("realm", "role"),
        ),
    )
    assert everything.sources == everything.operations == everything.conditions == ()


def test_bare_service_accounts_are_in_the_policys_namespace() -> None:
    _, result = load(
        policy(
            "rules:\n- from: [{source: {serviceAccounts: [web, other/db]}}]\n"
            "  when: [{key: source.serviceAccount, notValues: [admin]}]\n",
            metadata="{name: p, namespace: shop}",
        )
    )
    assert result.config is not None, result.diagnostics
    (rule,) = result.config.authorization_policies[0].rules
    assert rule.sources[0].service_accounts == Values(("shop/web", "other/db"))
    assert rule.conditions[0].match == Values(not_values=("shop/admin",))


def test_allow_is_the_default_and_no_rules_is_allowed() -> None:
    _, result = load(policy("selector: {matchLabels: {app: web}}\n"))
    assert result.config is not None
    (parsed,) = result.config.authorization_policies
    assert (parsed.action, parsed.rules) == ("ALLOW", ())


# (Istio test name, spec, field, needle in the text, message part)
INVALID_POLICIES = [
    (
        "serviceAccounts and namespaces",
        "rules: [{from: [{source: {serviceAccounts: [sa], namespaces: [ns]}}]}]\n",
        "spec.rules[0].from[0].source.serviceAccounts",
        "serviceAccounts",
        "cannot be set with namespaces or principals",
    ),
    (
        "serviceAccounts with a wildcard",
        "rules: [{from: [{source: {serviceAccounts: ['ns/*']}}]}]\n",
        "spec.rules[0].from[0].source.serviceAccounts[0]",
        "'ns/*'",
        "wildcards are not allowed",
    ),
    (
        "serviceAccounts with an empty namespace",
        "rules: [{from: [{source: {notServiceAccounts: ['/sa']}}]}]\n",
        "spec.rules[0].from[0].source.notServiceAccounts[0]",
        "'/sa'",
        "is not <account> or <namespace>/<account>",
    ),
    (
        "trust domain with a slash",
        "rules: [{when: [{key: source.trustDomain, values: ['a/b']}]}]\n",
        "spec.rules[0].when[0].values[0]",
        "'a/b'",
        "a trust domain has no '/'",
    ),
    (
        "trust domain with a wildcard inside",
        "rules: [{from: [{source: {trustDomains: ['a*b']}}]}]\n",
        "spec.rules[0].from[0].source.trustDomains[0]",
        "'a*b'",
        "only at the start or the end",
    ),
    ("custom-good", "action: CUSTOM\nrules: [{}]\n", "spec.action", "action", "CUSTOM"),
    (
        "provider-wrong-action",
        "action: DENY\nprovider: {name: ext}\nrules: [{}]\n",
        "spec.provider",
        "provider",
        "must not be set with action DENY",
    ),
    ("deny-rules-nil", "action: DENY\n", "spec.rules", "spec", "DENY policy without rules"),
    ("deny-rules-empty", "action: DENY\nrules: []\n", "spec.rules", "rules", "without rules"),
    (
        "selector-empty-key",
        'selector: {matchLabels: {"": web}}\n',
        "spec.selector.matchLabels.",
        '""',
        "keys must be non-empty",
    ),
    (
        "selector-wildcard-value",
        "selector: {matchLabels: {app: 'web*'}}\n",
        "spec.selector.matchLabels.app",
        "app",
        "wildcards are not allowed",
    ),
    (
        "target-ref-good",
        "targetRef: {kind: Service, name: web}\n",
        "spec.targetRef",
        "targetRef",
        "use spec.selector",
    ),
    ("from-empty", "rules: [{from: []}]\n", "spec.rules[0].from", "from", "must not be empty"),
    (
        "source-nil",
        "rules: [{from: [{}]}]\n",
        "spec.rules[0].from[0].source",
        "{}",
        "required field is missing",
    ),
    (
        "source-empty",
        "rules: [{from: [{source: {}}]}]\n",
        "spec.rules[0].from[0].source",
        "source",
        "must not be empty",
    ),
    (
        "source-of-empty-lists",
        "rules: [{from: [{source: {principals: [], notNamespaces: []}}]}]\n",
        "spec.rules[0].from[0].source",
        "source",
        "must not be empty",
    ),
    ("to-empty", "rules: [{to: []}]\n", "spec.rules[0].to", "to", "must not be empty"),
    (
        "operation-empty",
        "rules: [{to: [{operation: {}}]}]\n",
        "spec.rules[0].to[0].operation",
        "operation",
        "must not be empty",
    ),
    (
        "Principals-empty",
        'rules: [{from: [{source: {principals: [""]}}]}]\n',
        "spec.rules[0].from[0].source.principals[0]",
        '""',
        "non-empty string",
    ),
    (
        "invalid ip and port in ipBlocks",
        'rules: [{from: [{source: {ipBlocks: ["1.2.3.4:80"]}}]}]\n',
        "spec.rules[0].from[0].source.ipBlocks[0]",
        '"1.2.3.4:80"',
        "not an IP address or CIDR range",
    ),
    (
        "Ports-invalid",
        'rules: [{to: [{operation: {notPorts: ["http"]}}]}]\n',
        "spec.rules[0].to[0].operation.notPorts[0]",
        '"http"',
        "is not a port",
    ),
    (
        "condition-key-missing",
        "rules: [{when: [{values: [a]}]}]\n",
        "spec.rules[0].when[0].key",
        "{values",
        "required field is missing",
    ),
    (
        "condition-value-missing",
        "rules: [{when: [{key: source.ip}]}]\n",
        "spec.rules[0].when[0]",
        "{key",
        "set values or notValues for key source.ip",
    ),
    (
        "condition-value-invalid",
        "rules: [{when: [{key: source.ip, values: [not-an-ip]}]}]\n",
        "spec.rules[0].when[0].values[0]",
        "not-an-ip",
        "not an IP address",
    ),
    (
        "condition-notValue-invalid",
        "rules: [{when: [{key: destination.port, notValues: ['99999']}]}]\n",
        "spec.rules[0].when[0].notValues[0]",
        "'99999'",
        "is not a port",
    ),
    (
        "condition-unknown",
        "rules: [{when: [{key: key1, values: [v1]}]}]\n",
        "spec.rules[0].when[0].key",
        "key: key1",
        "unknown attribute 'key1'",
    ),
    (
        "destination.labels",
        "rules: [{when: [{key: 'destination.labels[app]', values: [v1]}]}]\n",
        "spec.rules[0].when[0].key",
        "key: 'destination",
        "replaced by the workload selector",
    ),
    (
        "header key without a name",
        "rules: [{when: [{key: 'request.headers[]', values: [v1]}]}]\n",
        "spec.rules[0].when[0].key",
        "key: 'request",
        "bad key 'request.headers[]'",
    ),
    (
        "path template",
        "rules: [{to: [{operation: {paths: ['/a/{*}/b']}}]}]\n",
        "spec.rules[0].to[0].operation.paths[0]",
        "'/a",
        "path templates",
    ),
    ("null rule", "rules: [null]\n", "spec.rules[0]", "null", "must not be null"),
]


@pytest.mark.parametrize(
    ("spec", "field", "needle", "message"),
    [case[1:] for case in INVALID_POLICIES],
    ids=[case[0] for case in INVALID_POLICIES],
)
def test_istio_refuses_and_so_do_we(spec: str, field: str, needle: str, message: str) -> None:
    text, result = load(policy(spec))

    assert_at(result, text, field, needle, message)


@pytest.mark.parametrize(("value", "dry_run"), [("'true'", True), ("'False'", False)])
def test_dry_run_is_read_as_istio_reads_it(value: str, dry_run: bool) -> None:
    _, result = load(
        policy(
            "action: DENY\nrules: [{}]\n",
            metadata=f"{{name: p, annotations: {{istio.io/dry-run: {value}}}}}",
        )
    )
    assert result.config is not None, result.diagnostics
    assert result.config.authorization_policies[0].dry_run is dry_run


@pytest.mark.parametrize(
    ("spec", "value", "message"),
    [
        ("action: DENY\nrules: [{}]\n", "'yes'", 'string "yes" is not true or false'),
        ("action: AUDIT\nrules: [{}]\n", "'true'", "ALLOW and DENY policies only, not AUDIT"),
    ],
    ids=["dry-run-invalid-value", "dry-run-invalid-action-audit"],
)
def test_dry_run_problems(spec: str, value: str, message: str) -> None:
    text, result = load(
        policy(spec, metadata=f"{{name: p, annotations: {{istio.io/dry-run: {value}}}}}")
    )
    assert_at(result, text, "metadata.annotations.istio.io/dry-run", "istio.io/dry-run", message)


def test_every_problem_of_a_policy_is_reported_at_once() -> None:
    _, result = load(
        policy(
            "action: DENY\nrules:\n- from: []\n  to: [{operation: {}}]\n"
            "  when: [{key: nope, values: [x]}]\n"
        )
    )
    assert {d.field for d in result.errors} == {
        "spec.rules[0].from",
        "spec.rules[0].to[0].operation",
        "spec.rules[0].when[0].key",
    }


def test_a_selector_without_labels_warns_that_it_selects_everything() -> None:
    text, result = load(policy("selector: {}\nrules: [{}]\n"))
    assert_at(
        result, text, "spec.selector", "selector", "selects every workload", severity="warning"
    )


def test_duplicate_policies_are_reported_at_the_second() -> None:
    text, result = load(policy("rules: [{}]\n"), policy("rules: [{}]\n"))
    assert_at(result, text, "metadata.name", "name", "duplicate AuthorizationPolicy", occurrence=2)


# --- RequestAuthentication -------------------------------------------------------------------

JWKS = '{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}'


def test_request_authentication_values() -> None:
    _, result = load(
        policy(
            f"""\
            selector: {{matchLabels: {{app: web}}}}
            jwtRules:
            - issuer: https://issuer
              audiences: [web, api]
              jwks: '{JWKS}'
              fromHeaders: [{{name: x-token, prefix: "Bearer "}}]
              fromParams: [token]
              forwardOriginalToken: true
              outputPayloadToHeader: x-payload
              outputClaimToHeaders: [{{header: x-sub, claim: sub}}]
            - issuer: local
              jwksUri: file:///etc/jwks.json
            """,
            kind="RequestAuthentication",
        )
    )
    assert result.config is not None, result.diagnostics
    (parsed,) = result.config.request_authentications
    first, second = parsed.jwt_rules
    assert (first.issuer, first.audiences, first.jwks) == ("https://issuer", ("web", "api"), JWKS)
    assert first.from_headers[0].prefix == "Bearer "
    assert first.forward_original_token and first.output_payload_to_header == "x-payload"
    assert second.jwks_uri is not None and second.jwks_uri.path == "/etc/jwks.json"


def test_inline_keys_win_over_a_jwks_uri_as_in_istio() -> None:
    text, result = load(
        policy(
            f"jwtRules: [{{issuer: a, jwks: '{JWKS}', jwksUri: 'https://a/keys'}}]\n",
            kind="RequestAuthentication",
        )
    )
    assert_at(
        result,
        text,
        "spec.jwtRules[0].jwksUri",
        "jwksUri",
        "inline keys are used",
        severity="warning",
    )
    assert result.config is not None
    (rule,) = result.config.request_authentications[0].jwt_rules
    assert rule.jwks == JWKS and rule.jwks_uri is None


INVALID_JWT_RULES = [
    ("empty jwt rule", "jwtRules: [{}]\n", "spec.jwtRules[0].issuer", "{}", "set issuer"),
    (
        "bad JwksUri - no protocol",
        "jwtRules: [{issuer: a, jwksUri: foo.com}]\n",
        "spec.jwtRules[0].jwksUri",
        "jwksUri",
        "scheme must be http, https or file",
    ),
    (
        "bad JwksUri - invalid port",
        "jwtRules: [{issuer: a, jwksUri: 'https://foo.com:not-number'}]\n",
        "spec.jwtRules[0].jwksUri",
        "jwksUri",
        "port",
    ),
    (
        "bad header location",
        "jwtRules: [{issuer: a, jwks: '" + JWKS + "', fromHeaders: [{prefix: x}]}]\n",
        "spec.jwtRules[0].fromHeaders[0].name",
        "{prefix",
        "required field is missing",
    ),
    (
        "bad param location",
        "jwtRules: [{issuer: a, jwks: '" + JWKS + "', fromParams: ['']}]\n",
        "spec.jwtRules[0].fromParams[0]",
        "''",
        "non-empty string",
    ),
    (
        "jwks error",
        "jwtRules: [{issuer: a, jwks: 'xyz'}]\n",
        "spec.jwtRules[0].jwks",
        "jwks:",
        "not a JSON Web Key Set",
    ),
    (
        "invalid header value in outputClaimToHeaders",
        "jwtRules: [{issuer: a, jwks: '"
        + JWKS
        + "', outputClaimToHeaders: [{header: 'a b', claim: sub}]}]\n",
        "spec.jwtRules[0].outputClaimToHeaders[0].header",
        "header: 'a b'",
        "not a valid HTTP header name",
    ),
    (
        "no keys at all",
        "jwtRules: [{issuer: a}]\n",
        "spec.jwtRules[0]",
        "{issuer",
        "does not discover keys",
    ),
    (
        "remote keys from a short name that is no service",
        "jwtRules: [{issuer: a, jwksUri: 'https://keys/jwks'}]\n",
        "spec.jwtRules[0].jwksUri",
        "jwksUri",
        "keys is not a service of the mesh",
    ),
]


@pytest.mark.parametrize(
    ("spec", "field", "needle", "message"),
    [case[1:] for case in INVALID_JWT_RULES],
    ids=[case[0] for case in INVALID_JWT_RULES],
)
def test_jwt_rule_problems(spec: str, field: str, needle: str, message: str) -> None:
    text, result = load(policy(spec, kind="RequestAuthentication"))

    assert_at(result, text, field, needle, message)


def test_remote_keys_from_a_mesh_service_on_one_of_its_ports() -> None:
    good = policy(
        "jwtRules: [{issuer: a, jwksUri: 'http://auth.default.svc.cluster.local:9080/keys'}]\n",
        kind="RequestAuthentication",
    )
    _, result = load(workload("auth", "auth"), good)
    assert result.config is not None, result.diagnostics
    text, result = load(workload("auth", "auth"), good.replace("9080", "9999"))
    assert_at(result, text, "spec.jwtRules[0].jwksUri", "jwksUri", "has no port 9999")


def test_https_keys_through_a_mesh_cluster_warn_that_tls_is_not_originated() -> None:
    text, result = load(
        workload("auth", "auth"),
        policy(
            "jwtRules: [{issuer: a, jwksUri: 'https://auth.default.svc.cluster.local:9080/k'}]\n",
            kind="RequestAuthentication",
        ),
    )
    assert_at(
        result,
        text,
        "spec.jwtRules[0].jwksUri",
        "jwksUri",
        "does not originate TLS",
        severity="warning",
    )


def test_remote_keys_from_a_host_outside_the_mesh_are_accepted() -> None:
    _, result = load(
        policy(
            "jwtRules: [{issuer: a, jwksUri: 'https://keys.example.com/jwks'}]\n",
            kind="RequestAuthentication",
        )
    )
    assert result.config is not None, result.diagnostics
    assert not result.diagnostics
