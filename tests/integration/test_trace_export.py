"""Spans posted to the admin API reach real HTTP collectors (aiohttp servers of the test's own
on free loopback ports), as Zipkin JSON and as OTLP/HTTP JSON; a dead collector costs nothing
but its own spans and one log line."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pilotfish.admin.server import build_admin_app
from pilotfish.agent.ports import free_port
from pilotfish.controller.control_plane import ControlPlane
from pilotfish.controller.trace_export import TraceExport, TraceExportSettings
from pilotfish.model.telemetry import TraceExporter
from pilotfish.telemetry.traces import parse_span

TRACE = "463ac35c9f6413ad48485a3953bb6124"


def span(n: int, service: str = "frontend") -> dict[str, object]:
    return {
        "traceId": TRACE,
        "id": f"{n + 1:016x}",
        "name": "get /",
        "kind": "SERVER",
        "timestamp": int(time.time() * 1_000_000),
        "duration": 1500,
        "localEndpoint": {"serviceName": service},
        "tags": {"http.status_code": "200"},
    }


@dataclass
class Collector:
    url_base: str
    bodies: dict[str, list[object]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    status: int = 200


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    port = free_port()
    found = Collector(f"http://127.0.0.1:{port}")

    async def receive(request: web.Request) -> web.Response:
        found.bodies.setdefault(request.path, []).append(json.loads(await request.read()))
        found.arrived.set()
        return web.Response(status=found.status)

    app = web.Application()
    app.router.add_post("/api/v2/spans", receive)
    app.router.add_post("/v1/traces", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield found
    await runner.cleanup()


async def wait_for(collector: Collector, path: str, spans: int) -> list[object]:
    async def enough() -> None:
        while sum(len(_spans_in(b)) for b in collector.bodies.get(path, [])) < spans:
            collector.arrived.clear()
            await collector.arrived.wait()

    await asyncio.wait_for(enough(), 10)
    return collector.bodies[path]


def _spans_in(body: object) -> list[object]:
    if isinstance(body, list):
        return body
    assert isinstance(body, dict)
    return [s for r in body["resourceSpans"] for ss in r["scopeSpans"] for s in ss["spans"]]


async def test_posted_spans_reach_a_zipkin_and_an_otlp_collector(
    tmp_path: Path, collector: Collector
) -> None:
    exporters = (
        TraceExporter("zipkin", "zipkin", collector.url_base + "/api/v2/spans"),
        TraceExporter("otel", "opentelemetry", collector.url_base + "/v1/traces"),
    )
    control_plane = ControlPlane(tmp_path)
    control_plane.trace_export = TraceExport(lambda: exporters)
    async with TestClient(TestServer(build_admin_app(control_plane))) as client:
        batch = [span(1, "gateway"), span(2, "frontend"), span(3, "frontend")]
        assert (await client.post("/api/v2/spans", json=batch)).status == 202
        zipkin = await wait_for(collector, "/api/v2/spans", 3)
        otlp = await wait_for(collector, "/v1/traces", 3)
    await control_plane.trace_export.stop()
    assert [s["id"] for b in zipkin for s in _spans_in(b)] == [f"{n:016x}" for n in (2, 3, 4)]  # type: ignore[index]
    assert len(otlp) == 1
    resources = otlp[0]["resourceSpans"]  # type: ignore[index]
    services = [r["resource"]["attributes"][0]["value"]["stringValue"] for r in resources]
    assert services == ["gateway", "frontend"]
    assert resources[1]["scopeSpans"][0]["spans"][0]["traceId"] == TRACE


async def test_the_exporters_are_read_anew_on_each_batch(collector: Collector) -> None:
    configured: list[TraceExporter] = []
    export = TraceExport(lambda: configured)
    export.offer([parse_span(span(1))])
    configured.append(TraceExporter("z", "zipkin", collector.url_base + "/api/v2/spans"))
    export.offer([parse_span(span(2))])
    bodies = await wait_for(collector, "/api/v2/spans", 1)
    await export.stop()
    assert [s["id"] for b in bodies for s in _spans_in(b)] == [f"{3:016x}"]  # type: ignore[index]


async def test_a_dead_collector_is_logged_once_a_minute_and_a_full_queue_drops_and_counts(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    dead = TraceExporter("dead", "zipkin", f"http://127.0.0.1:{dead_port}/api/v2/spans")
    alive = TraceExporter("alive", "opentelemetry", collector.url_base + "/v1/traces")
    export = TraceExport(lambda: (dead, alive), TraceExportSettings(queue_spans=4, batch_spans=2))
    with caplog.at_level(logging.WARNING, logger="pilotfish.traces"):
        export.offer([parse_span(span(n)) for n in range(6)])  # 2 over the queue's bound
        await wait_for(collector, "/v1/traces", 4)

        async def dead_gave_up() -> None:
            while export.status_json()[0]["spans_failed"] != 4:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(dead_gave_up(), 10)
    status = {str(entry["name"]): entry for entry in export.status_json()}
    await export.stop()
    assert status["dead"]["spans_dropped"] == 2
    assert status["dead"]["spans_failed"] == 4
    assert status["alive"]["spans_dropped"] == 2
    assert status["alive"]["spans_sent"] == 4
    dead_lines = [r.getMessage() for r in caplog.records if "dead" in r.getMessage()]
    # two failed batches, one line: the second failure came within the minute
    assert len(dead_lines) == 1, dead_lines
    assert f"127.0.0.1:{dead_port}" in dead_lines[0]
    assert "Cannot connect" in dead_lines[0]
