"""Istio's own rules, learnt from running real Istio config through the loader: what Istio
accepts is accepted (with a warning for what Pilotfish does not carry), what it refuses is
refused, with the field to fix."""

from __future__ import annotations

import pytest
from load_cases import BOOKINFO_REGISTRY, assert_at, find, load

from pilotfish.model.resources import NotCarriedPort, ServicePort, StringMatch

ROUTE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
"""


def with_route_fields(fields: str) -> str:
    """ROUTE with ``fields`` (YAML at the level of ``route:``) added to its first route."""
    indented = "".join(f"    {line}\n" for line in fields.splitlines())
    return ROUTE + indented


def egress(ports: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api}\n"
        f"spec:\n  hosts: [api.example.com]\n  resolution: DNS\n{ports}"
    )


# --- ServiceEntry ports -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "carried"),
    [
        ("HTTP", "HTTP"),
        ("http2", "HTTP2"),
        ("Grpc", "GRPC"),
        ("TCP", "TCP"),
        ("MONGO", "TCP"),
        ("mysql", "TCP"),
        ("REDIS", "TCP"),
        ("TLS", "TLS"),
        ("HTTPS", "TLS"),
    ],
)
def test_every_tcp_based_istio_protocol_is_carried(protocol: str, carried: str) -> None:
    _text, result = load(
        egress(
            f"  ports:\n  - {{number: 443, name: port, protocol: {protocol}, targetPort: 8443}}\n"
        )
    )
    assert result.diagnostics == ()
    assert result.config is not None
    (entry,) = result.config.service_entries
    assert entry.ports == (ServicePort(443, "port", carried, target_port=8443),)
    assert entry.ports_not_carried == ()


@pytest.mark.parametrize(
    ("protocol", "consequence"),
    [
        ("UDP", "Envoy sidecars proxy TCP only, so UDP traffic to it bypasses the mesh"),
        ("HTTP_PROXY", "HTTP_PROXY names a Sidecar egress proxy port in Istio"),
    ],
)
def test_a_port_pilotfish_does_not_carry_is_kept_with_one_warning(
    protocol: str, consequence: str
) -> None:
    text, result = load(
        egress(
            "  ports:\n  - {number: 80, name: http, protocol: HTTP}\n"
            f"  - {{number: 53, name: dns, protocol: {protocol}}}\n"
        )
    )
    warning = assert_at(
        result, text, "spec.ports[1]", "{number: 53", "is not carried", severity="warning"
    )
    assert warning.message.startswith(
        f"port 53 ({protocol}) of ServiceEntry default/api is not carried: {consequence}"
    )
    assert len(result.diagnostics) == 1
    assert result.config is not None
    (entry,) = result.config.service_entries
    assert [port.number for port in entry.ports] == [80]
    assert entry.ports_not_carried == (NotCarriedPort(53, "dns", protocol),)


def test_a_protocol_istio_does_not_know_is_an_error() -> None:
    text, result = load(egress("  ports:\n  - {number: 25, name: mail, protocol: SMTP}\n"))
    error = assert_at(result, text, "spec.ports[0].protocol", "protocol", "not a protocol")
    assert '"SMTP" is not a protocol Istio knows' in error.message
    assert result.config is None


def test_a_route_to_a_port_not_carried_says_so() -> None:
    routes = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api.example.com]
  http:
  - route:
    - destination: {host: api.example.com, port: {number: 53}}
"""
    entry = egress("  ports:\n  - {number: 53, name: dns, protocol: UDP}\n")
    text, result = load(routes, entry)
    error = assert_at(
        result, text, "spec.http[0].route[0].destination.port.number", "number: 53", ""
    )
    assert error.message == (
        "port 53 (UDP) of api.example.com is not carried, so this route cannot reach it"
    )
    unnamed = routes.replace(", port: {number: 53}", "")
    text, result = load(unnamed, entry)
    error = find(result, "spec.http[0].route[0].destination")
    assert "has no port Pilotfish carries (its ports 53 (UDP) are not carried)" in error.message


def test_a_service_entry_needs_no_ports() -> None:
    _text, result = load(egress(""))
    assert result.diagnostics == ()
    assert result.config is not None
    assert result.config.service_entries[0].ports == ()


@pytest.mark.parametrize(
    ("name", "protocol"),
    [
        ("http-web", "HTTP"),
        ("grpc", "GRPC"),
        ("http2-api", "HTTP2"),
        ("tcp-postgres", "TCP"),
        ("tls", "TLS"),
        ("https-api", "TLS"),
        ("mongo-users", "TCP"),
        ("mysql", "TCP"),
        ("redis-cache", "TCP"),
    ],
)
def test_a_port_without_protocol_takes_it_from_its_name(name: str, protocol: str) -> None:
    _text, result = load(egress(f"  ports:\n  - {{number: 80, name: {name}}}\n"))
    assert result.diagnostics == ()
    assert result.config is not None
    assert result.config.service_entries[0].ports[0].protocol == protocol


def test_protocol_wins_over_the_name() -> None:
    _text, result = load(egress("  ports:\n  - {number: 80, name: tcp-web, protocol: HTTP}\n"))
    assert result.config is not None
    assert result.config.service_entries[0].ports[0].protocol == "HTTP"


@pytest.mark.parametrize("name", ["web", "httpx", "tcpdb"])
def test_a_port_nothing_names_is_detected_without_a_warning(name: str) -> None:
    _text, result = load(egress(f"  ports:\n  - {{number: 80, name: {name}}}\n"))
    assert result.diagnostics == ()
    assert result.config is not None
    assert result.config.service_entries[0].ports[0].protocol == "AUTO"


def test_a_port_name_must_be_a_dns_label() -> None:
    text, result = load(egress("  ports:\n  - {number: 80, name: Web_1, protocol: HTTP}\n"))
    assert_at(
        result, text, "spec.ports[0].name", "name", '"Web_1" is not a port name', occurrence=2
    )


@pytest.mark.parametrize(
    ("ports", "index", "shown"),
    [
        (
            "[{number: 80, name: http, protocol: HTTP}, {number: 3306, name: db, protocol: TCP}]",
            1,
            "protocol TCP",
        ),
        ("[{number: 80, name: http}]", 0, "no protocol"),
        ("[{number: 27017, name: mongo, protocol: MONGO}]", 0, "protocol MONGO"),
    ],
)
def test_several_hosts_cannot_share_a_port_that_names_no_host(
    ports: str, index: int, shown: str
) -> None:
    _text, result = load(
        egress(f"  ports: {ports}\n").replace("[api.example.com]", "[a.example.com, b.example.com]")
    )
    error = find(result, f"spec.ports[{index}]")
    assert error.message.startswith(f"{shown} with several hosts")
    assert "Istio refuses it" in error.message


@pytest.mark.parametrize(
    "protocol_and_resolution",
    [
        "protocol: HTTPS}]\n  resolution: DNS",
        "protocol: TLS}]",
        "protocol: TCP}]\n  resolution: NONE",
    ],
)
def test_several_hosts_may_share_tls_and_http_ports_or_any_port_without_resolution(
    protocol_and_resolution: str,
) -> None:
    text = (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api}\n"
        "spec:\n  hosts: [a.example.com, b.example.com]\n"
        f"  ports: [{{number: 443, name: p, {protocol_and_resolution}\n"
    )
    _text, result = load(text)
    assert result.errors == ()


def test_a_service_entry_host_may_not_be_a_lone_star() -> None:
    text, result = load(egress("").replace("[api.example.com]", '["*"]'))
    assert_at(result, text, "spec.hosts[0]", '"*"', "not a service name")


# --- WorkloadEntry ---------------------------------------------------------------------------


def workload_entry(spec: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm}\n"
        f"spec:\n{spec}"
    )


def test_an_entry_of_another_network_needs_no_address() -> None:
    text, result = load(workload_entry("  network: west\n"))
    warning = assert_at(result, text, "spec.network", "network: west", "", severity="warning")
    assert "never through its network's gateway" in warning.message
    assert "without an address it gets no traffic" in warning.message
    assert result.config is not None


def test_a_unix_socket_address_is_a_warning() -> None:
    text, result = load(workload_entry("  address: unix:///var/run/app.sock\n"))
    assert_at(
        result, text, "spec.address", "address", "this endpoint gets no traffic", severity="warning"
    )
    assert result.config is not None
    assert result.config.workload_entries == ()


# --- VirtualService: refused as Istio refuses it ----------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "needle", "message"),
    [
        (
            "headers: {request: {set: {x-rate: 50%}}}",
            "spec.http[0].headers.request.set.x-rate",
            "x-rate",
            'unescaped "%" at character 3',
        ),
        (
            "headers: {response: {add: {x-start: '%START_TIME%%'}}}",
            "spec.http[0].headers.response.add.x-start",
            "x-start",
            'write "%%" for a percent sign',
        ),
        ("rewrite: {}", "spec.http[0].rewrite", "rewrite", "needs uri, authority"),
        (
            "retries: {attempts: 0, perTryTimeout: 2s}",
            "spec.http[0].retries.perTryTimeout",
            "perTryTimeout",
            "no effect with attempts: 0",
        ),
        (
            "retries: {attempts: 0, retryOn: 5xx}",
            "spec.http[0].retries.retryOn",
            "retryOn",
            "no effect with attempts: 0",
        ),
    ],
)
def test_route_fields_istio_refuses(fields: str, field: str, needle: str, message: str) -> None:
    text, result = load(with_route_fields(fields), *BOOKINFO_REGISTRY)
    assert_at(result, text, field, needle, message)


@pytest.mark.parametrize("value", ["100%%", "%HOSTNAME%", "%REQ(x-id):8% and %%", "no percent"])
def test_header_values_with_envoy_variables_or_escaped_percent_are_accepted(value: str) -> None:
    _text, result = load(
        with_route_fields(f"headers: {{request: {{set: {{x-note: '{value}'}}}}}}"),
        *BOOKINFO_REGISTRY,
    )
    assert result.diagnostics == ()


def test_a_virtual_service_needs_routes() -> None:
    text, result = load(ROUTE.split("  http:")[0], *BOOKINFO_REGISTRY)
    assert_at(result, text, "spec", "spec:", "needs http, tcp or tls routes")


def test_a_lone_star_host_is_refused_on_the_mesh_but_not_on_a_gateway() -> None:
    star = ROUTE.replace("hosts: [reviews]", 'hosts: ["*"]')
    text, result = load(star, *BOOKINFO_REGISTRY)
    assert_at(result, text, "spec.hosts[0]", '"*"', "not allowed for a VirtualService bound to")
    gateway = (
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: edge}\n"
        "spec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n"
        '    hosts: ["*"]\n'
    )
    _text, result = load(
        star.replace("  http:", "  gateways: [edge]\n  http:"), gateway, *BOOKINFO_REGISTRY
    )
    assert result.errors == ()


@pytest.mark.parametrize(
    ("hosts", "overlapping"),
    [
        ('["*.foo.com", "a.foo.com"]', True),
        ('["*.foo.com", "*.bar.foo.com"]', True),
        ('["a.foo.com", "a.foo.com"]', True),
        ('["*.foo.com", "foo.com"]', False),
        ('["*.foo.com", "*.bar.com"]', False),
    ],
)
def test_hosts_of_one_virtual_service_may_not_overlap(hosts: str, overlapping: bool) -> None:
    gateway = (
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: edge}\n"
        "spec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n"
        '    hosts: ["*"]\n'
    )
    source = ROUTE.replace("hosts: [reviews]", f"hosts: {hosts}\n  gateways: [edge]")
    _text, result = load(source, gateway, *BOOKINFO_REGISTRY)
    problems = [d for d in result.errors if d.field == "spec.hosts[1]"]
    assert bool(problems) == overlapping, result.diagnostics
    if overlapping:
        assert "overlaps" in problems[0].message


# --- VirtualService: Istio-valid, implemented or warned about ---------------------------------


def test_a_header_presence_match_is_implemented() -> None:
    source = ROUTE.replace("  - route:", "  - match:\n    - headers: {x-canary: {}}\n    route:")
    _text, result = load(source, *BOOKINFO_REGISTRY)
    assert result.diagnostics == ()
    assert result.config is not None
    match = result.config.virtual_services[0].http[0].match[0]
    assert match.headers == {"x-canary": StringMatch("regex", ".*")}


def test_an_authority_request_header_is_the_routes_host_rewrite() -> None:
    _text, result = load(
        with_route_fields("headers: {request: {set: {':authority': reviews.internal}}}"),
        *BOOKINFO_REGISTRY,
    )
    assert result.diagnostics == ()
    assert result.config is not None
    route = result.config.virtual_services[0].http[0]
    assert route.rewrite is not None and route.rewrite.authority == "reviews.internal"
    assert route.headers is not None and route.headers.request.set == {}


def test_an_authority_response_header_is_still_refused() -> None:
    text, result = load(
        with_route_fields("headers: {response: {set: {':authority': x}}}"), *BOOKINFO_REGISTRY
    )
    assert_at(
        result, text, "spec.http[0].headers.response.set.:authority", "':authority'", "pseudo"
    )


def test_newer_retry_conditions_are_known() -> None:
    _text, result = load(
        with_route_fields("retries: {attempts: 2, retryOn: 'http3-post-connect-failure,5xx'}"),
        *BOOKINFO_REGISTRY,
    )
    assert result.diagnostics == ()


def test_a_grpc_abort_is_a_warning_saying_it_is_not_injected() -> None:
    text, result = load(
        with_route_fields("fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 5}}}"),
        *BOOKINFO_REGISTRY,
    )
    assert_at(
        result,
        text,
        "spec.http[0].fault.abort.grpcStatus",
        "grpcStatus",
        "this abort is not injected",
        severity="warning",
    )
    assert result.config is not None
    assert result.config.virtual_services[0].http[0].fault is not None


def test_an_abort_needs_exactly_one_kind() -> None:
    _text, result = load(
        with_route_fields("fault: {abort: {httpStatus: 503, grpcStatus: UNAVAILABLE}}"),
        *BOOKINFO_REGISTRY,
    )
    error = [d for d in result.errors if d.field == "spec.http[0].fault.abort"]
    assert error and "exactly one of httpStatus, grpcStatus, http2Error" in error[0].message


@pytest.mark.parametrize(
    ("redirect", "field", "unchanged"),
    [
        ("{scheme: https}", "scheme", "keeps the request's scheme, so it sends clients back"),
        ("{uri: /new, port: 8443}", "port", "keeps the request's port"),
        ("{prefixRewrite: /v2}", "prefixRewrite", "keeps the request's path"),
    ],
)
def test_redirect_fields_pilotfish_does_not_carry_warn(
    redirect: str, field: str, unchanged: str
) -> None:
    source = ROUTE.replace("  - route:\n    - destination: {host: reviews}\n", "")
    source += f"  - redirect: {redirect}\n"
    text, result = load(source, *BOOKINFO_REGISTRY)
    warning = assert_at(
        result, text, f"spec.http[0].redirect.{field}", field, unchanged, severity="warning"
    )
    assert warning.message.startswith("not implemented by Pilotfish: ")
    assert result.config is not None


@pytest.mark.parametrize(
    ("redirect", "field", "message"),
    [
        ("{scheme: ftp}", "spec.http[0].redirect.scheme", "must be one of http, https"),
        ("{uri: /a, prefixRewrite: /b}", "spec.http[0].redirect.prefixRewrite", "uri"),
        ("{port: 0}", "spec.http[0].redirect.port", "out of range"),
    ],
)
def test_redirect_values_are_checked(redirect: str, field: str, message: str) -> None:
    source = ROUTE.replace("  - route:\n    - destination: {host: reviews}\n", "")
    source += f"  - redirect: {redirect}\n"
    _text, result = load(source, *BOOKINFO_REGISTRY)
    assert any(d.field == field and message in d.message for d in result.errors), result.diagnostics


# --- values inside fields that are only warned about are still checked -----------------------


@pytest.mark.parametrize(
    ("address", "ports", "message"),
    [
        ("unix:///dir/", "", "cannot be a directory"),
        ("unix://relative", "", "absolute path or an abstract socket"),
        ("unix://@app", "  ports: {http: 80}\n", "cannot have ports"),
    ],
)
def test_unix_socket_addresses_are_checked(address: str, ports: str, message: str) -> None:
    text, result = load(workload_entry(f"  address: {address}\n{ports}"))
    assert_at(result, text, "spec.address", "address", message)


def test_workload_entry_port_names_are_checked() -> None:
    text, result = load(workload_entry("  address: 10.0.0.1\n  ports: {'@': 80}\n"))
    assert_at(result, text, "spec.ports.@", "'@'", "port names are letters, digits")


@pytest.mark.parametrize(
    ("warmup", "field", "message"),
    [
        ("{minimumPercent: 10}", "duration", "required"),
        ("{duration: 60s, minimumPercent: 150}", "minimumPercent", "out of range"),
        ("{duration: 60s, aggression: -0.5}", "aggression", "greater than 0"),
    ],
)
def test_warmup_values_are_checked(warmup: str, field: str, message: str) -> None:
    rule = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\n"
        f"spec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      warmup: {warmup}\n"
    )
    _text, result = load(rule, *BOOKINFO_REGISTRY)
    path = f"spec.trafficPolicy.loadBalancer.warmup.{field}"
    assert any(d.field == path and message in d.message for d in result.errors), result.diagnostics


def test_a_dns_service_entry_cannot_have_address_ranges() -> None:
    text, result = load(egress("  addresses: [10.0.0.0/16]\n"))
    assert_at(result, text, "spec.addresses", "addresses", "CIDR ranges need resolution")


def test_a_workload_selector_cannot_hold_wildcards() -> None:
    text, result = load(egress("  workloadSelector: {labels: {app: '*'}}\n"))
    assert_at(result, text, "spec.workloadSelector.labels.app", "app:", "wildcards")


RULE = (
    "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\n"
    "spec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: HASH\n"
)


@pytest.mark.parametrize(
    ("source", "field", "consequence"),
    [
        (
            with_route_fields("rewrite: {uriRegexRewrite: {match: ^/v1, rewrite: /v2}}"),
            "spec.http[0].rewrite.uriRegexRewrite",
            "the path is forwarded as it was requested",
        ),
        (
            with_route_fields("fault: {delay: {exponentialDelay: 1s}}"),
            "spec.http[0].fault.delay.exponentialDelay",
            "no delay is injected",
        ),
        (
            with_route_fields("retries: {attempts: 3, backoff: 1s}"),
            "spec.http[0].retries.backoff",
            "default backoff",
        ),
        (
            RULE.replace("HASH", "{httpQueryParameterName: user}"),
            "spec.trafficPolicy.loadBalancer.consistentHash.httpQueryParameterName",
            "picked round robin",
        ),
    ],
)
def test_istio_fields_only_warned_about_leave_the_rest_valid(
    source: str, field: str, consequence: str
) -> None:
    _text, result = load(source, *BOOKINFO_REGISTRY)
    assert [(d.field, d.severity) for d in result.diagnostics] == [(field, "warning")]
    message = result.diagnostics[0].message
    assert message.startswith("not implemented by Pilotfish: ") and consequence in message
    assert result.config is not None


def test_a_hash_on_a_query_parameter_leaves_no_hash_policy() -> None:
    _text, result = load(RULE.replace("HASH", "{httpQueryParameterName: user}"), *BOOKINFO_REGISTRY)
    assert result.config is not None
    policy = result.config.destination_rules[0].traffic_policy
    assert policy is not None and policy.load_balancer is not None
    assert policy.load_balancer.consistent_hash is None


def test_a_grpc_web_port_is_carried_as_http_with_a_warning() -> None:
    text, result = load(egress("  ports:\n  - {number: 8080, name: web, protocol: GRPC-Web}\n"))
    assert_at(
        result,
        text,
        "spec.ports[0].protocol",
        "protocol",
        "carried as plain HTTP",
        severity="warning",
    )
    assert result.config is not None
    assert result.config.service_entries[0].ports[0].protocol == "HTTP"
