"""Turn configuration plus live endpoints into the registry view that translation reads.

Services come from two places: a ``Workload`` declares a service that ``pilotfish up`` runs,
and a ``ServiceEntry`` declares one that runs elsewhere. Endpoints come from ServiceEntry
inline endpoints, WorkloadEntries picked by a ServiceEntry's ``workloadSelector``, and the
runtime endpoints the local runner reports for the replicas it started.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pilotfish.model.resources import (
    MeshConfig,
    ServiceEntry,
    ServicePort,
    Workload,
    WorkloadEntrySpec,
    qualify_host,
    selector_matches,
)
from pilotfish.model.services import Endpoint, MeshView, Service


def workload_service_port(workload: Workload) -> ServicePort:
    protocol = workload.protocol
    return ServicePort(number=workload.port, name=protocol.lower(), protocol=protocol)


def services_from_config(config: MeshConfig) -> dict[str, Service]:
    """Every service the config declares, keyed by canonical hostname.

    Several Workloads may back one service (``v1`` and ``v2`` of ``reviews``); their ports are
    merged. Conflicts between them are the validator's business, not ours: first one wins here.
    """
    services: dict[str, Service] = {}
    for workload in config.workloads:
        hostname = qualify_host(workload.service, workload.meta.namespace)
        port = workload_service_port(workload)
        known = services.get(hostname)
        if known is None:
            services[hostname] = Service(
                hostname=hostname,
                ports=(port,),
                namespace=workload.meta.namespace,
                short_name=workload.service,
            )
        elif known.port(port.number) is None:
            services[hostname] = Service(
                hostname=hostname,
                ports=(*known.ports, port),
                namespace=known.namespace,
                short_name=known.short_name,
            )
    for entry in config.service_entries:
        for host in entry.hosts:
            hostname = qualify_host(host, entry.meta.namespace)
            services.setdefault(
                hostname,
                Service(
                    hostname=hostname,
                    ports=entry.ports,
                    namespace=entry.meta.namespace,
                    short_name=host if "." not in host else None,
                    resolution="DNS" if entry.resolution == "DNS" else "STATIC",
                    external=entry.location == "MESH_EXTERNAL",
                ),
            )
    return services


def _entry_endpoint(entry: ServiceEntry, spec: WorkloadEntrySpec, name: str) -> Endpoint:
    """Map each service port to the endpoint's port: by name, else targetPort, else the same."""
    ports = {
        port.number: spec.ports.get(port.name, port.target_port or port.number)
        for port in entry.ports
    }
    return Endpoint(
        address=spec.address,
        ports=ports,
        labels=dict(spec.labels),
        weight=spec.weight or 1,
        name=name,
    )


def _service_entry_endpoints(config: MeshConfig, entry: ServiceEntry) -> tuple[Endpoint, ...]:
    found = [
        _entry_endpoint(entry, spec, f"{entry.meta.name}[{index}]")
        for index, spec in enumerate(entry.endpoints)
    ]
    if entry.workload_selector is not None:
        found.extend(
            _entry_endpoint(entry, workload_entry.spec, workload_entry.meta.name)
            for workload_entry in config.workload_entries
            if workload_entry.meta.namespace == entry.meta.namespace
            and selector_matches(entry.workload_selector, workload_entry.spec.labels)
        )
    return tuple(found)


@dataclass(frozen=True)
class _ConfigRegistry:
    """What the config alone says: its services and the endpoints it lists itself."""

    config: MeshConfig
    services: dict[str, Service]
    endpoints: dict[str, tuple[Endpoint, ...]]


def _config_registry(config: MeshConfig) -> _ConfigRegistry:
    services = services_from_config(config)
    endpoints: dict[str, list[Endpoint]] = {hostname: [] for hostname in services}
    for entry in config.service_entries:
        entry_endpoints = _service_entry_endpoints(config, entry)
        for host in entry.hosts:
            endpoints[qualify_host(host, entry.meta.namespace)].extend(entry_endpoints)
    return _ConfigRegistry(config, services, {h: tuple(found) for h, found in endpoints.items()})


# Endpoint changes publish far more often than config changes; the config's own part of the
# view is worked out once per config object (configs are immutable; a reload makes a new one).
_last_config_registry: list[_ConfigRegistry] = []


def build_view(
    config: MeshConfig,
    runtime_endpoints: Mapping[str, Iterable[Endpoint]] | None = None,
) -> MeshView:
    known = _last_config_registry[0] if _last_config_registry else None
    if known is None or known.config is not config:
        known = _config_registry(config)
        _last_config_registry[:] = [known]
    endpoints = dict(known.endpoints)
    for hostname, live in (runtime_endpoints or {}).items():
        if hostname in endpoints:
            endpoints[hostname] = (*endpoints[hostname], *live)
    return MeshView(config=config, services=known.services, endpoints=endpoints)
