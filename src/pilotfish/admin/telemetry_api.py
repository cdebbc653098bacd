"""Admin routes for traffic: ``/metrics`` and the live views (filled in by the telemetry work)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from pilotfish.controller.control_plane import ControlPlane
from pilotfish.telemetry.prometheus import CONTENT_TYPE, render


def add_telemetry_routes(app: web.Application, control_plane: ControlPlane) -> None:
    add_metrics_route(app, control_plane)


def add_metrics_route(app: web.Application, control_plane: ControlPlane) -> None:
    """``GET /metrics``: Istio's standard metrics and the control plane's own, in Prometheus's
    text format."""

    async def metrics(_: web.Request) -> web.Response:
        # The families are immutable copies: the text (megabytes for a big mesh) is written
        # off the event loop, which keeps serving xDS meanwhile.
        text = await asyncio.to_thread(render, control_plane.metric_families())
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/metrics", metrics)
