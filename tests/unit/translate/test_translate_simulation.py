"""Synthetic requests pushed through generated route configurations (Istio's simulation idea)."""

from __future__ import annotations

import pytest
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from route_simulation import SimulatedRequest, simulate_request

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.services import MeshView
from pilotfish.translate import MeshTranslator

BACKEND_V1 = "outbound|8080|v1|backend.default.svc.cluster.local"
BACKEND_V2 = "outbound|8080|v2|backend.default.svc.cluster.local"


def outbound_routes(view: MeshView, node: ProxyNode) -> RouteConfiguration:
    (config,) = MeshTranslator(view).resources_for(node).routes
    return config


@pytest.mark.parametrize(
    "host",
    [
        "backend",
        "backend:8080",
        "backend.default.svc.cluster.local",
        "backend.default.svc.cluster.local:8080",
        "BACKEND:8080",
        "backend.default",
        "backend.default:8080",
        "backend.default.svc:8080",
    ],
)
def test_every_name_of_a_service_reaches_it(
    host: str, quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    outcome = simulate_request(
        outbound_routes(quickstart_view, frontend_sidecar), SimulatedRequest(host)
    )

    assert outcome.clusters == ((BACKEND_V1, 90), (BACKEND_V2, 10))


def test_header_match_sends_jason_to_v2(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    request = SimulatedRequest("backend:8080", "/reviews/1", headers={"End-User": "jason"})

    outcome = simulate_request(outbound_routes(quickstart_view, frontend_sidecar), request)

    assert outcome.cluster_names == (BACKEND_V2,)
    assert outcome.route_name == "jason"


def test_other_users_get_the_weighted_split(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    request = SimulatedRequest("backend:8080", "/reviews/1", headers={"end-user": "kim"})

    outcome = simulate_request(outbound_routes(quickstart_view, frontend_sidecar), request)

    assert outcome.route_name == "split"


def test_unknown_host_gets_a_404_naming_the_problem(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    outcome = simulate_request(
        outbound_routes(quickstart_view, frontend_sidecar), SimulatedRequest("bakend:8080")
    )

    assert outcome.status == 404
    assert outcome.clusters == ()
    assert "%REQ(:authority)%" in outcome.body


def test_a_port_the_service_lacks_is_an_unknown_host(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    outcome = simulate_request(
        outbound_routes(quickstart_view, frontend_sidecar), SimulatedRequest("backend:9999")
    )

    assert outcome.status == 404


@pytest.mark.parametrize(
    ("request_", "expected_route", "expected_status"),
    [
        (SimulatedRequest("web", "/old/page"), "old-docs", 308),
        (SimulatedRequest("web", "/healthz"), "health", 200),
        (SimulatedRequest("web", "/healthz/deep"), "decorated", None),
        (SimulatedRequest("web", "/gone/x"), "missing", 503),
        (
            SimulatedRequest("web", "/admin/users?debug=1", "POST", {"x-team": "sre"}),
            "admin",
            None,
        ),
        (
            SimulatedRequest("web", "/admin/users?debug=0", "POST", {"x-team": "sre"}),
            "decorated",
            None,
        ),
        (
            SimulatedRequest("web", "/admin/users?debug=1", "GET", {"x-team": "sre"}),
            "decorated",
            None,
        ),
        (
            SimulatedRequest("web", "/admin/Users?debug=1", "POST", {"x-team": "sre"}),
            "decorated",
            None,
        ),
        (
            SimulatedRequest("web", "/admin/users?debug=1", "POST", {"x-team": "dev"}),
            "decorated",
            None,
        ),
    ],
)
def test_routes_are_tried_in_order_and_all_conditions_must_hold(
    request_: SimulatedRequest,
    expected_route: str,
    expected_status: int | None,
    routing_features_view: MeshView,
    frontend_sidecar: ProxyNode,
) -> None:
    outcome = simulate_request(outbound_routes(routing_features_view, frontend_sidecar), request_)

    assert (outcome.route_name, outcome.status) == (expected_route, expected_status)


def test_a_missing_destination_fails_visibly_with_its_reason(
    routing_features_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    outcome = simulate_request(
        outbound_routes(routing_features_view, frontend_sidecar), SimulatedRequest("web", "/gone")
    )

    assert outcome.status == 503
    assert "nowhere.default.svc.cluster.local is not a known service" in outcome.body


def test_multi_port_service_bare_name_is_port_80(
    routing_features_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    routes = outbound_routes(routing_features_view, frontend_sidecar)

    bare = simulate_request(
        routes, SimulatedRequest("web", "/admin/x?debug=1", "POST", {"x-team": "ops"})
    )
    grpc = simulate_request(
        routes, SimulatedRequest("web:9090", "/admin/x?debug=1", "POST", {"x-team": "ops"})
    )

    assert bare.cluster_names == ("outbound|80||web.default.svc.cluster.local",)
    assert grpc.cluster_names == ("outbound|9090||web.default.svc.cluster.local",)


def test_gateway_routes_by_path_and_server_hosts(
    gateway_view: MeshView, ingress_gateway: ProxyNode
) -> None:
    by_name = {
        config.name: config
        for config in MeshTranslator(gateway_view).resources_for(ingress_gateway).routes
    }
    frontend = ("outbound|8080||frontend.default.svc.cluster.local",)
    backend = ("outbound|8080||backend.default.svc.cluster.local",)

    assert set(by_name) == {"http.8000", "http.8001"}
    assert (
        simulate_request(by_name["http.8000"], SimulatedRequest("x.io", "/login")).cluster_names
        == frontend
    )
    assert (
        simulate_request(by_name["http.8000"], SimulatedRequest("x.io", "/login/2")).status == 404
    )
    assert (
        simulate_request(by_name["http.8000"], SimulatedRequest("x.io", "/api/v")).cluster_names
        == backend
    )
    assert (
        simulate_request(
            by_name["http.8001"], SimulatedRequest("shop.example.com:8001")
        ).cluster_names
        == frontend
    )
    assert (
        simulate_request(by_name["http.8001"], SimulatedRequest("blocked.example.com")).status
        == 404
    )
