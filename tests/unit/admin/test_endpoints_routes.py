"""``/api/endpoints`` and ``/api/ejections`` through aiohttp's test client: which service and
proxy a query names, and a proxy that cannot be asked is listed with why, not left out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pilotfish.admin.server import build_admin_app
from pilotfish.agent.ports import free_port
from pilotfish.controller.control_plane import ControlPlane
from pilotfish.model.proxy import ProxyNode

WORKLOADS = """
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {name: backend}
spec: {service: backend, port: 9000, command: [python3, app.py]}
---
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {name: backend, namespace: shop}
spec: {service: backend, port: 9000, command: [python3, app.py]}
"""


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient, ControlPlane]]:  # type: ignore[type-arg]
    (tmp_path / "mesh.yaml").write_text(WORKLOADS)
    control_plane = ControlPlane(tmp_path)
    await control_plane.load_initial_config()
    async with TestClient(TestServer(build_admin_app(control_plane))) as test_client:
        yield test_client, control_plane
    await control_plane.trace_export.stop()


async def test_the_query_names_one_service(client: tuple[TestClient, ControlPlane]) -> None:  # type: ignore[type-arg]
    http, _ = client
    missing = await http.get("/api/endpoints")
    assert missing.status == 400 and "service" in (await missing.json())["error"]
    unknown = await http.get("/api/endpoints", params={"service": "nope"})
    assert unknown.status == 404
    assert "backend.shop.svc.cluster.local" in (await unknown.json())["error"]
    ambiguous = await http.get("/api/endpoints", params={"service": "backend"})
    assert ambiguous.status == 400
    assert "backend.default.svc.cluster.local, backend.shop" in (await ambiguous.json())["error"]
    found = await http.get("/api/endpoints", params={"service": "backend.shop"})
    assert found.status == 200
    assert await found.json() == {"service": "backend.shop.svc.cluster.local", "proxies": []}


async def test_a_proxy_that_cannot_be_asked_is_listed_with_why(
    client: tuple[TestClient, ControlPlane],  # type: ignore[type-arg]
) -> None:
    http, control_plane = client
    control_plane.nodes.connected(ProxyNode(id="gone-0", admin_address=f"127.0.0.1:{free_port()}"))
    query = {"service": "backend.default", "proxy": "nobody"}
    nobody = await http.get("/api/endpoints", params=query)
    assert nobody.status == 404 and "gone-0" in (await nobody.json())["error"]
    body = await (await http.get("/api/endpoints", params={"service": "backend.default"})).json()
    (entry,) = body["proxies"]
    assert entry["proxy"] == "gone-0" and "did not answer" in entry["error"]
    counts = await (await http.get("/api/ejections")).json()
    assert counts["proxies"] == [{"proxy": "gone-0", "ejected": None, "error": entry["error"]}]
