"""Inputs a review found to crash the loader, or to pass it and then fail (or misbehave) in Envoy.

Each case asserts where the diagnostic points and which field it names.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from load_cases import (
    BOOKINFO_REGISTRY,
    REVIEWS_RULE,
    assert_at,
    find,
    load,
    position_of,
    workload,
)
from test_load_kinds import ENTRY, load_route, route_with

import pilotfish.load.parse_virtual_service as parse_virtual_service
from pilotfish.load import load_text
from pilotfish.load.http_headers import is_ascii_decimal
from pilotfish.load.parse_virtual_service import retry_on_problem

ROUTE_PATH = "spec.http[0]"


# --- 1. Unicode digits, and crashes contained to one document ----------------------------------


@pytest.mark.parametrize("digits", ["²", "\uff15\uff10\uff13", "٣", "50³"])
def test_unicode_digits_in_retry_on_are_unknown_conditions(digits: str) -> None:
    text, result = load_route(f'retries: {{attempts: 1, retryOn: "{digits}"}}')
    assert_at(result, text, f"{ROUTE_PATH}.retries.retryOn", "retryOn", "unknown retry condition")


def test_ascii_status_codes_in_retry_on_still_work() -> None:
    assert retry_on_problem("5xx,503") is None
    assert retry_on_problem("99") == '"99" is not an HTTP status code'


def test_is_ascii_decimal() -> None:
    assert is_ascii_decimal("503")
    assert not is_ascii_decimal("²")
    assert not is_ascii_decimal("٣")
    assert not is_ascii_decimal("")


def test_a_parser_crash_costs_one_document_not_the_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def explode(_retry_on: str) -> str | None:
        raise ValueError("boom")

    monkeypatch.setattr(parse_virtual_service, "retry_on_problem", explode)
    text, result = load(
        *BOOKINFO_REGISTRY, route_with('retries: {attempts: 1, retryOn: "5xx"}'), REVIEWS_RULE
    )
    crashed = find(result, "")
    assert (crashed.line, crashed.col) == position_of(text, "apiVersion: networking.istio.io/v1")
    assert crashed.message == (
        "internal error while reading this document: ValueError: boom; please report"
    )
    # Every other document was still read and checked: nothing else is reported.
    assert result.diagnostics == (crashed,)
    assert result.config is None


@settings(deadline=None, max_examples=300)
@given(st.text(alphabet=st.sampled_from("0123456789²\uff15٣,x5 \t-"), max_size=12))
def test_retry_on_check_never_raises(retry_on: str) -> None:
    problem = retry_on_problem(retry_on)
    assert problem is None or isinstance(problem, str)


def test_a_validator_crash_is_a_diagnostic(monkeypatch: pytest.MonkeyPatch) -> None:
    import pilotfish.load.loader as loader

    def explode(*_args: object) -> list[object]:
        raise RuntimeError("bad day")

    monkeypatch.setattr(loader, "validate_mesh", explode)
    result = load_text(workload("a", "a"), "mesh.yaml")
    assert result.config is None
    assert "internal error while checking references" in result.errors[0].message


# --- 2. Upper bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "needle", "message"),
    [
        ("retries: {attempts: 10001}", "retries.attempts", "attempts", "0..10000"),
        ("fault: {abort: {httpStatus: 600}}", "fault.abort.httpStatus", "httpStatus", "200..599"),
        ("fault: {abort: {httpStatus: 199}}", "fault.abort.httpStatus", "httpStatus", "200..599"),
        (
            "fault: {abort: {httpStatus: 500, percentage: {value: 100.5}}}",
            "fault.abort.percentage.value",
            "value",
            "0..100",
        ),
        (
            "fault: {delay: {fixedDelay: 1s, percent: 101}}",
            "fault.delay.percent",
            "percent",
            "0..100",
        ),
    ],
)
def test_route_upper_bounds(fields: str, field: str, needle: str, message: str) -> None:
    text, result = load_route(fields)
    assert_at(result, text, f"{ROUTE_PATH}.{field}", needle, message)


def test_retry_attempts_at_the_cap_are_accepted() -> None:
    _text, result = load_route("retries: {attempts: 10000}")
    assert result.errors == ()


DIRECT = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - ACTION
"""


@pytest.mark.parametrize(
    ("action", "field", "needle", "message"),
    [
        ("directResponse: {status: 600}", "directResponse.status", "status", "200..599"),
        ("directResponse: {status: 100}", "directResponse.status", "status", "200..599"),
        ("redirect: {uri: /x, redirectCode: 304}", "redirect.redirectCode", "redirectCode", "301"),
        (
            "route: [{destination: {host: reviews}, weight: -1}]",
            "route[0].weight",
            "weight",
            "0..2147483647",
        ),
        (
            "route: [{destination: {host: reviews, port: {number: 65536}}}]",
            "route[0].destination.port.number",
            "number",
            "1..65535",
        ),
    ],
)
def test_action_bounds(action: str, field: str, needle: str, message: str) -> None:
    text, result = load(DIRECT.replace("ACTION", action), *BOOKINFO_REGISTRY)
    assert_at(result, text, f"{ROUTE_PATH}.{field}", needle, message)


def test_workload_replicas_are_capped_at_one_hundred() -> None:
    text, result = load(workload("a", "a") + "  replicas: 101\n")
    assert_at(result, text, "spec.replicas", "replicas", "1..100")
    _text, fine = load(workload("a", "a") + "  replicas: 100\n")
    assert fine.errors == ()


@pytest.mark.parametrize(
    ("before", "after", "field", "needle"),
    [
        ("{number: 80,", "{number: 0,", "spec.ports[0].number", "number"),
        (
            "protocol: HTTP}",
            "protocol: HTTP, targetPort: 70000}",
            "spec.ports[0].targetPort",
            "targetPort",
        ),
        ("{http: 8080}", "{http: 65536}", "spec.endpoints[0].ports.http", "http: 65536"),
    ],
)
def test_service_entry_ports_are_in_range(before: str, after: str, field: str, needle: str) -> None:
    entry = ENTRY.replace("RESOLUTION", "STATIC").replace("ADDRESS", "10.0.0.1")
    text, result = load(entry.replace(before, after))
    assert_at(result, text, field, needle, "1..65535")


# --- 3. Header operations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operations", "field", "needle", "message"),
    [
        ('request: {set: {":path": /x}}', "request.set.:path", '":path"', "pseudo-headers"),
        ("request: {add: {Host: evil}}", "request.add.Host", "Host", "host header"),
        ("response: {set: {x y: v}}", "response.set.x y", "x y", "not a valid HTTP header name"),
        ("request: {remove: [host]}", "request.remove[0]", "host]", "host header"),
        ("response: {remove: [':status']}", "response.remove[0]", "':status'", "pseudo-headers"),
        ('request: {set: {x-a: "a\\r\\nb"}}', "request.set.x-a", "x-a", "CR, LF"),
        ('response: {add: {x-a: "a\\0"}}', "response.add.x-a", "x-a", "NUL"),
    ],
)
def test_route_header_operations(operations: str, field: str, needle: str, message: str) -> None:
    text, result = load_route(f"headers: {{{operations}}}")
    assert_at(result, text, f"{ROUTE_PATH}.headers.{field}", needle, message)


def test_per_destination_header_operations() -> None:
    text, result = load(
        DIRECT.replace(
            "ACTION",
            "route: [{destination: {host: reviews}, headers: {request: {set: {host: x}}}}]",
        ),
        *BOOKINFO_REGISTRY,
    )
    assert_at(
        result, text, f"{ROUTE_PATH}.route[0].headers.request.set.host", "host: x", "host header"
    )


def test_valid_header_operations_pass() -> None:
    _text, result = load_route(
        "headers: {request: {set: {x-a: '1'}, add: {X-B_c: 'v w'}, remove: [x-c]}}"
    )
    assert result.errors == ()


def test_rewrite_authority_must_be_a_header_value() -> None:
    text, result = load_route('rewrite: {authority: "a\\nb"}')
    assert_at(result, text, f"{ROUTE_PATH}.rewrite.authority", "authority", "LF")


# --- 4. Consistent hash keys ------------------------------------------------------------------

RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash: HASH
"""


@pytest.mark.parametrize(
    ("key", "field", "needle", "message"),
    [
        ('{httpHeaderName: ""}', "consistentHash.httpHeaderName", "httpHeaderName", "empty"),
        ('{httpHeaderName: "x user"}', "consistentHash.httpHeaderName", "httpHeaderName", "token"),
        (
            '{httpCookie: {name: ""}}',
            "consistentHash.httpCookie.name",
            'name: ""',
            "must not be empty",
        ),
        ("{useSourceIp: false}", "consistentHash", "consistentHash", "exactly one of"),
    ],
)
def test_consistent_hash_keys(key: str, field: str, needle: str, message: str) -> None:
    text, result = load(RULE.replace("HASH", key), *BOOKINFO_REGISTRY)
    assert_at(result, text, f"spec.trafficPolicy.loadBalancer.{field}", needle, message)


def test_use_source_ip_true_is_a_key() -> None:
    _text, result = load(RULE.replace("HASH", "{useSourceIp: true}"), *BOOKINFO_REGISTRY)
    assert result.errors == ()


# --- 5. Empty match patterns -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "field", "needle"),
    [
        ('uri: {regex: ""}', "uri.regex", "regex"),
        ('authority: {regex: ""}', "authority.regex", "regex"),
        ('headers: {x-a: {regex: ""}}', "headers.x-a.regex", "regex"),
        ('queryParams: {q: {regex: ""}}', "queryParams.q.regex", "regex"),
        ('headers: {x-a: {prefix: ""}}', "headers.x-a.prefix", "prefix"),
        ('method: {prefix: ""}', "method.prefix", "prefix"),
    ],
)
def test_empty_patterns_envoy_rejects(match: str, field: str, needle: str) -> None:
    text, result = load_route(f"match: [{{{match}}}]")
    assert_at(result, text, f"{ROUTE_PATH}.match[0].{field}", needle, "must not be empty")


def test_empty_uri_prefix_and_empty_exact_header_are_accepted() -> None:
    # RouteMatch.prefix and StringMatcher.exact carry no min_len rule in Envoy's protos.
    _text, result = load_route('match: [{uri: {prefix: ""}, headers: {x-a: {exact: ""}}}]')
    assert result.errors == ()


def test_match_header_names_must_be_tokens() -> None:
    text, result = load_route('match: [{headers: {"x a": {exact: v}}}]')
    assert_at(result, text, f"{ROUTE_PATH}.match[0].headers.x a", '"x a"', "header name")


# --- 6. Durations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "needle"),
    [
        ("timeout: 500us", "timeout", "timeout"),
        ("retries: {attempts: 1, perTryTimeout: 999999ns}", "retries.perTryTimeout", "perTry"),
        ("fault: {delay: {fixedDelay: 0.0001s}}", "fault.delay.fixedDelay", "fixedDelay"),
    ],
)
def test_durations_below_a_millisecond(fields: str, field: str, needle: str) -> None:
    text, result = load_route(fields)
    assert_at(result, text, f"{ROUTE_PATH}.{field}", needle, "shorter than 1ms")


@pytest.mark.parametrize("duration", ["\u0663s", "\uff15ms", "²s"])
def test_durations_take_ascii_digits_only(duration: str) -> None:
    text, result = load_route(f'timeout: "{duration}"')
    assert_at(result, text, f"{ROUTE_PATH}.timeout", "timeout", "invalid duration")


def test_zero_fixed_delay_is_rejected() -> None:
    text, result = load_route("fault: {delay: {fixedDelay: 0s}}")
    assert_at(
        result, text, f"{ROUTE_PATH}.fault.delay.fixedDelay", "fixedDelay", "greater than zero"
    )


def test_one_millisecond_is_accepted() -> None:
    _text, result = load_route("timeout: 1ms\nfault: {delay: {fixedDelay: 1000us}}")
    assert result.errors == ()


# --- 7. ServiceEntry consistency -----------------------------------------------------------------

STATIC_ENTRY = ENTRY.replace("RESOLUTION", "STATIC").replace("ADDRESS", "10.0.0.1")


def test_duplicate_port_numbers_and_names_in_one_entry() -> None:
    entry = STATIC_ENTRY.replace(
        "  - {number: 80, name: http, protocol: HTTP}\n",
        "  - {number: 80, name: http, protocol: HTTP}\n"
        "  - {number: 80, name: web, protocol: HTTP}\n"
        "  - {number: 81, name: http, protocol: HTTP}\n",
    )
    text, result = load(entry)
    assert_at(
        result, text, "spec.ports[1].number", "number: 80", "duplicate port number 80", occurrence=2
    )
    assert_at(
        result, text, "spec.ports[2].name", "name: http", 'duplicate port name "http"', occurrence=2
    )


SELECTING_ENTRY = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vms}
spec:
  hosts: [vms.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: RESOLUTION
  workloadSelector: {labels: {app: vm}}
"""
VM = """\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1}
spec:
  address: ADDRESS
  labels: {app: vm}
"""


def test_static_entry_selecting_a_hostname_workload_entry() -> None:
    text, result = load(
        SELECTING_ENTRY.replace("RESOLUTION", "STATIC"), VM.replace("ADDRESS", "vm.internal")
    )
    diagnostic = assert_at(result, text, "spec.address", "address:", "not an IP address")
    assert "ServiceEntry default/vms" in diagnostic.message


@pytest.mark.parametrize(
    ("resolution", "address"), [("DNS", "vm.internal"), ("STATIC", "10.0.0.7")]
)
def test_selected_workload_entries_that_fit(resolution: str, address: str) -> None:
    _text, result = load(
        SELECTING_ENTRY.replace("RESOLUTION", resolution), VM.replace("ADDRESS", address)
    )
    assert result.errors == ()


def test_unselected_hostname_workload_entry_is_fine() -> None:
    _text, result = load(
        SELECTING_ENTRY.replace("RESOLUTION", "STATIC"),
        VM.replace("ADDRESS", "vm.internal").replace("app: vm", "app: other"),
    )
    assert result.errors == ()


def test_two_service_entries_for_one_host() -> None:
    second = STATIC_ENTRY.replace("name: api", "name: api-copy")
    text, result = load(STATIC_ENTRY, second)
    diagnostic = assert_at(
        result, text, "spec.hosts[0]", "api.example.com", "already declared", occurrence=2
    )
    assert "ServiceEntry default/api " in diagnostic.message


def test_service_entry_for_a_host_a_workload_serves() -> None:
    entry = STATIC_ENTRY.replace("[api.example.com]", "[reviews]")
    text, result = load(workload("reviews-v1", "reviews"), entry)
    diagnostic = assert_at(result, text, "spec.hosts[0]", "reviews]", "already served by")
    assert "Workload default/reviews-v1" in diagnostic.message


# --- 8. VirtualServices for hosts nobody serves ------------------------------------------------

MESH_SERVICE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: routes}
spec:
  hosts: ["HOST"]
  GATEWAYS
  http:
  - route: [{destination: {host: reviews}}]
"""


def test_mesh_virtual_service_for_an_unknown_host_warns() -> None:
    text, result = load(
        MESH_SERVICE.replace("HOST", "nobody").replace("GATEWAYS", ""), *BOOKINFO_REGISTRY
    )
    assert_at(
        result, text, "spec.hosts[0]", '"nobody"', 'no service named "nobody"', severity="warning"
    )
    assert result.config is not None


def test_namespace_qualified_short_name_gets_a_hint() -> None:
    text, result = load(
        MESH_SERVICE.replace("HOST", "reviews.default").replace("GATEWAYS", ""),
        *BOOKINFO_REGISTRY,
    )
    diagnostic = assert_at(
        result, text, "spec.hosts[0]", '"reviews.default"', "has no effect", severity="warning"
    )
    assert 'did you mean "reviews.default.svc.cluster.local"' in diagnostic.message


@pytest.mark.parametrize(
    ("host", "gateways"),
    [("reviews", ""), ("*.example.com", ""), ("nobody", "gateways: [bookinfo]")],
)
def test_known_wildcard_and_gateway_only_hosts_do_not_warn(host: str, gateways: str) -> None:
    gateway = (
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: bookinfo}\n"
        "spec:\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]\n"
    )
    _text, result = load(
        MESH_SERVICE.replace("HOST", host).replace("GATEWAYS", gateways),
        gateway,
        REVIEWS_RULE,
        *BOOKINFO_REGISTRY,
    )
    assert result.diagnostics == ()
