"""Per-kind rules: field types, enums, regexes, retries, actions, and the parsed values."""

from __future__ import annotations

import os

import pytest
from load_cases import BOOKINFO_REGISTRY, REVIEWS_RULE, assert_at, errors, find, load

from pilotfish.load import LoadResult

ROUTE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - ROUTE_FIELDS
    route:
    - destination:
        host: reviews
"""


def route_with(fields: str) -> str:
    """The VirtualService above with extra fields (YAML at 4-space indent) on its route."""
    lines = fields.strip("\n").split("\n")
    return ROUTE.replace("ROUTE_FIELDS", "\n    ".join(lines))


def load_route(fields: str) -> tuple[str, LoadResult]:
    return load(route_with(fields), REVIEWS_RULE, *BOOKINFO_REGISTRY)


# --- VirtualService ---------------------------------------------------------------------------


def test_parsed_route_values() -> None:
    _text, result = load(
        route_with(
            """name: main
match:
- uri: {prefix: /api}
  headers:
    end-user: {exact: jason}
  queryParams:
    v: {regex: "^[0-9]+$"}
timeout: 1.5s
retries: {attempts: 3, perTryTimeout: 100ms, retryOn: "5xx,connect-failure,503"}
fault:
  delay: {fixedDelay: 7s, percentage: {value: 12.5}}
  abort: {httpStatus: 500, percent: 10}
headers:
  request: {set: {x-a: "1"}, remove: [x-b]}
rewrite: {uri: /v2}"""
        ),
        REVIEWS_RULE,
        *BOOKINFO_REGISTRY,
    )
    assert errors(result) == []
    assert result.config is not None
    (route,) = result.config.virtual_services[0].http
    assert route.name == "main"
    (match,) = route.match
    assert match.uri is not None and (match.uri.kind, match.uri.value) == ("prefix", "/api")
    assert match.headers["end-user"].value == "jason"
    assert match.query_params["v"].kind == "regex"
    assert route.timeout == 1.5
    assert route.retries is not None
    assert route.retries.attempts == 3
    assert route.retries.per_try_timeout == pytest.approx(0.1)
    assert route.fault is not None and route.fault.delay is not None
    assert (route.fault.delay.fixed_delay, route.fault.delay.percent) == (7.0, 12.5)
    assert route.fault.abort is not None and route.fault.abort.percent == 10.0
    assert route.headers is not None and route.headers.request.set == {"x-a": "1"}
    assert route.headers.request.remove == ("x-b",)
    assert route.rewrite is not None and route.rewrite.uri == "/v2"
    assert route.route[0].destination.host == "reviews"


def test_retries_without_attempts_take_istios_default_of_two() -> None:
    _text, result = load_route("retries: {retryOn: 5xx}")
    assert result.config is not None
    retries = result.config.virtual_services[0].http[0].retries
    assert retries is not None and retries.attempts == 2


@pytest.mark.parametrize(
    ("fields", "field", "needle", "message"),
    [
        ("match:\n- uri: {regex: '(?=foo)bar'}", "spec.http[0].match[0].uri.regex", "regex", "RE2"),
        (
            "match:\n- headers:\n    x-id: {regex: '(a)\\1'}",
            "spec.http[0].match[0].headers.x-id.regex",
            "regex",
            "RE2",
        ),
        (
            "match:\n- queryParams:\n    q: {regex: '[unclosed'}",
            "spec.http[0].match[0].queryParams.q.regex",
            "regex",
            "missing ]",
        ),
        (
            "match:\n- authority: {regex: '(?<=a)b'}",
            "spec.http[0].match[0].authority.regex",
            "regex",
            "RE2",
        ),
        (
            "match:\n- uri: {exact: /a, prefix: /b}",
            "spec.http[0].match[0].uri",
            "uri",
            "exactly one of exact, prefix, regex",
        ),
        ("retries: {attempts: -1}", "spec.http[0].retries.attempts", "attempts", "out of range"),
        (
            "retries: {attempts: two}",
            "spec.http[0].retries.attempts",
            "attempts",
            "expected an integer",
        ),
        (
            "retries: {attempts: 2, retryOn: '5xx,teapot'}",
            "spec.http[0].retries.retryOn",
            "retryOn",
            'unknown retry condition "teapot"',
        ),
        (
            "retries: {attempts: 2, retryOn: '5xx,,reset'}",
            "spec.http[0].retries.retryOn",
            "retryOn",
            "empty",
        ),
        (
            "retries: {attempts: 2, retryOn: '999'}",
            "spec.http[0].retries.retryOn",
            "retryOn",
            "HTTP status",
        ),
        (
            "retries: {attempts: 2, perTryTimeout: 0s}",
            "spec.http[0].retries.perTryTimeout",
            "perTryTimeout",
            "greater than zero",
        ),
        ("timeout: 0s", "spec.http[0].timeout", "timeout", "greater than zero"),
        ("timeout: 10", "spec.http[0].timeout", "timeout", "expected a string"),
        ("timeout: 10 seconds", "spec.http[0].timeout", "timeout", "invalid duration"),
        (
            "fault: {delay: {percent: 50}}",
            "spec.http[0].fault.delay.fixedDelay",
            "delay",
            "required",
        ),
        (
            "fault: {abort: {httpStatus: 700}}",
            "spec.http[0].fault.abort.httpStatus",
            "httpStatus",
            "out of range",
        ),
        (
            "fault: {abort: {httpStatus: 503, percentage: {value: 101}}}",
            "spec.http[0].fault.abort.percentage.value",
            "value",
            "out of range",
        ),
        ("fault: {}", "spec.http[0].fault", "fault", "needs delay or abort"),
        (
            "headers: {request: {set: {x-a: 1}}}",
            "spec.http[0].headers.request.set.x-a",
            "x-a",
            "expected a string",
        ),
    ],
)
def test_route_field_problems(fields: str, field: str, needle: str, message: str) -> None:
    text, result = load_route(fields)
    assert_at(result, text, field, needle, message)


def test_redirect_and_route_are_exclusive() -> None:
    text, result = load_route("redirect: {uri: /new}")
    assert_at(
        result,
        text,
        "spec.http[0]",
        "redirect: {uri",
        "exactly one of route, redirect, directResponse (found route, redirect)",
    )


def test_route_needs_an_action() -> None:
    text, result = load(
        ROUTE.replace(
            "  - ROUTE_FIELDS\n    route:\n    - destination:\n        host: reviews\n",
            "  - name: nothing\n",
        ),
        *BOOKINFO_REGISTRY,
    )
    assert_at(
        result,
        text,
        "spec.http[0]",
        "name: nothing",
        "needs exactly one of route, redirect, directResponse",
    )


def test_redirect_and_direct_response() -> None:
    _text, result = load(
        ROUTE.replace(
            "  - ROUTE_FIELDS\n    route:\n    - destination:\n        host: reviews\n",
            "  - redirect: {uri: /new, redirectCode: 308}\n"
            "  - directResponse: {status: 404, body: {string: gone}}\n",
        ),
        *BOOKINFO_REGISTRY,
    )
    assert result.diagnostics == ()
    assert result.config is not None
    redirect_route, direct_route = result.config.virtual_services[0].http
    assert redirect_route.redirect is not None and redirect_route.redirect.redirect_code == 308
    assert direct_route.direct_response is not None
    assert (direct_route.direct_response.status, direct_route.direct_response.body) == (404, "gone")


@pytest.mark.parametrize(
    ("action", "field", "needle", "message"),
    [
        (
            "redirect: {uri: /x, redirectCode: 305}",
            "spec.http[0].redirect.redirectCode",
            "redirectCode",
            "must be one of 301, 302, 303, 307, 308",
        ),
        (
            "redirect: {redirectCode: 301}",
            "spec.http[0].redirect",
            "redirect",
            "needs uri, authority, scheme, port or prefixRewrite",
        ),
        (
            "directResponse: {status: 99}",
            "spec.http[0].directResponse.status",
            "status",
            "out of range",
        ),
        (
            "directResponse: {body: {string: x}}",
            "spec.http[0].directResponse.status",
            "directResponse",
            "required",
        ),
    ],
)
def test_redirect_and_direct_response_problems(
    action: str, field: str, needle: str, message: str
) -> None:
    text, result = load(
        ROUTE.replace(
            "  - ROUTE_FIELDS\n    route:\n    - destination:\n        host: reviews\n",
            f"  - {action}\n",
        ),
        *BOOKINFO_REGISTRY,
    )
    assert_at(result, text, field, needle, message)


def test_weight_of_the_wrong_type() -> None:
    text, result = load(
        ROUTE.replace("  - ROUTE_FIELDS\n", "  - name: a\n").replace(
            "host: reviews\n", "host: reviews\n      weight: half\n"
        ),
        *BOOKINFO_REGISTRY,
    )
    assert_at(
        result, text, "spec.http[0].route[0].weight", "weight", "expected an integer, got string"
    )


def test_without_hosts_it_is_a_delegate_that_nothing_uses() -> None:
    text, result = load(
        route_with("name: a").replace("  hosts: [reviews]\n", ""), *BOOKINFO_REGISTRY
    )
    assert_at(
        result,
        text,
        "metadata.name",
        "name: reviews",
        "no VirtualService delegates to it",
        severity="warning",
    )


# --- DestinationRule --------------------------------------------------------------------------

RULE = """\
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      POLICY
  subsets:
  - name: v1
    labels: {version: v1}
"""


def load_rule(policy: str, subsets: str = "") -> tuple[str, LoadResult]:
    source = RULE.replace("POLICY", policy) + subsets
    return load(source, *BOOKINFO_REGISTRY)


def test_load_balancer_values() -> None:
    _text, result = load_rule("consistentHash: {httpCookie: {name: user, ttl: 0s, path: /}}")
    assert result.diagnostics == ()
    assert result.config is not None
    rule = result.config.destination_rules[0]
    assert rule.traffic_policy is not None and rule.traffic_policy.load_balancer is not None
    cookie = rule.traffic_policy.load_balancer.consistent_hash
    assert cookie is not None and cookie.http_cookie is not None
    assert (cookie.http_cookie.name, cookie.http_cookie.ttl) == ("user", 0.0)
    assert rule.subsets[0].labels == {"version": "v1"}


@pytest.mark.parametrize(
    ("policy", "field", "needle", "message"),
    [
        (
            "simple: ROUND_ROBINN",
            "spec.trafficPolicy.loadBalancer.simple",
            "simple",
            "must be one of ROUND_ROBIN",
        ),
        (
            "simple: PASSTHROUGH",
            "spec.trafficPolicy.loadBalancer.simple",
            "simple",
            "not supported yet",
        ),
        (
            "{simple: RANDOM, consistentHash: {useSourceIp: true}}",
            "spec.trafficPolicy.loadBalancer",
            "loadBalancer",
            "at most one of simple, consistentHash",
        ),
        (
            "consistentHash: {httpHeaderName: x, useSourceIp: true}",
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "consistentHash",
            "exactly one of",
        ),
        (
            "consistentHash: {httpCookie: {ttl: 10s}}",
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name",
            "httpCookie",
            "required",
        ),
        (
            "consistentHash: {useSourceIp: 1}",
            "spec.trafficPolicy.loadBalancer.consistentHash.useSourceIp",
            "useSourceIp",
            "expected true or false",
        ),
    ],
)
def test_load_balancer_problems(policy: str, field: str, needle: str, message: str) -> None:
    text, result = load_rule(policy)
    assert_at(result, text, field, needle, message)


def test_least_conn_is_istios_old_name_for_least_request() -> None:
    _text, result = load_rule("simple: LEAST_CONN")
    assert result.config is not None
    policy = result.config.destination_rules[0].traffic_policy
    assert policy is not None and policy.load_balancer is not None
    assert policy.load_balancer.simple == "LEAST_REQUEST"


@pytest.mark.parametrize(
    ("policy", "field", "needle", "message"),
    [
        ("{}", "spec.trafficPolicy", "trafficPolicy", "at least one field"),
        (
            "{outlierDetection: {minHealthPercent: -1}}",
            "spec.trafficPolicy.outlierDetection.minHealthPercent",
            "minHealthPercent",
            "0..100",
        ),
        (
            "{outlierDetection: {maxEjectionPercent: 150}}",
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "maxEjectionPercent",
            "0..100",
        ),
        (
            "{outlierDetection: {interval: 1x}}",
            "spec.trafficPolicy.outlierDetection.interval",
            "interval",
            "",
        ),
        (
            "{outlierDetection: {consecutive5xErrors: 1}}",
            "spec.trafficPolicy.outlierDetection.consecutive5xErrors",
            "consecutive5xErrors",
            'did you mean "consecutive5xxErrors"',
        ),
        (
            "{connectionPool: {http: {http2MaxRequests: -1}}}",
            "spec.trafficPolicy.connectionPool.http.http2MaxRequests",
            "http2MaxRequests",
            "out of range",
        ),
        (
            "{connectionPool: {}}",
            "spec.trafficPolicy.connectionPool",
            "connectionPool",
            "tcp or http",
        ),
    ],
)
def test_values_of_resilience_policies_are_checked(
    policy: str, field: str, needle: str, message: str
) -> None:
    text, result = load(
        RULE.replace(
            "  trafficPolicy:\n    loadBalancer:\n      POLICY\n", f"  trafficPolicy: {policy}\n"
        ),
        *BOOKINFO_REGISTRY,
    )
    assert_at(result, text, field, needle, message)


@pytest.mark.parametrize(
    ("balancer", "consequence"),
    [
        ("{warmup: {duration: 60s}}", "full share of traffic at once"),
        ("{simple: RANDOM, zoneAwareLbSetting: {enabled: true}}", "regardless of their zone"),
    ],
)
def test_a_load_balancer_may_set_only_what_pilotfish_warns_about(
    balancer: str, consequence: str
) -> None:
    _text, result = load(
        RULE.replace("    loadBalancer:\n      POLICY\n", f"    loadBalancer: {balancer}\n"),
        *BOOKINFO_REGISTRY,
    )
    assert [d.severity for d in result.diagnostics] == ["warning"], result.diagnostics
    assert consequence in result.diagnostics[0].message
    assert result.config is not None


def test_cookie_attributes_are_a_warning() -> None:
    text, result = load_rule(
        "consistentHash: {httpCookie: {name: user, ttl: 0s, attributes: [{name: SameSite}]}}"
    )
    assert_at(
        result,
        text,
        "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes",
        "attributes",
        "the cookie is set without these attributes",
        severity="warning",
    )
    assert result.config is not None


def test_subset_names_are_unique() -> None:
    text, result = load_rule("simple: RANDOM", "  - name: v1\n    labels: {version: v9}\n")
    assert_at(
        result, text, "spec.subsets[1].name", "name: v1", "duplicate subset name", occurrence=2
    )


def test_a_subset_without_labels_selects_every_endpoint() -> None:
    _text, result = load_rule("simple: RANDOM", "  - name: all\n  - name: none\n    labels: {}\n")
    assert result.diagnostics == ()
    assert result.config is not None
    subsets = result.config.destination_rules[0].subsets
    assert [(s.name, dict(s.labels)) for s in subsets][-2:] == [("all", {}), ("none", {})]


# --- Gateway ----------------------------------------------------------------------------------

GATEWAY = """\
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: ingress
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: PROTOCOL}
    hosts: ["*"]
"""


def test_gateway_values() -> None:
    _text, result = load(GATEWAY.replace("PROTOCOL", "http"))
    assert result.diagnostics == ()
    assert result.config is not None
    (server,) = result.config.gateways[0].servers
    assert (server.port, server.port_name, server.protocol, server.hosts) == (
        80,
        "http",
        "HTTP",
        ("*",),
    )


def test_a_gateway_server_pilotfish_does_not_carry_is_a_warning_the_rest_applies() -> None:
    text, result = load(
        GATEWAY.replace("PROTOCOL", "UDP").replace("number: 80", "number: 443")
        + '  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ["*"]\n'
    )
    warning = assert_at(
        result, text, "spec.servers[0].port", "port:", "is not served", severity="warning"
    )
    assert "the UDP server on port 443 is not served" in warning.message
    assert [d.severity for d in result.diagnostics] == ["warning"]
    assert result.config is not None
    assert [s.port for s in result.config.gateways[0].servers] == [80]


@pytest.mark.parametrize(
    ("protocol", "tls", "carried_as", "passthrough"),
    [
        ("TCP", "", "TCP", False),
        ("MONGO", "", "TCP", False),
        ("TLS", "    tls: {mode: PASSTHROUGH}\n", "TLS", True),
        # Istio's default mode is PASSTHROUGH, and HTTPS may pass through as TLS does.
        ("HTTPS", "    tls: {}\n", "TLS", True),
    ],
)
def test_tcp_and_passthrough_gateway_servers(
    protocol: str, tls: str, carried_as: str, passthrough: bool
) -> None:
    _text, result = load(
        GATEWAY.replace("PROTOCOL", protocol).replace("number: 80", "number: 443") + tls
    )
    assert result.diagnostics == ()
    assert result.config is not None
    (server,) = result.config.gateways[0].servers
    assert (server.protocol, server.passthrough, server.tls) == (carried_as, passthrough, None)


def test_a_tcp_gateway_server_has_no_tls() -> None:
    text, result = load(GATEWAY.replace("PROTOCOL", "TCP") + "    tls: {mode: SIMPLE}\n")
    assert_at(result, text, "spec.servers[0].tls", "tls:", "no TLS settings")


@pytest.mark.parametrize("protocol", ["HTTPS", "TLS"])
def test_a_tls_gateway_server_needs_tls_settings(protocol: str) -> None:
    text, result = load(GATEWAY.replace("PROTOCOL", protocol))
    assert_at(result, text, "spec.servers[0].tls", "port:", f"required for a {protocol} server")


def test_gateway_server_needs_number_protocol_and_hosts() -> None:
    text, result = load(
        GATEWAY.replace("{number: 80, name: http, protocol: PROTOCOL}", "{name: http}").replace(
            '    hosts: ["*"]\n', ""
        )
    )
    assert_at(result, text, "spec.servers[0].port.number", "port: {name", "required")
    assert_at(result, text, "spec.servers[0].port.protocol", "port: {name", "required")
    assert_at(result, text, "spec.servers[0].hosts", "port: {name", "required")


@pytest.mark.parametrize("empty", ['""', "null"])
def test_an_empty_gateway_server_protocol_is_an_error_not_the_port_name(empty: str) -> None:
    """Istio's protocol.Parse("") is Unsupported, which validateServerPort refuses."""
    text, result = load(GATEWAY.replace("PROTOCOL", empty))
    error = assert_at(
        result, text, "spec.servers[0].port.protocol", "protocol:", "must not be empty"
    )
    assert "needs one of HTTP, HTTP2, GRPC" in error.message
    assert result.config is None


def test_tls_settings_other_than_https_redirect_on_an_http_server_warn() -> None:
    text, result = load(
        GATEWAY.replace("PROTOCOL", "HTTP") + "    tls: {httpsRedirect: true, mode: SIMPLE}\n"
    )
    assert_at(
        result, text, "spec.servers[0].tls.mode", "mode", "served without TLS", severity="warning"
    )
    assert result.config is not None
    assert result.config.gateways[0].servers[0].https_redirect


# --- ServiceEntry and WorkloadEntry ----------------------------------------------------------

ENTRY = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: api
spec:
  hosts: [api.example.com]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  resolution: RESOLUTION
  endpoints:
  - address: ADDRESS
    ports: {http: 8080}
    labels: {version: v1}
"""


def test_service_entry_values() -> None:
    _text, result = load(ENTRY.replace("RESOLUTION", "STATIC").replace("ADDRESS", "127.0.0.1"))
    assert result.diagnostics == ()
    assert result.config is not None
    entry = result.config.service_entries[0]
    assert entry.ports[0].number == 80
    assert entry.endpoints[0].ports == {"http": 8080}


def test_static_endpoints_need_ip_addresses() -> None:
    text, result = load(ENTRY.replace("RESOLUTION", "STATIC").replace("ADDRESS", "api.internal"))
    assert_at(result, text, "spec.endpoints[0].address", "address", "not an IP address")


def test_dns_endpoints_may_be_names() -> None:
    _text, result = load(ENTRY.replace("RESOLUTION", "DNS").replace("ADDRESS", "api.internal"))
    assert result.diagnostics == ()


def test_resolution_none_is_a_warning() -> None:
    text, result = load(ENTRY.replace("RESOLUTION", "NONE").split("  endpoints:")[0])
    assert_at(result, text, "spec.resolution", "resolution", "not implemented", severity="warning")
    assert result.config is not None


def test_resolution_none_cannot_have_endpoints() -> None:
    text, result = load(ENTRY.replace("RESOLUTION", "NONE").replace("ADDRESS", "10.0.0.1"))
    assert_at(result, text, "spec.endpoints", "endpoints", "cannot be set with resolution NONE")


def test_resolution_must_be_known() -> None:
    text, result = load(ENTRY.replace("RESOLUTION", "DYNAMIC").replace("ADDRESS", "10.0.0.1"))
    assert_at(result, text, "spec.resolution", "resolution", "must be one of STATIC, DNS, NONE")


def test_service_entry_needs_hosts_and_complete_ports() -> None:
    text, result = load(
        ENTRY.replace("RESOLUTION", "STATIC")
        .replace("ADDRESS", "10.0.0.1")
        .replace("  hosts: [api.example.com]\n", "")
        .replace("{number: 80, name: http, protocol: HTTP}", "{protocol: HTTP}")
    )
    assert_at(result, text, "spec.hosts", "spec:", "required")
    assert_at(result, text, "spec.ports[0].name", "{protocol: HTTP}", "required")
    assert_at(result, text, "spec.ports[0].number", "{protocol: HTTP}", "required")


def test_an_empty_workload_selector_selects_every_entry() -> None:
    source = (
        ENTRY.replace("RESOLUTION", "STATIC").split("  endpoints:")[0]
        + "  workloadSelector: {labels: {}}\n"
    )
    _text, result = load(source)
    assert result.errors == ()
    assert result.config is not None
    assert result.config.service_entries[0].workload_selector == {}


def test_workload_entry() -> None:
    text, result = load(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm}\n"
        "spec:\n  ports: {http: eighty}\n  labels: {app: api}\n"
    )
    assert_at(result, text, "spec.address", "spec:", "required")
    assert_at(result, text, "spec.ports.http", "http:", "expected an integer")


# --- Workload ---------------------------------------------------------------------------------

WORKLOAD = """\
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {name: web}
spec:
  service: web
  port: 8080
  command: [python3, -m, http.server]
"""


def test_workload_values_and_defaults(tmp_path: object) -> None:
    _text, result = load(WORKLOAD + "  env: {GREETING: hi}\n  labels: {version: v1}\n")
    assert result.diagnostics == ()
    assert result.config is not None
    (workload,) = result.config.workloads
    # As an unnamed Kubernetes port: nothing names a protocol, so it is detected.
    assert (workload.service, workload.port, workload.protocol, workload.replicas) == (
        "web",
        8080,
        "AUTO",
        1,
    )
    assert workload.upstreams == ()
    assert workload.command == ("python3", "-m", "http.server")
    assert workload.env == {"GREETING": "hi"}
    assert os.path.isabs(workload.directory)


@pytest.mark.parametrize(
    ("extra", "field", "needle", "message"),
    [
        ("  protocol: UDP\n", "spec.protocol", "protocol", "UDP is not carried"),
        ("  protocol: SMTP\n", "spec.protocol", "protocol", "not a protocol Istio knows"),
        ("  replicas: 0\n", "spec.replicas", "replicas", "out of range"),
        ("  env: {PORT_NUMBER: 1}\n", "spec.env.PORT_NUMBER", "PORT_NUMBER", "expected a string"),
    ],
)
def test_workload_problems(extra: str, field: str, needle: str, message: str) -> None:
    text, result = load(WORKLOAD + extra)
    assert_at(result, text, field, needle, message)


def test_workload_port_range_and_command_required() -> None:
    text, result = load(
        WORKLOAD.replace("8080", "70000").replace("  command: [python3, -m, http.server]\n", "")
    )
    assert_at(result, text, "spec.port", "port", "out of range")
    assert_at(result, text, "spec.command", "spec:", "required")


def test_workload_command_items_must_be_strings() -> None:
    text, result = load(WORKLOAD.replace("[python3, -m, http.server]", "[python3, 8080]"))
    assert_at(result, text, "spec.command[1]", "8080]", "expected a string")


def test_env_set_by_the_runner_is_a_warning() -> None:
    _text, result = load(WORKLOAD + '  env: {PORT: "1"}\n')
    diagnostic = find(result, "spec.env.PORT")
    assert diagnostic.severity == "warning"
    assert result.config is not None
