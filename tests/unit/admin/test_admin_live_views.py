"""The live-view routes on a control plane whose hub is fed records by the test."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from tests.request_records import both_sides, record
from tests.waiting import eventually

from pilotfish.admin.server import build_admin_app
from pilotfish.controller.control_plane import ControlPlane
from pilotfish.model.resources import MeshConfig, MeshSettings
from pilotfish.model.telemetry import TelemetrySettings

BACKEND = "backend.default.svc.cluster.local"


@pytest.fixture
def control_plane(tmp_path: Path) -> ControlPlane:
    return ControlPlane(tmp_path)


@pytest.fixture
async def client(control_plane: ControlPlane) -> AsyncIterator[TestClient[object, object]]:
    async with TestClient(TestServer(build_admin_app(control_plane))) as test_client:
        yield test_client  # type: ignore[misc]


async def read_line(response: ClientResponse) -> bytes:
    return await asyncio.wait_for(response.content.readline(), 10)


async def get_json(client: TestClient[object, object], path: str) -> dict[str, object]:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert isinstance(body, dict)
    return body


async def test_stat_counts_each_request_once_in_the_api_shape(
    control_plane: ControlPlane, client: TestClient[object, object]
) -> None:
    now = time.time()
    for code in (200, 200, 200, 500):
        control_plane.telemetry.ingest(both_sides(at=now, code=code, duration_ms=10.0))
    body = await get_json(client, "/api/stat?by=service&window=60")
    assert body == {
        "window_seconds": 60,
        "by": "service",
        "rows": [
            {
                "name": BACKEND,
                "namespace": "default",
                "requests": 4,
                "rps": round(4 / 60, 3),
                "success_rate": 0.75,
                "p50_ms": 10.0,
                "p95_ms": 10.0,
                "p99_ms": 10.0,
            }
        ],
    }
    by_workload = await get_json(client, "/api/stat?by=workload&window=30s")
    assert [r["name"] for r in by_workload["rows"]] == ["backend"]  # type: ignore[union-attr]
    assert by_workload["window_seconds"] == 30


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/api/stat?by=pod", "by: 'pod' must be service or workload"),
        ("/api/stat?window=abc", "window: 'abc' is not a whole number"),
        ("/api/graph?window=601", "window: 601 is not between 1 and 600"),
        ("/api/series", "service: the hostname of a service is required"),
        ("/api/logs?format=xml", "format: 'xml' must be text or json"),
        ("/api/tap?errors=maybe", "errors: 'maybe' must be 0 or 1"),
    ],
)
async def test_bad_queries_are_refused_naming_the_parameter(
    client: TestClient[object, object], path: str, message: str
) -> None:
    response = await client.get(path)
    assert response.status == 400
    assert (await response.json()) == {"error": message}


async def test_graph_and_series(
    control_plane: ControlPlane, client: TestClient[object, object]
) -> None:
    control_plane.telemetry.ingest(both_sides(at=time.time(), duration_ms=7.0))
    graph = await get_json(client, "/api/graph?window=60")
    assert graph["edges"] == [
        {
            "source": "workload:default/frontend",
            "target": f"service:{BACKEND}",
            "requests": 1,
            "rps": round(1 / 60, 3),
            "success_rate": 1.0,
            "p99_ms": 7.0,
        }
    ]
    assert {n["id"] for n in graph["nodes"]} == {  # type: ignore[union-attr]
        "workload:default/frontend",
        f"service:{BACKEND}",
        "workload:default/backend",
    }
    series = await get_json(client, f"/api/series?service={BACKEND}&minutes=15")
    assert (series["service"], series["step_seconds"]) == (BACKEND, 10)
    points = series["points"]
    assert isinstance(points, list) and len(points) == 90
    assert sum(p["requests"] for p in points) == 1
    assert points[-1]["requests"] == 1


async def test_tap_streams_the_records_its_filter_lets_through_as_they_come(
    control_plane: ControlPlane, client: TestClient[object, object]
) -> None:
    response = await client.get("/api/tap?path=/api&limit=2")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    await eventually(lambda: control_plane.tap.subscribers, "the tap's subscription", timeout=10)
    first = record(path="/api/one")
    control_plane.telemetry.ingest([record(path="/other"), first])
    line = json.loads(await read_line(response))
    assert line == first.to_json()
    control_plane.telemetry.ingest([record(path="/api/two", code=503, flags=("UF",))])
    second = json.loads(await read_line(response))
    assert (second["path"], second["response_flag_words"]) == (
        "/api/two",
        ["upstream connection failure"],
    )
    assert await response.content.read() == b""  # the limit ends the stream
    await eventually(lambda: not control_plane.tap.subscribers, "the end of the tap", timeout=10)


async def test_a_tap_ends_when_its_client_goes_away(
    control_plane: ControlPlane, client: TestClient[object, object]
) -> None:
    response = await client.get("/api/tap")
    await eventually(lambda: control_plane.tap.subscribers, "the tap's subscription", timeout=10)
    response.close()
    await eventually(lambda: not control_plane.tap.subscribers, "the end of the tap", timeout=10)


async def test_logs_of_one_proxy_as_text_and_json(
    control_plane: ControlPlane, client: TestClient[object, object]
) -> None:
    good = record(proxy="frontend-0", path="/good")
    bad = record(proxy="frontend-0", path="/bad", code=503, flags=("UH",))
    control_plane.telemetry.ingest([good, record(proxy="backend-0"), bad])
    response = await client.get("/api/logs?proxy=frontend-0")
    assert response.status == 200
    lines = (await response.text()).splitlines()
    assert len(lines) == 2
    assert '"GET /good -" 200 -' in lines[0]
    assert lines[1].endswith("flags: UH=no healthy upstream")
    response = await client.get("/api/logs?proxy=frontend-0&format=json&limit=1")
    entries = [json.loads(line) for line in (await response.text()).splitlines()]
    assert [e["path"] for e in entries] == ["/bad"]
    every = await client.get("/api/logs")
    assert len((await every.text()).splitlines()) == 3


async def test_logs_of_an_unknown_proxy_name_the_known_ones(
    control_plane: ControlPlane, client: TestClient[object, object]
) -> None:
    control_plane.telemetry.ingest([record(proxy="frontend-0")])
    response = await client.get("/api/logs?proxy=nope")
    assert response.status == 404
    assert (await response.json()) == {"error": "no proxy 'nope'; the proxies are: frontend-0"}


async def test_logs_follow_sends_the_recent_lines_then_new_ones(
    control_plane: ControlPlane, client: TestClient[object, object]
) -> None:
    control_plane.telemetry.ingest([record(proxy="frontend-0", path="/before")])
    response = await client.get("/api/logs?proxy=frontend-0&follow=1")
    assert "/before" in (await read_line(response)).decode()
    await eventually(lambda: control_plane.tap.subscribers, "the tap's subscription", timeout=10)
    later = record(proxy="frontend-0", path="/after")
    elsewhere = replace(later, proxy="backend-0", path="/elsewhere")
    control_plane.telemetry.ingest([elsewhere, later])
    assert '"GET /after -"' in (await read_line(response)).decode()
    response.close()


async def test_logs_are_json_by_default_when_the_mesh_logs_json(
    control_plane: ControlPlane, client: TestClient[object, object]
) -> None:
    json_logs = TelemetrySettings(access_log_encoding="JSON")
    control_plane.controller.apply_config(MeshConfig(mesh=MeshSettings(telemetry=json_logs)), ())
    control_plane.telemetry.ingest([record(proxy="frontend-0", path="/j")])
    response = await client.get("/api/logs")
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    assert json.loads(await response.text())["path"] == "/j"
    text = await client.get("/api/logs?format=text")
    assert (await text.text()).startswith("[")


async def test_text_logs_follow_the_meshs_access_log_format(
    control_plane: ControlPlane, client: TestClient[object, object]
) -> None:
    own = TelemetrySettings(access_log_format="%REQ(:PATH)% -> %RESPONSE_CODE%\n")
    control_plane.controller.apply_config(MeshConfig(mesh=MeshSettings(telemetry=own)), ())
    control_plane.telemetry.ingest([record(proxy="frontend-0", path="/own", code=503)])
    response = await client.get("/api/logs")
    assert await response.text() == "/own -> 503\n"
