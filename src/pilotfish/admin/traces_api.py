"""Admin routes for traces: Zipkin's v2 API (filled in by the tracing work)."""

from __future__ import annotations

from aiohttp import web

from pilotfish.controller.control_plane import ControlPlane


def add_trace_routes(app: web.Application, control_plane: ControlPlane) -> None:
    return None
