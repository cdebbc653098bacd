"""Service registries: which services exist and where their endpoints are."""

from __future__ import annotations

from pilotfish.discovery.registry import build_view, services_from_config

__all__ = ["build_view", "services_from_config"]
