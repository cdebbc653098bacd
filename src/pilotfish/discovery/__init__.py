"""Service registries: which services exist and where their endpoints are."""

from __future__ import annotations

from pilotfish.discovery.registry import (
    ConfigRegistry,
    InMemoryRegistry,
    Registry,
    build_view,
    registry_services,
    services_from_config,
)

__all__ = [
    "ConfigRegistry",
    "InMemoryRegistry",
    "Registry",
    "build_view",
    "registry_services",
    "services_from_config",
]
