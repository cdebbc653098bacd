"""Cross-resource rules, checked over several files loaded as one folder."""

from __future__ import annotations

import textwrap

import pytest
from load_cases import BOOKINFO_REGISTRY, REVIEWS_RULE, documents, position_of, workload

from pilotfish.load import LoadResult, load_texts
from pilotfish.model.diagnostics import Diagnostic

REGISTRY = documents(*BOOKINFO_REGISTRY)


def virtual_service(name: str, routes: str, *, hosts: str = "[reviews]", extra: str = "") -> str:
    return (
        textwrap.dedent(
            f"""\
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata:
              name: {name}
            spec:
              hosts: {hosts}
            """
        )
        + extra
        + "  http:\n"
        + textwrap.indent(textwrap.dedent(routes), "  ")
    )


SIMPLE_ROUTE = """\
- route:
  - destination:
      host: reviews
"""


def load_files(**files: str) -> LoadResult:
    return load_texts([(f"{name}.yaml", text) for name, text in files.items()])


def only(result: LoadResult, field: str, file: str) -> Diagnostic:
    matching = [d for d in result.diagnostics if d.field == field and d.file == file]
    assert len(matching) == 1, result.diagnostics
    return matching[0]


def assert_located(diagnostic: Diagnostic, text: str, needle: str, occurrence: int = 1) -> None:
    assert (diagnostic.line, diagnostic.col) == position_of(text, needle, occurrence)


def test_duplicate_names_are_reported_at_the_second() -> None:
    first = virtual_service("reviews", SIMPLE_ROUTE)
    second = virtual_service("reviews", SIMPLE_ROUTE, hosts="[ratings]").replace(
        "host: reviews", "host: ratings"
    )
    result = load_files(a=first, b=second, registry=REGISTRY)
    diagnostic = only(result, "metadata.name", "b.yaml")
    assert_located(diagnostic, second, "name: reviews")
    assert 'duplicate VirtualService "default/reviews"' in diagnostic.message
    assert "a.yaml:4:3" in diagnostic.message
    assert result.config is None


def test_same_name_in_another_namespace_or_kind_is_fine() -> None:
    other_namespace = (
        virtual_service("reviews", SIMPLE_ROUTE, hosts="[ratings]")
        .replace("name: reviews", "name: reviews\n  namespace: other")
        .replace("host: reviews", "host: ratings.default.svc.cluster.local")
    )
    result = load_files(
        a=virtual_service("reviews", SIMPLE_ROUTE),
        b=other_namespace,
        rule=REVIEWS_RULE,
        registry=REGISTRY,
    )
    assert [d for d in result.diagnostics if d.severity == "error"] == []


def test_two_virtual_services_for_one_host_in_the_mesh() -> None:
    second = virtual_service("reviews-too", SIMPLE_ROUTE, hosts="[ratings, reviews]")
    result = load_files(a=virtual_service("reviews", SIMPLE_ROUTE), b=second, registry=REGISTRY)
    diagnostic = only(result, "spec.hosts[1]", "b.yaml")
    assert_located(diagnostic, second, "reviews]")
    assert 'host "reviews" on the mesh is already routed by VirtualService default/reviews' in (
        diagnostic.message
    )
    assert "Istio merges them only on gateways" in diagnostic.message


def test_short_and_qualified_host_names_are_the_same_host() -> None:
    second = virtual_service(
        "reviews-too", SIMPLE_ROUTE, hosts="[reviews.default.svc.cluster.local]"
    )
    result = load_files(a=virtual_service("reviews", SIMPLE_ROUTE), b=second, registry=REGISTRY)
    only(result, "spec.hosts[0]", "b.yaml")


GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"""


def test_one_host_twice_on_a_gateway_is_merged_and_unreachable_routes_are_named() -> None:
    mesh = virtual_service("mesh", SIMPLE_ROUTE)
    edge = virtual_service("edge", SIMPLE_ROUTE, extra="  gateways: [ingress]\n")
    edge_again = virtual_service(
        "edge-again", SIMPLE_ROUTE, extra="  gateways: [default/ingress]\n"
    )
    result = load_files(a=mesh, b=edge, c=edge_again, gw=GATEWAY, registry=REGISTRY)
    assert [d for d in result.diagnostics if d.severity == "error"] == []
    diagnostic = only(result, "spec.hosts[0]", "c.yaml")
    assert diagnostic.severity == "warning"
    assert "on gateway default/ingress" in diagnostic.message
    assert "default/edge, one of whose routes takes every request" in diagnostic.message
    assert result.config is not None


def test_gateway_references_must_exist() -> None:
    edge = virtual_service(
        "edge", SIMPLE_ROUTE, extra="  gateways: [mesh, ingres, other/ingress]\n"
    )
    result = load_files(a=edge, gw=GATEWAY, registry=REGISTRY)
    first = only(result, "spec.gateways[1]", "a.yaml")
    assert_located(first, edge, "ingres,")
    assert first.message == 'unknown Gateway "default/ingres"'
    assert only(result, "spec.gateways[2]", "a.yaml").message == 'unknown Gateway "other/ingress"'
    assert result.config is None


def test_two_destination_rules_for_one_host() -> None:
    second = REVIEWS_RULE.replace("name: reviews", "name: reviews-too").replace(
        "host: reviews", "host: reviews.default.svc.cluster.local"
    )
    result = load_files(a=REVIEWS_RULE, b=second, registry=REGISTRY)
    diagnostic = only(result, "spec.host", "b.yaml")
    assert_located(diagnostic, second, "host:")
    assert "already has DestinationRule default/reviews (a.yaml:6:3)" in diagnostic.message


def test_destination_rule_for_an_unknown_host_is_only_a_warning() -> None:
    rule = REVIEWS_RULE.replace("host: reviews", "host: nowhere")
    result = load_files(a=rule, registry=REGISTRY)
    diagnostic = only(result, "spec.host", "a.yaml")
    assert diagnostic.severity == "warning"
    assert_located(diagnostic, rule, "host:")
    assert result.config is not None


def test_unknown_destination_host() -> None:
    routes = "- route:\n  - destination:\n      host: reviewz\n"
    service = virtual_service("reviews", routes)
    result = load_files(a=service, registry=REGISTRY)
    diagnostic = only(result, "spec.http[0].route[0].destination.host", "a.yaml")
    assert_located(diagnostic, service, "host: reviewz")
    assert diagnostic.message == 'unknown service "reviewz"'
    assert result.config is None


def test_destination_hosts_may_be_fully_qualified() -> None:
    routes = "- route:\n  - destination:\n      host: reviews.default.svc.cluster.local\n"
    result = load_files(a=virtual_service("reviews", routes), registry=REGISTRY)
    assert result.diagnostics == ()


def test_undefined_subsets() -> None:
    routes = textwrap.dedent(
        """\
        - route:
          - destination: {host: reviews, subset: v3}
        - route:
          - destination: {host: ratings, subset: v1}
        """
    )
    service = virtual_service("reviews", routes)
    result = load_files(a=service, rule=REVIEWS_RULE, registry=REGISTRY)
    in_rule = only(result, "spec.http[0].route[0].destination.subset", "a.yaml")
    assert_located(in_rule, service, "subset: v3")
    assert in_rule.message == (
        'subset "v3" is not defined in DestinationRule default/reviews (it has v1, v2)'
    )
    no_rule = only(result, "spec.http[1].route[0].destination.subset", "a.yaml")
    assert 'no DestinationRule for host "ratings"' in no_rule.message


def test_weights_are_relative_and_warned_about_unless_they_sum_to_100() -> None:
    routes = textwrap.dedent(
        """\
        - route:
          - destination: {host: reviews, subset: v1}
            weight: 90
          - destination: {host: reviews, subset: v2}
            weight: 20
        - route:
          - destination: {host: reviews, subset: v1}
            weight: 100
          - destination: {host: reviews, subset: v2}
        - route:
          - destination: {host: reviews, subset: v1}
            weight: 50
        - route:
          - destination: {host: reviews, subset: v1}
            weight: 550
          - destination: {host: reviews, subset: v2}
            weight: 500
        - route:
          - destination: {host: reviews, subset: v1}
          - destination: {host: reviews, subset: v2}
            weight: 0
        """
    )
    service = virtual_service("reviews", routes)
    result = load_files(a=service, rule=REVIEWS_RULE, registry=REGISTRY)
    over = only(result, "spec.http[0].route", "a.yaml")
    assert_located(over, service, "route:", 1)
    assert over.severity == "warning"
    assert over.message == (
        "weights sum to 110, not 100 (an omitted weight counts as 0): "
        "traffic is split in proportion (81.82%, 18.18%)"
    )
    # Istio's documented rule: an omitted weight is 0 when there are several destinations;
    # a lone destination gets everything whatever its weight.
    assert not [d for d in result.diagnostics if d.field.startswith("spec.http[1]")]
    assert not [d for d in result.diagnostics if d.field.startswith("spec.http[2]")]
    relative = only(result, "spec.http[3].route", "a.yaml")
    assert (relative.severity, "(52.38%, 47.62%)" in relative.message) == ("warning", True)
    nothing = only(result, "spec.http[4].route", "a.yaml")
    assert (nothing.severity, nothing.message) == (
        "error",
        "weights sum to 0: set a weight on the destinations that should get traffic",
    )
    assert result.config is None


SERVICE_ENTRY = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  resolution: DNS
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 8080, name: admin, protocol: HTTP}
"""


def test_destination_ports_must_exist_and_be_chosen_when_several() -> None:
    routes = textwrap.dedent(
        """\
        - route:
          - destination: {host: api.example.com, port: {number: 81}}
        - route:
          - destination: {host: api.example.com}
        - route:
          - destination: {host: api.example.com, port: {number: 8080}}
        """
    )
    service = virtual_service("api", routes, hosts="[api.example.com]")
    result = load_files(a=service, entry=SERVICE_ENTRY)
    wrong = only(result, "spec.http[0].route[0].destination.port.number", "a.yaml")
    assert_located(wrong, service, "number: 81")
    assert wrong.message == 'service "api.example.com" has no port 81 (it has 80, 8080)'
    missing = only(result, "spec.http[1].route[0].destination", "a.yaml")
    assert_located(missing, service, "destination", 2)
    assert "several HTTP ports (80, 8080); set port.number" in missing.message
    assert len([d for d in result.diagnostics if d.severity == "error"]) == 2


@pytest.mark.parametrize(
    ("other", "ambiguous"),
    [("HTTPS", False), ("TLS", False), ("TCP", False), ("GRPC", True), ("HTTP2", True)],
)
def test_only_http_ports_make_a_destination_without_port_ambiguous(
    other: str, ambiguous: bool
) -> None:
    """Istio routes HTTP on the port the request came in on; TCP and TLS ports never take
    HTTP routes, so an entry with one HTTP port (the common 80 + 443) needs no port.number."""
    routes = "- route:\n  - destination: {host: api.example.com}\n"
    service = virtual_service("api", routes, hosts="[api.example.com]")
    entry = SERVICE_ENTRY.replace("name: admin, protocol: HTTP", f"name: other, protocol: {other}")
    result = load_files(a=service, entry=entry)
    errors = [d.message for d in result.diagnostics if d.severity == "error"]
    assert errors == (
        ['service "api.example.com" has several HTTP ports (80, 8080); set port.number']
        if ambiguous
        else []
    )


@pytest.mark.parametrize("kind", ["tcp", "tls"])
@pytest.mark.parametrize(("first", "second"), [("TCP", "TCP"), ("TLS", "TCP"), ("HTTP", "TLS")])
@pytest.mark.parametrize("port", ["", ", port: {number: 8080}"])
def test_a_tcp_or_tls_destination_needs_a_port_when_the_service_has_several(
    kind: str, first: str, second: str, port: str
) -> None:
    """Any port may take a tcp or tls route, so (as Istio's analyzer says) a service of
    several ports is ambiguous, whatever their protocols."""
    match = "  - match: [{sniHosts: [api.example.com]}]\n" if kind == "tls" else "  - \n"
    service = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: api}\n"
        f"spec:\n  hosts: [api.example.com]\n  {kind}:\n{match.rstrip()}\n"
        f"    route: [{{destination: {{host: api.example.com{port}}}}}]\n"
    ).replace("  - \n    route", "  - route")
    entry = SERVICE_ENTRY.replace("name: http, protocol: HTTP", f"name: first, protocol: {first}")
    entry = entry.replace("name: admin, protocol: HTTP", f"name: other, protocol: {second}")
    result = load_files(a=service, entry=entry)
    errors = [d for d in result.diagnostics if d.severity == "error"]
    if port:
        assert errors == []
    else:
        assert [(d.field, d.message) for d in errors] == [
            (
                f"spec.{kind}[0].route[0].destination",
                'service "api.example.com" has several ports (80, 8080); set port.number',
            )
        ]


def test_workloads_of_one_service_agree_on_port_and_protocol() -> None:
    odd = workload("reviews-v4", "reviews", port=9090, protocol="GRPC", version="v4")
    result = load_files(registry=REGISTRY, odd=odd)
    port = only(result, "spec.port", "odd.yaml")
    assert_located(port, odd, "port:")
    assert "served on port 9080 by Workload default/reviews-v1" in port.message
    protocol = only(result, "spec.protocol", "odd.yaml")
    assert "protocol HTTP" in protocol.message
    assert result.config is None


def test_a_clean_folder_produces_the_config() -> None:
    result = load_files(
        a=virtual_service("reviews", SIMPLE_ROUTE), rule=REVIEWS_RULE, registry=REGISTRY
    )
    assert result.diagnostics == ()
    assert result.config is not None
    assert len(result.config.workloads) == 6
    assert {w.meta.source.file for w in result.config.workloads} == {"registry.yaml"}


def test_cross_resource_checks_wait_for_yaml_syntax_to_be_fixed() -> None:
    service = virtual_service("reviews", "- route:\n  - destination: {host: nowhere}\n")
    result = load_files(a=service, broken="kind: [unclosed\n")
    assert [d.file for d in result.diagnostics] == ["broken.yaml"]
