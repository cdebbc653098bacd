"""Admin routes for traffic: ``/metrics`` and the live views (filled in by the telemetry work)."""

from __future__ import annotations

from aiohttp import web

from pilotfish.controller.control_plane import ControlPlane


def add_telemetry_routes(app: web.Application, control_plane: ControlPlane) -> None:
    return None
