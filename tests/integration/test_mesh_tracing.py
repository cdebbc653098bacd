"""`pilotfish up` (in process) with a Zipkin collector of the test's own as the telemetry
address: a request through gateway -> sidecar -> app leaves a client span of the gateway
and a server span of the sidecar, of one trace, POSTed as Zipkin's protobuf spans."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web
from tests.integration.mesh_harness import echo_workload, free_port, gateway, http_get, write_yaml
from tests.waiting import eventually

from pilotfish.runner.local_mesh import LocalMesh, LocalMeshSettings
from pilotfish.telemetry.zipkin_proto import spans_from_protobuf

ROUTE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: web}}]}]
---
"""


async def test_proxies_post_spans_of_one_trace_to_the_telemetry_address(tmp_path: Path) -> None:
    spans: list[dict[str, object]] = []

    async def collect(request: web.Request) -> web.Response:
        assert request.path == "/api/v2/spans"
        assert request.content_type == "application/x-protobuf"
        spans.extend(spans_from_protobuf(await request.read()))
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/api/v2/spans", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    collector_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", collector_port).start()
    gateway_port = free_port()
    write_yaml(
        tmp_path / "mesh.yaml", gateway(gateway_port) + ROUTE + echo_workload("web", "web", 8080)
    )
    mesh = LocalMesh(tmp_path, LocalMeshSettings(telemetry_port=collector_port))
    try:
        await mesh.start()
        url = f"http://127.0.0.1:{gateway_port}/traced"

        async def served() -> bool:
            return (await asyncio.to_thread(http_get, url, None, 2.0)).status == 200

        await eventually(served, "the gateway to serve web", timeout=30)
        reply = await asyncio.to_thread(http_get, url)
        headers = reply.body["headers"]
        assert isinstance(headers, dict)
        trace_id = headers["x-b3-traceid"]

        def of_the_trace() -> dict[str, dict[str, object]]:
            found = {
                str(span.get("kind")): span for span in spans if span.get("traceId") == trace_id
            }
            return found if {"CLIENT", "SERVER"} <= set(found) else {}

        by_kind = await eventually(of_the_trace, "a client and a server span", timeout=15)
        client, server = by_kind["CLIENT"], by_kind["SERVER"]
        assert client["localEndpoint"]["serviceName"] == "pilotfish-ingressgateway.default"  # type: ignore[index]
        assert server["localEndpoint"]["serviceName"] == "web.default"  # type: ignore[index]
        # The sidecar's server span is a child of the gateway's client span.
        assert server["parentId"] == client["id"]
    finally:
        await mesh.stop()
        await runner.cleanup()
