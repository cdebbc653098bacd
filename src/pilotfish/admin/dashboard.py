"""The web dashboard at ``/`` (filled in by the dashboard work)."""

from __future__ import annotations

from aiohttp import web

from pilotfish.controller.control_plane import ControlPlane


def add_dashboard_routes(app: web.Application, control_plane: ControlPlane) -> None:
    return None
