"""`pilotfish up` with traffic mirroring, CORS, a delegate and a route chosen by its caller."""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping

import pytest
from tests.integration.mesh_harness import (
    RunningMesh,
    echo_workload,
    free_port,
    gateway,
    running_mesh,
    wait_until,
    write_yaml,
)

pytestmark = pytest.mark.integration

ROUTING = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /team/}}]
    delegate: {name: team-routes}
  - match: [{uri: {prefix: /shadow/}}]
    rewrite: {uri: /}
    route: [{destination: {host: shadow}}]
  - match: [{uri: {prefix: /other/}}]
    rewrite: {uri: /}
    route: [{destination: {host: other}}]
  - corsPolicy:
      allowOrigins: [{exact: "https://app.example"}]
      allowMethods: [GET]
      allowHeaders: [x-token]
      maxAge: 10m
    route: [{destination: {host: frontend}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: team-routes}
spec:
  http:
  - match: [{uri: {prefix: /team/v2}}]
    rewrite: {uri: /}
    route: [{destination: {host: backend, subset: v2}}]
  - rewrite: {uri: /}
    route: [{destination: {host: backend, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend]
  http:
  - match: [{sourceLabels: {app: other}}]
    route: [{destination: {host: backend, subset: v2}}]
  - route: [{destination: {host: backend, subset: v1}}]
    mirror: {host: shadow}
    mirrorPercentage: {value: 100}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("routing-features")
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(gateway_port)
        + echo_workload("frontend", "frontend", 8080, version="f1")
        + echo_workload("other", "other", 8080, version="o1")
        + echo_workload("shadow", "shadow", 8080, version="s1")
        + echo_workload("backend-v1", "backend", 8080, version="v1")
        + echo_workload("backend-v2", "backend", 8080, version="v2")
        + ROUTING,
    )
    with running_mesh(directory, gateway_port) as running:
        running.wait_serving("/")
        running.wait_endpoints("backend.default.svc.cluster.local", 2)
        running.wait_synced()
        yield running


def backend_version_seen_by(mesh: RunningMesh, caller_prefix: str, path: str = "/") -> str:
    reply = mesh.get(f"{caller_prefix}/call?url=http://backend:8080{path}")
    assert reply.status == 200, reply.body
    answer = reply.body["answer"]
    assert isinstance(answer, dict)
    return str(answer["version"])


def test_source_labels_route_is_taken_by_one_caller_and_not_the_other(mesh: RunningMesh) -> None:
    from_other = {backend_version_seen_by(mesh, "/other") for _ in range(10)}
    from_frontend = {backend_version_seen_by(mesh, "") for _ in range(10)}

    assert from_other == {"v2"}
    assert from_frontend == {"v1"}


def test_mirror_gets_a_copy_and_the_caller_the_primary_answer(mesh: RunningMesh) -> None:
    token = f"/mirrored-{uuid.uuid4().hex}"

    assert backend_version_seen_by(mesh, "", token) == "v1"

    def copy_arrived() -> dict[str, object] | None:
        seen = mesh.get("/shadow/seen").body.get("seen", [])
        assert isinstance(seen, list)
        return next((entry for entry in seen if entry["path"] == token), None)

    copy = wait_until(copy_arrived, 15, f"the shadow to receive {token}")
    # Envoy marks a mirrored request by suffixing the host name of its Host.
    assert copy["host"] == "backend-shadow:8080"


def test_a_caller_the_mirror_route_does_not_apply_to_sends_no_copy(mesh: RunningMesh) -> None:
    token = f"/not-mirrored-{uuid.uuid4().hex}"
    assert backend_version_seen_by(mesh, "/other", token) == "v2"
    # A copy that was sent arrives before a later request through the same proxy does.
    marker = f"/mirrored-{uuid.uuid4().hex}"
    assert backend_version_seen_by(mesh, "", marker) == "v1"

    def paths_once_marker_arrived() -> list[str] | None:
        seen = mesh.get("/shadow/seen").body.get("seen", [])
        assert isinstance(seen, list)
        paths = [str(entry["path"]) for entry in seen]
        return paths if marker in paths else None

    assert token not in wait_until(paths_once_marker_arrived, 15, f"the shadow to see {marker}")


def preflight(mesh: RunningMesh, origin: str) -> tuple[int, Mapping[str, str]]:
    request = urllib.request.Request(
        mesh.gateway_url + "/anything",
        method="OPTIONS",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-token",
        },
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


def test_cors_preflight_is_answered_by_the_gateway(mesh: RunningMesh) -> None:
    status, headers = preflight(mesh, "https://app.example")

    assert status == 200
    assert headers["access-control-allow-origin"] == "https://app.example"
    assert headers["access-control-allow-methods"] == "GET"
    assert headers["access-control-allow-headers"] == "x-token"
    assert headers["access-control-max-age"] == "600"


def test_a_preflight_from_another_origin_gets_no_cors_headers(mesh: RunningMesh) -> None:
    # unmatchedPreflights defaults to FORWARD: the app answers (echo has no OPTIONS: 501).
    status, headers = preflight(mesh, "https://evil.example")

    assert "access-control-allow-origin" not in headers
    assert status == 501


def test_delegate_routes_serve_the_root_prefix(mesh: RunningMesh) -> None:
    v2 = mesh.get("/team/v2/x")
    v1 = mesh.get("/team/x")

    assert (v2.status, v2.body["version"], v2.body["path"]) == (200, "v2", "/x")
    assert (v1.status, v1.body["version"], v1.body["path"]) == (200, "v1", "/x")
