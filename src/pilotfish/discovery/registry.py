"""Registries of services and endpoints, and the view translation reads, merged from them.

The config folder is one registry: a ``Workload`` declares a service that ``pilotfish up``
runs, a ``ServiceEntry`` one that runs elsewhere, with endpoints from ServiceEntry inline
endpoints and the WorkloadEntries its ``workloadSelector`` picks. The replicas that the local
runner starts are another (an ``InMemoryRegistry``); Kubernetes or etcd would be more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Protocol

from pilotfish.model.identity import DEFAULT_SERVICE_ACCOUNT
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
        # As in Istio, only an endpoint labelled as having a sidecar gets mTLS; its identity
        # is the entry's service account, "default" when it names none.
        service_account=(spec.service_account or DEFAULT_SERVICE_ACCOUNT)
        if spec.has_sidecar
        else None,
        locality=spec.locality,
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


class Registry(Protocol):
    """A source of services and their endpoints.

    Today: the config folder (``ConfigRegistry``) and the replicas ``pilotfish up`` starts
    (``InMemoryRegistry``); a Kubernetes or etcd registry is one more implementation. A
    registry calls its listeners (with no argument) after any change, from the event loop
    thread; readers then take ``services()`` and ``endpoints()`` again.
    """

    def services(self) -> Mapping[str, Service]:
        """Services this registry declares, by canonical hostname."""
        ...

    def endpoints(self) -> Mapping[str, tuple[Endpoint, ...]]:
        """Endpoints by canonical hostname (of its own services or of others')."""
        ...

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after every change; returns the function that unsubscribes."""
        ...


class ConfigRegistry:
    """What one config says: its services and the endpoints it lists itself.

    Immutable (a reload makes a new config, and so a new registry), so it is worked out once
    per config however many endpoint changes the other registries publish.
    """

    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        self._services = MappingProxyType(services_from_config(config))
        endpoints: dict[str, list[Endpoint]] = {hostname: [] for hostname in self._services}
        for entry in config.service_entries:
            entry_endpoints = _service_entry_endpoints(config, entry)
            for host in entry.hosts:
                endpoints[qualify_host(host, entry.meta.namespace)].extend(entry_endpoints)
        self._endpoints = MappingProxyType({h: tuple(found) for h, found in endpoints.items()})

    def services(self) -> Mapping[str, Service]:
        return self._services

    def endpoints(self) -> Mapping[str, tuple[Endpoint, ...]]:
        return self._endpoints

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        return _never_changes


def _never_changes() -> None:
    return None


class InMemoryRegistry:
    """Services and endpoints set by hand: the replicas the local runner starts, embedding,
    tests. Endpoints are kept per (hostname, key) so each replica updates only its own."""

    def __init__(self) -> None:
        self._services: dict[str, Service] = {}
        self._endpoints: dict[tuple[str, str], Endpoint] = {}
        self._listeners: list[Callable[[], None]] = []
        self._grouped: Mapping[str, tuple[Endpoint, ...]] | None = None

    def services(self) -> Mapping[str, Service]:
        return MappingProxyType(self._services)

    def endpoints(self) -> Mapping[str, tuple[Endpoint, ...]]:
        if self._grouped is None:
            grouped: dict[str, list[Endpoint]] = {}
            for (hostname, _key), endpoint in sorted(self._endpoints.items()):
                grouped.setdefault(hostname, []).append(endpoint)
            self._grouped = MappingProxyType({h: tuple(found) for h, found in grouped.items()})
        return self._grouped

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def set_service(self, service: Service | None, hostname: str | None = None) -> None:
        """Declare (or, with None and ``hostname``, withdraw) a service."""
        name = service.hostname if service is not None else hostname
        if name is None:
            raise ValueError("withdrawing a service needs its hostname")
        if service is None:
            if self._services.pop(name, None) is None:
                return
        elif self._services.get(name) == service:
            return
        else:
            self._services[name] = service
        self._changed()

    def set_endpoint(self, hostname: str, key: str, endpoint: Endpoint | None) -> None:
        """Add, replace or (with None) remove one endpoint of a service."""
        if endpoint is None:
            if self._endpoints.pop((hostname, key), None) is None:
                return
        elif self._endpoints.get((hostname, key)) == endpoint:
            return
        else:
            self._endpoints[(hostname, key)] = endpoint
        self._changed()

    def _changed(self) -> None:
        self._grouped = None
        for listener in tuple(self._listeners):
            listener()


def build_view(
    config: MeshConfig | ConfigRegistry,
    runtime_endpoints: Mapping[str, Iterable[Endpoint]] | None = None,
    registries: Sequence[Registry] = (),
) -> MeshView:
    """The view translation reads: the config's services first, then those only the other
    registries know; each service's endpoints from every registry, in order.

    ``runtime_endpoints`` is a shorthand for one more registry of endpoints alone.
    """
    base = config if isinstance(config, ConfigRegistry) else ConfigRegistry(config)
    services: Mapping[str, Service] = base.services()
    extra = [r.services() for r in registries if r.services()]
    if extra:
        merged = dict(services)
        for found in extra:
            for hostname, service in found.items():
                merged.setdefault(hostname, service)
        services = MappingProxyType(merged)
    endpoints = dict(base.endpoints())
    sources = [r.endpoints() for r in registries]
    if runtime_endpoints:
        sources.append({h: tuple(found) for h, found in runtime_endpoints.items()})
    for source in sources:
        for hostname, live in source.items():
            if hostname in services and live:
                endpoints[hostname] = (*endpoints.get(hostname, ()), *live)
    return MeshView(config=base.config, services=services, endpoints=endpoints)


def registry_services(registries: Sequence[Registry]) -> dict[str, Service]:
    """Services the given registries declare (the first one wins a hostname)."""
    found: dict[str, Service] = {}
    for registry in registries:
        for hostname, service in registry.services().items():
            found.setdefault(hostname, service)
    return found
