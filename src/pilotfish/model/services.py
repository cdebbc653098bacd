"""The service registry's view: services, their endpoints, and the mesh as translation sees it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pilotfish.model.resources import MeshConfig, Protocol, ServicePort

Resolution = Literal["STATIC", "DNS"]


@dataclass(frozen=True)
class Service:
    """A name callers use, with its ports. ``hostname`` is the canonical (qualified) name."""

    hostname: str
    ports: tuple[ServicePort, ...]
    namespace: str = "default"
    short_name: str | None = None
    resolution: Resolution = "STATIC"
    external: bool = False

    def port(self, number: int) -> ServicePort | None:
        return next((p for p in self.ports if p.number == number), None)

    @property
    def protocol_by_port(self) -> Mapping[int, Protocol]:
        return {p.number: p.protocol for p in self.ports}


@dataclass(frozen=True)
class Endpoint:
    """One place a service's traffic can land.

    ``ports`` maps each service port number to the port on ``address`` that serves it. For
    workloads started by ``pilotfish up`` that is the inbound port of the replica's sidecar,
    so mesh traffic always enters through the server's proxy.
    """

    address: str
    ports: Mapping[int, int]
    labels: Mapping[str, str] = field(default_factory=dict)
    weight: int = 1
    name: str = ""
    service_account: str | None = None
    """Set when a sidecar serves this endpoint (the ``pilotfish up`` replicas): callers then
    speak mTLS to it and expect this account's identity. None: plaintext, as to a
    ServiceEntry host or a WorkloadEntry without a sidecar."""
    locality: str | None = None
    """``region/zone/subzone``; None: no locality (Envoy's empty one)."""


@dataclass(frozen=True)
class MeshView:
    """What translation needs: validated config plus the registry, keyed by canonical hostname."""

    config: MeshConfig
    services: Mapping[str, Service]
    endpoints: Mapping[str, tuple[Endpoint, ...]]

    def endpoints_of(self, hostname: str) -> tuple[Endpoint, ...]:
        return self.endpoints.get(hostname, ())
