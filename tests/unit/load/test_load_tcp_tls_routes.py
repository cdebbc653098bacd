"""VirtualService ``tcp`` and ``tls`` routes: parsed into TCPRoute / TLSRoute, checked as Istio
checks them (validateTCPRoute, validateTLSRoute, validateTLSMatch), each problem at its line."""

from __future__ import annotations

import textwrap

import pytest
from load_cases import BOOKINFO_REGISTRY, REVIEWS_RULE, assert_at, errors, load, workload

from pilotfish.model.resources import (
    Destination,
    L4MatchAttributes,
    RouteDestination,
    TCPRoute,
    TLSRoute,
    VirtualService,
)


def virtual_service(body: str, hosts: str = "[reviews]", extra: str = "") -> str:
    return (
        "apiVersion: networking.istio.io/v1\n"
        "kind: VirtualService\n"
        "metadata:\n  name: reviews\n"
        f"spec:\n  hosts: {hosts}\n{extra}" + textwrap.indent(textwrap.dedent(body), "  ")
    )


EDGE_GATEWAY = (
    "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: edge}\n"
    "spec:\n  servers: [{port: {number: 443, name: tls, protocol: TLS}, hosts: ['*'],"
    " tls: {mode: PASSTHROUGH}}]\n"
)


def parsed(text: str) -> VirtualService:
    _, result = load(text, REVIEWS_RULE, EDGE_GATEWAY, *BOOKINFO_REGISTRY)
    assert errors(result) == []
    assert result.config is not None
    return result.config.virtual_services[0]


def test_tcp_route_with_match_and_weighted_subsets() -> None:
    service = parsed(
        virtual_service(
            """\
            tcp:
            - match:
              - port: 9080
                sourceLabels: {app: productpage}
                sourceNamespace: default
                gateways: [mesh]
              route:
              - destination: {host: reviews, subset: v1}
                weight: 80
              - destination: {host: reviews, subset: v2}
                weight: 20
            - route:
              - destination: {host: reviews}
            """
        )
    )
    assert service.tcp == (
        TCPRoute(
            match=(
                L4MatchAttributes(
                    port=9080,
                    source_labels={"app": "productpage"},
                    source_namespace="default",
                    gateways=("mesh",),
                ),
            ),
            route=(
                RouteDestination(Destination("reviews", "v1"), weight=80),
                RouteDestination(Destination("reviews", "v2"), weight=20),
            ),
        ),
        TCPRoute(route=(RouteDestination(Destination("reviews")),)),
    )


def test_tls_route_by_sni_within_the_hosts() -> None:
    service = parsed(
        virtual_service(
            """\
            tls:
            - match:
              - sniHosts: [a.example.com, "*.b.example.com"]
                port: 443
              route:
              - destination: {host: reviews, port: {number: 9080}}
            """,
            hosts='["*.example.com"]',
            extra="  gateways: [edge]\n",
        ),
    )
    (route,) = service.tls
    assert route == TLSRoute(
        match=(L4MatchAttributes(port=443, sni_hosts=("a.example.com", "*.b.example.com")),),
        route=(RouteDestination(Destination("reviews", port=9080)),),
    )


@pytest.mark.parametrize(
    ("body", "field", "needle", "message"),
    [
        ("tcp:\n- match: [{port: 9080}]\n", "spec.tcp[0].route", "match:", "needs at least one"),
        (
            "tcp:\n- route: [{destination: {host: reviews}, headers: {}}]\n",
            "spec.tcp[0].route[0].headers",
            "headers",
            "unknown field",
        ),
        (
            "tcp:\n- route: [{weight: 5}]\n",
            "spec.tcp[0].route[0].destination",
            "{weight",
            "required",
        ),
        (
            "tcp:\n- match: [{port: 70000}]\n  route: [{destination: {host: reviews}}]\n",
            "spec.tcp[0].match[0].port",
            "port: 70000",
            "",
        ),
        (
            "tcp:\n- match: [{destinationSubnets: [10.0.0.0/33]}]\n"
            "  route: [{destination: {host: reviews}}]\n",
            "spec.tcp[0].match[0].destinationSubnets[0]",
            "10.0.0.0/33",
            "not an IP address or CIDR",
        ),
        (
            "tcp:\n- match: [{sourceLabels: {'app': 'bad value!'}}]\n"
            "  route: [{destination: {host: reviews}}]\n",
            "spec.tcp[0].match[0].sourceLabels.app",
            "'app'",
            "not a valid label value",
        ),
        (
            "tcp:\n- match: [{sniHosts: [reviews]}]\n  route: [{destination: {host: reviews}}]\n",
            "spec.tcp[0].match[0].sniHosts",
            "sniHosts",
            "unknown field",
        ),
        (
            "tls:\n- route: [{destination: {host: reviews}}]\n",
            "spec.tls[0].match",
            "route:",
            "needs",
        ),
        (
            "tls:\n- match: [{port: 443}]\n  route: [{destination: {host: reviews}}]\n",
            "spec.tls[0].match[0].sniHosts",
            "{port: 443}",
            "at least one host",
        ),
        (
            "tls:\n- match: [{sniHosts: [ratings]}]\n  route: [{destination: {host: reviews}}]\n",
            "spec.tls[0].match[0].sniHosts[0]",
            "ratings]",
            "not within any host",
        ),
        (
            "tls:\n- match: [{sniHosts: [bad_name]}]\n  route: [{destination: {host: reviews}}]\n",
            "spec.tls[0].match[0].sniHosts[0]",
            "bad_name",
            "not a valid host name",
        ),
        (
            "tcp:\n- route:\n  - destination: {host: reviews, subset: v1}\n"
            "  - destination: {host: reviews, subset: v2}\n",
            "spec.tcp[0].route",
            "route:",
            "weights sum to 0",
        ),
        (
            "tcp:\n- route: [{destination: {host: nowhere}}]\n",
            "spec.tcp[0].route[0].destination.host",
            "host: nowhere",
            'unknown service "nowhere"',
        ),
        (
            "tcp:\n- route: [{destination: {host: reviews, subset: v9}}]\n",
            "spec.tcp[0].route[0].destination.subset",
            "subset: v9",
            'subset "v9" is not defined',
        ),
        (
            "tls:\n- match: [{sniHosts: [reviews]}]\n"
            "  route: [{destination: {host: reviews, port: {number: 1}}}]\n",
            "spec.tls[0].route[0].destination.port.number",
            "number: 1",
            "has no port 1",
        ),
        (
            "tcp:\n- match: [{gateways: [nowhere]}]\n  route: [{destination: {host: reviews}}]\n",
            "spec.tcp[0].match[0].gateways[0]",
            "nowhere]",
            'unknown Gateway "default/nowhere"',
        ),
    ],
)
def test_invalid_l4_routes_are_errors_at_their_line(
    body: str, field: str, needle: str, message: str
) -> None:
    text, result = load(virtual_service(body), REVIEWS_RULE, *BOOKINFO_REGISTRY)
    assert_at(result, text, field, needle, message)


def test_destination_subnets_warn_that_the_block_never_matches() -> None:
    body = (
        "tcp:\n- match: [{destinationSubnets: [10.0.0.0/8]}]\n"
        "  route: [{destination: {host: reviews}}]\n"
    )
    text, result = load(virtual_service(body), REVIEWS_RULE, *BOOKINFO_REGISTRY)
    diagnostic = assert_at(
        result,
        text,
        "spec.tcp[0].match[0].destinationSubnets",
        "destinationSubnets",
        "never matches",
        severity="warning",
    )
    assert "not implemented by Pilotfish" in diagnostic.message
    assert result.config is not None


def test_an_ip_sni_host_is_a_warning() -> None:
    body = "tls:\n- match: [{sniHosts: [10.1.2.3]}]\n  route: [{destination: {host: reviews}}]\n"
    text, result = load(
        virtual_service(body, hosts="['*']", extra="  gateways: [edge]\n"),
        REVIEWS_RULE,
        *BOOKINFO_REGISTRY,
        EDGE_GATEWAY,
    )
    assert_at(
        result,
        text,
        "spec.tls[0].match[0].sniHosts[0]",
        "10.1.2.3",
        "IP address",
        severity="warning",
    )


def test_a_delegate_has_no_tcp_routes() -> None:
    text, result = load(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: d}\n"
        "spec:\n  tcp: [{route: [{destination: {host: reviews}}]}]\n",
        *BOOKINFO_REGISTRY,
    )
    assert_at(result, text, "spec.tcp", "tcp:", "delegate")


def test_tls_routes_bound_to_the_mesh_warn_that_sidecars_do_not_route_by_sni() -> None:
    body = "tls:\n- match: [{sniHosts: [reviews]}]\n  route: [{destination: {host: reviews}}]\n"
    text, result = load(virtual_service(body), REVIEWS_RULE, *BOOKINFO_REGISTRY)
    assert_at(
        result, text, "spec.tls", "tls:", "at sidecars (only at gateways)", severity="warning"
    )


def test_a_tcp_gateway_server_sharing_a_port_gets_nothing_and_says_so() -> None:
    text, result = load(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: edge}\nspec:\n"
        "  servers:\n"
        "  - port: {number: 9000, name: http, protocol: HTTP}\n    hosts: ['*']\n"
        "  - port: {number: 9000, name: tcp, protocol: TCP}\n    hosts: ['*']\n"
    )
    assert_at(
        result,
        text,
        "spec.servers[1].port",
        "port: {number: 9000, name: tcp",
        "this TCP server gets no connections",
        severity="warning",
    )


@pytest.mark.parametrize(
    ("action", "consequence"),
    [("ALLOW", "never matches its TCP connections"), ("DENY", "matches more of them")],
)
def test_http_fields_of_a_rule_for_a_tcp_workload_warn_what_happens(
    action: str, consequence: str
) -> None:
    policy = (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: db}\n"
        f"spec:\n  selector: {{matchLabels: {{app: db}}}}\n  action: {action}\n  rules:\n"
        "  - to: [{operation: {paths: [/admin]}}]\n"
    )
    text, result = load(
        policy,
        workload("db-v1", "db", port=5432, protocol="TCP").replace(
            "  version: v1", "  version: v1\n    app: db"
        ),
    )
    diagnostic = assert_at(
        result, text, "spec.rules[0]", "to:", "only exist in HTTP requests", severity="warning"
    )
    assert "paths" in diagnostic.message and consequence in diagnostic.message


def test_the_tcp_rule_warning_names_every_workload_of_the_service_in_order() -> None:
    policy = (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: db}\n"
        "spec:\n  selector: {matchLabels: {app: db}}\n  rules:\n"
        "  - to: [{operation: {paths: [/admin]}}]\n"
    )
    replicas = [
        workload(name, "db", port=5432, protocol="TCP", version=version).replace(
            f"  version: {version}", f"  version: {version}\n    app: db"
        )
        for name, version in (("db-v2", "v2"), ("db-v1", "v1"))
    ]
    text, result = load(policy, *replicas)
    diagnostic = assert_at(
        result, text, "spec.rules[0]", "to:", "only exist in HTTP requests", severity="warning"
    )
    assert "on Workloads db-v1 (TCP), db-v2 (TCP) this rule never matches their" in (
        diagnostic.message
    )
