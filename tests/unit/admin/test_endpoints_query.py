"""Which service, proxies and endpoint names a ``GET /api/endpoints`` query makes of the mesh,
or which error it answers: pure, on a hand-built view."""

from __future__ import annotations

import pytest

from pilotfish.admin.endpoint_health import (
    EndpointsQuery,
    QueryProblem,
    resolve_endpoints_query,
)
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import MeshConfig, ServicePort
from pilotfish.model.services import Endpoint, MeshView, Service

DEFAULT = "backend.default.svc.cluster.local"
SHOP = "backend.shop.svc.cluster.local"
PORT = (ServicePort(number=9000, name="http"),)
VIEW = MeshView(
    config=MeshConfig(),
    services={DEFAULT: Service(DEFAULT, PORT), SHOP: Service(SHOP, PORT, namespace="shop")},
    endpoints={
        DEFAULT: (
            Endpoint("127.0.0.1", {9000: 41001}, name="backend-0"),
            Endpoint("::1", {9000: 41002}, name="backend-1"),
            Endpoint("127.0.0.2", {9000: 41003}),  # no name: left out of the map
        )
    },
)
NODES = [ProxyNode(id="frontend-0"), ProxyNode(id="backend-0")]


def _resolve(service: str, proxy: str | None = None) -> EndpointsQuery | QueryProblem:
    return resolve_endpoints_query(service, proxy, VIEW, NODES)


def test_every_connected_proxy_is_asked_of_one_service() -> None:
    assert _resolve("backend.default") == EndpointsQuery(
        hostname=DEFAULT,
        nodes=(NODES[1], NODES[0]),
        names={"127.0.0.1:41001": "backend-0", "[::1]:41002": "backend-1"},
        every=False,
    )


def test_a_named_proxy_is_asked_even_if_it_does_not_see_the_service() -> None:
    query = _resolve(SHOP, "frontend-0")
    assert query == EndpointsQuery(SHOP, (NODES[0],), {}, every=True)


@pytest.mark.parametrize(
    ("service", "proxy", "status", "message"),
    [
        ("", None, 400, "service: the name or hostname of a service is required"),
        (
            "nope",
            None,
            404,
            f"service: no service 'nope'; the services are: {DEFAULT}, {SHOP}",
        ),
        ("backend", None, 400, f"service: 'backend' names {DEFAULT}, {SHOP}: say which"),
        (
            "backend.shop",
            "nobody",
            404,
            "proxy: no connected proxy 'nobody'; they are: backend-0, frontend-0",
        ),
    ],
)
def test_a_query_that_names_nothing_says_why(
    service: str, proxy: str | None, status: int, message: str
) -> None:
    assert _resolve(service, proxy) == QueryProblem(status, message)


def test_before_the_first_config_no_service_is_known() -> None:
    problem = resolve_endpoints_query("backend", None, None, NODES)
    assert problem == QueryProblem(404, "service: no service 'backend'; the services are: none yet")
