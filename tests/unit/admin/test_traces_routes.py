"""Zipkin's v2 API on the admin app, through aiohttp's test client (no Envoy here)."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pilotfish.admin.server import build_admin_app
from pilotfish.controller.control_plane import ControlPlane
from pilotfish.telemetry.zipkin_proto import ListOfSpans

TRACE = "463ac35c9f6413ad48485a3953bb6124"


def span(span_id: str, service: str, **fields: object) -> dict[str, object]:
    now_us = int(time.time() * 1_000_000)
    base: dict[str, object] = {
        "traceId": TRACE,
        "id": span_id,
        "name": f"{service} call",
        "kind": "SERVER",
        "timestamp": now_us - 10_000,
        "duration": 4000,
        "localEndpoint": {"serviceName": service},
        "tags": {"http.status_code": "200"},
    }
    base.update(fields)
    return base


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    control_plane = ControlPlane(tmp_path)
    async with TestClient(TestServer(build_admin_app(control_plane))) as test_client:
        yield test_client
    await control_plane.trace_export.stop()


async def test_posted_spans_are_accepted_like_zipkin_and_read_back_by_trace_id(
    client: TestClient,  # type: ignore[type-arg]
) -> None:
    batch = [
        span("a" * 16, "gateway", kind="CLIENT", remoteEndpoint={"serviceName": "frontend"}),
        span("b" * 16, "frontend", parentId="a" * 16),
    ]
    response = await client.post("/api/v2/spans", json=batch)
    assert response.status == 202
    response = await client.get(f"/api/v2/trace/{TRACE}")
    assert response.status == 200
    spans = await response.json()
    assert [s["id"] for s in spans] == ["a" * 16, "b" * 16]
    assert spans[1]["parentId"] == "a" * 16
    # the 64-bit form of the id finds it too, as in Zipkin
    assert len(await (await client.get(f"/api/v2/trace/{TRACE[16:]}")).json()) == 2
    assert (await client.get(f"/api/v2/trace/{'f' * 32}")).status == 404
    assert (await client.get("/api/v2/trace/nope")).status == 404


async def test_a_gzip_body_is_read(client: TestClient) -> None:  # type: ignore[type-arg]
    body = gzip.compress(json.dumps([span("c" * 16, "backend")]).encode())
    response = await client.post(
        "/api/v2/spans",
        data=body,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert response.status == 202
    assert await (await client.get("/api/v2/services")).json() == ["backend"]


async def test_a_bad_span_is_named_in_a_400_and_the_rest_of_its_batch_is_kept(
    client: TestClient,  # type: ignore[type-arg]
) -> None:
    batch = [span("a" * 16, "gateway"), span("not-hex", "frontend"), {"traceId": 5}]
    response = await client.post("/api/v2/spans", json=batch)
    assert response.status == 400
    text = await response.text()
    assert "span 1 of the batch: id:" in text
    assert "2 of 3 spans refused" in text
    assert await (await client.get("/api/v2/services")).json() == ["gateway"]
    stats = await (await client.get("/api/traces/stats")).json()
    assert stats["counts"]["spans_refused"] == 2
    assert stats["counts"]["spans_accepted"] == 1
    assert (stats["traces"], stats["spans"]) == (1, 1)
    assert (
        await client.post("/api/v2/spans", data=b"{", headers={"content-type": "application/json"})
    ).status == 400
    assert (await client.post("/api/v2/spans", json={"traceId": TRACE})).status == 400
    protobuf = await client.post(
        "/api/v2/spans", data=b"\xff\xff", headers={"content-type": "application/x-protobuf"}
    )
    assert protobuf.status == 400
    assert "ListOfSpans" in await protobuf.text()
    thrift = await client.post(
        "/api/v2/spans", data=b"\x0c", headers={"content-type": "application/x-thrift"}
    )
    assert thrift.status == 415


async def test_spans_of_any_other_content_type_are_refused_naming_the_accepted_ones(
    client: TestClient,  # type: ignore[type-arg]
) -> None:
    # text/plain is what a cross-site page can post without a CORS preflight
    body = json.dumps([span("c" * 16, "intruder")]).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
        headers = {"content-type": content_type} if content_type else {}
        response = await client.post("/api/v2/spans", data=body, headers=headers)
        assert response.status == 415, content_type
        assert "application/json or application/x-protobuf" in await response.text()
    assert await (await client.get("/api/v2/services")).json() == []
    utf8 = {"content-type": "application/json; charset=utf-8"}
    assert (await client.post("/api/v2/spans", data=body, headers=utf8)).status == 202


async def test_protobuf_spans_as_envoy_posts_them_are_read(
    client: TestClient,  # type: ignore[type-arg]
) -> None:
    message = ListOfSpans()
    span = message.spans.add(
        trace_id=bytes.fromhex(TRACE),
        id=bytes.fromhex("00f067aa0ba902b7")[::-1],  # Envoy's byte order for span ids
        kind=2,
        name="inbound",
        timestamp=int(time.time() * 1_000_000),
        duration=1_500,
        shared=True,
    )
    span.local_endpoint.service_name = "backend.default"
    response = await client.post(
        "/api/v2/spans",
        data=message.SerializeToString(),
        headers={"content-type": "application/x-protobuf"},
    )
    assert response.status == 202
    spans = await (await client.get(f"/api/v2/trace/{TRACE}")).json()
    assert spans == [
        {
            "traceId": TRACE,
            "id": "00f067aa0ba902b7",
            "name": "inbound",
            "kind": "SERVER",
            "timestamp": spans[0]["timestamp"],
            "duration": 1500,
            "localEndpoint": {"serviceName": "backend.default"},
            "shared": True,
        }
    ]


async def test_services_span_names_remote_services_and_trace_queries(
    client: TestClient,  # type: ignore[type-arg]
) -> None:
    slow = span("d" * 16, "backend", traceId="1" * 32, duration=900_000,
                tags={"http.status_code": "503", "error": "true"})  # fmt: skip
    batch = [
        span("a" * 16, "gateway", kind="CLIENT", name="ingress",
             remoteEndpoint={"serviceName": "frontend"}),
        span("b" * 16, "frontend", parentId="a" * 16),
        slow,
    ]  # fmt: skip
    assert (await client.post("/api/v2/spans", json=batch)).status == 202

    async def get(path: str) -> object:
        response = await client.get(path)
        assert response.status == 200, await response.text()
        return await response.json()

    assert await get("/api/v2/services") == ["backend", "frontend", "gateway"]
    assert await get("/api/v2/spans?serviceName=gateway") == ["ingress"]
    assert await get("/api/v2/remoteServices?serviceName=gateway") == ["frontend"]
    assert (await client.get("/api/v2/spans")).status == 400

    async def trace_ids(query: str) -> list[str]:
        found = await get(f"/api/v2/traces?{query}")
        assert isinstance(found, list)
        return [trace[0]["traceId"] for trace in found]

    assert sorted(await trace_ids("")) == ["1" * 32, TRACE]
    assert await trace_ids("serviceName=frontend") == [TRACE]
    assert await trace_ids("minDuration=100000") == ["1" * 32]
    assert await trace_ids("annotationQuery=error") == ["1" * 32]
    assert await trace_ids("annotationQuery=http.status_code%3D200") == [TRACE]
    assert await trace_ids("limit=1&serviceName=backend") == ["1" * 32]
    old = int(time.time() * 1000) - 3_600_000
    assert await trace_ids(f"endTs={old}&lookback=60000") == []
    bad = await client.get("/api/v2/traces?limit=many")
    assert bad.status == 400
    assert "limit" in await bad.text()
    assert await get("/api/v2/autocompleteKeys") == []
