"""Checks that need the whole folder: names, references between resources, route weights.

Each diagnostic is located in the resource that makes the reference (the second of two
duplicates, the VirtualService naming an unknown host), since that is the line to fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pilotfish.discovery import services_from_config
from pilotfish.load.fields import ObjectPaths
from pilotfish.load.parse_service_entry import is_ip_address
from pilotfish.load.yaml_source import index_path, join_path
from pilotfish.model.diagnostics import Diagnostic, Severity
from pilotfish.model.resources import (
    CLUSTER_DOMAIN,
    DestinationRule,
    HTTPRoute,
    MeshConfig,
    Meta,
    NotCarriedPort,
    RouteDestination,
    ServiceEntry,
    VirtualService,
    qualify_host,
    selector_matches,
)
from pilotfish.model.services import Service

MESH = "mesh"
TOTAL_WEIGHT = 100
MAX_TOTAL_WEIGHT = 2**32 - 1


def validate_mesh(
    config: MeshConfig, paths: ObjectPaths, *, complete: bool = True
) -> list[Diagnostic]:
    """Every problem between resources. When a file could not be read whole (``complete``
    false), a name not found may be in its lost part: references to unknown names are then
    not reported, since they would bury the one real problem; every other check still runs."""
    services = services_from_config(config)
    rules = _rules_by_host(config.destination_rules)
    found: list[Diagnostic] = []
    found.extend(_duplicate_names(config))
    found.extend(_workload_conflicts(config))
    found.extend(_service_entry_host_conflicts(config))
    found.extend(_selected_workload_entry_addresses(config))
    found.extend(_destination_rule_problems(config.destination_rules, services, complete))
    found.extend(_virtual_service_conflicts(config.virtual_services))
    gateways = {(g.meta.namespace, g.meta.name) for g in config.gateways}
    not_carried = _ports_not_carried(config)
    for service in config.virtual_services:
        if complete:
            found.extend(_gateway_references(service, gateways))
            found.extend(_hosts_without_service(service, services))
        checker = _RouteChecker(service, services, rules, paths, complete, not_carried)
        for index, route in enumerate(service.http):
            found.extend(checker.check(route, paths.path_of(route) or f"spec.http[{index}]"))
    return found


def _at(meta: Meta, path: str, message: str, severity: Severity = "error") -> Diagnostic:
    return meta.source.diagnostic(path, message, severity)


def _where(meta: Meta, path: str) -> str:
    line, col = meta.source.locate(path)
    return f"{meta.source.file}:{line}:{col}"


def _all_metas(config: MeshConfig) -> Iterable[Meta]:
    for group in (
        config.virtual_services,
        config.destination_rules,
        config.gateways,
        config.service_entries,
        config.workload_entries,
        config.workloads,
    ):
        for resource in group:
            yield resource.meta


def _duplicate_names(config: MeshConfig) -> Iterable[Diagnostic]:
    first: dict[tuple[str, str, str], Meta] = {}
    for meta in _all_metas(config):
        key = (meta.kind, meta.namespace, meta.name)
        earlier = first.setdefault(key, meta)
        if earlier is not meta:
            yield _at(
                meta,
                "metadata.name",
                f'duplicate {meta.kind} "{meta.namespace}/{meta.name}" '
                f"(first defined at {_where(earlier, 'metadata.name')})",
            )


def _workload_conflicts(config: MeshConfig) -> Iterable[Diagnostic]:
    """Replicas of one service share its port and protocol, as pods behind one Service do."""
    first: dict[str, tuple[Meta, int, str]] = {}
    for workload in config.workloads:
        hostname = qualify_host(workload.service, workload.meta.namespace)
        earlier = first.setdefault(hostname, (workload.meta, workload.port, workload.protocol))
        meta, port, protocol = earlier
        if meta is workload.meta:
            continue
        name = f"{meta.namespace}/{meta.name}"
        if workload.port != port:
            yield _at(
                workload.meta,
                "spec.port",
                f'service "{workload.service}" is served on port {port} by Workload {name}; '
                "all Workloads of a service must use the same port",
            )
        if workload.protocol != protocol:
            yield _at(
                workload.meta,
                "spec.protocol",
                f'service "{workload.service}" is served with protocol {protocol} by Workload '
                f"{name}; all Workloads of a service must use the same protocol",
            )


def _service_entry_host_conflicts(config: MeshConfig) -> Iterable[Diagnostic]:
    """The registry keeps one service per hostname and drops the rest without a word."""
    workload_by_host = {
        qualify_host(w.service, w.meta.namespace): w.meta for w in reversed(config.workloads)
    }
    first: dict[str, tuple[ServiceEntry, int]] = {}
    for entry in config.service_entries:
        for index, host in enumerate(entry.hosts):
            if not host:
                continue
            hostname = qualify_host(host, entry.meta.namespace)
            workload = workload_by_host.get(hostname)
            if workload is not None:
                yield _at(
                    entry.meta,
                    f"spec.hosts[{index}]",
                    f'host "{host}" is already served by Workload '
                    f"{workload.namespace}/{workload.name} ({_where(workload, 'spec.service')})",
                )
                continue
            earlier, earlier_index = first.setdefault(hostname, (entry, index))
            if earlier is not entry:
                yield _at(
                    entry.meta,
                    f"spec.hosts[{index}]",
                    f'host "{host}" is already declared by ServiceEntry '
                    f"{earlier.meta.namespace}/{earlier.meta.name} "
                    f"({_where(earlier.meta, f'spec.hosts[{earlier_index}]')})",
                )


def _selected_workload_entry_addresses(config: MeshConfig) -> Iterable[Diagnostic]:
    """Envoy resolves names only for DNS clusters; a STATIC one needs IP addresses."""
    for entry in config.service_entries:
        selector = entry.workload_selector
        if selector is None or entry.resolution == "DNS":
            continue
        for workload_entry in config.workload_entries:
            if workload_entry.meta.namespace != entry.meta.namespace:
                continue
            if not selector_matches(selector, workload_entry.spec.labels):
                continue
            address = workload_entry.spec.address
            if address.startswith("unix://") or is_ip_address(address):
                continue
            yield _at(
                workload_entry.meta,
                "spec.address",
                f'"{address}" is not an IP address, but ServiceEntry '
                f"{entry.meta.namespace}/{entry.meta.name} selects this entry with "
                f"{entry.resolution} resolution (hostnames need resolution: DNS)",
            )


def _ports_not_carried(config: MeshConfig) -> dict[str, tuple[NotCarriedPort, ...]]:
    return {
        qualify_host(host, entry.meta.namespace): entry.ports_not_carried
        for entry in reversed(config.service_entries)
        for host in entry.hosts
        if entry.ports_not_carried
    }


def _hosts_without_service(
    service: VirtualService, services: Mapping[str, Service]
) -> Iterable[Diagnostic]:
    """Sidecars only route hosts the registry knows; any other host is dead config."""
    if not service.applies_to_mesh:
        return
    for index, host in enumerate(service.hosts):
        if not host or "*" in host:
            continue
        if qualify_host(host, service.meta.namespace) in services:
            continue
        yield _at(
            service.meta,
            f"spec.hosts[{index}]",
            f'has no effect on the mesh: no service named "{host}"'
            f"{_qualified_hint(host, services)}",
            "warning",
        )


def _qualified_hint(host: str, services: Mapping[str, Service]) -> str:
    """Istio reads any name with a dot as fully qualified: "reviews.default" is not a
    short name, though Kubernetes DNS would resolve it. Point at the name that works."""
    candidate = f"{host}.{CLUSTER_DOMAIN}"
    if candidate in services:
        return f' (names with a dot are fully qualified; did you mean "{candidate}"?)'
    return ""


def _rules_by_host(rules: Iterable[DestinationRule]) -> dict[str, DestinationRule]:
    by_host: dict[str, DestinationRule] = {}
    for rule in rules:
        if rule.host:
            by_host.setdefault(qualify_host(rule.host, rule.meta.namespace), rule)
    return by_host


def _destination_rule_problems(
    rules: Iterable[DestinationRule], services: Mapping[str, Service], complete: bool
) -> Iterable[Diagnostic]:
    first: dict[str, DestinationRule] = {}
    for rule in rules:
        if not rule.host:
            continue
        hostname = qualify_host(rule.host, rule.meta.namespace)
        earlier = first.setdefault(hostname, rule)
        if earlier is not rule:
            yield _at(
                rule.meta,
                "spec.host",
                f'host "{rule.host}" already has DestinationRule '
                f"{earlier.meta.namespace}/{earlier.meta.name} "
                f"({_where(earlier.meta, 'spec.host')})",
            )
        if complete and hostname not in services:
            yield _at(
                rule.meta,
                "spec.host",
                f'unknown service "{rule.host}"; this rule has no effect until one exists',
                "warning",
            )


def _bindings(service: VirtualService) -> list[str]:
    """Where a VirtualService applies: "mesh" and/or gateways as "namespace/name"."""
    if not service.gateways:
        return [MESH]
    return [
        gateway if gateway == MESH else _qualify_gateway(gateway, service.meta.namespace)
        for gateway in service.gateways
        if gateway
    ]


def _qualify_gateway(gateway: str, namespace: str) -> str:
    return gateway if "/" in gateway else f"{namespace}/{gateway}"


def _virtual_service_conflicts(services: Iterable[VirtualService]) -> Iterable[Diagnostic]:
    """Istio merges or picks silently between two VirtualServices for one host; we refuse."""
    owner: dict[tuple[str, str], tuple[VirtualService, int]] = {}
    for service in services:
        for binding in sorted(set(_bindings(service))):
            for index, host in enumerate(service.hosts):
                if not host:
                    continue
                key = (qualify_host(host, service.meta.namespace), binding)
                earlier, earlier_index = owner.setdefault(key, (service, index))
                if earlier is service:
                    continue
                where = "the mesh" if binding == MESH else f"gateway {binding}"
                yield _at(
                    service.meta,
                    f"spec.hosts[{index}]",
                    f'host "{host}" on {where} is already routed by VirtualService '
                    f"{earlier.meta.namespace}/{earlier.meta.name} "
                    f"({_where(earlier.meta, f'spec.hosts[{earlier_index}]')})",
                )


def _gateway_references(
    service: VirtualService, gateways: set[tuple[str, str]]
) -> Iterable[Diagnostic]:
    for index, gateway in enumerate(service.gateways):
        if not gateway or gateway == MESH:
            continue
        namespace, _, name = _qualify_gateway(gateway, service.meta.namespace).partition("/")
        if (namespace, name) not in gateways:
            yield _at(
                service.meta,
                f"spec.gateways[{index}]",
                f'unknown Gateway "{namespace}/{name}"',
            )


@dataclass(frozen=True)
class _RouteChecker:
    service: VirtualService
    services: Mapping[str, Service]
    rules: Mapping[str, DestinationRule]
    paths: ObjectPaths
    complete: bool = True
    not_carried: Mapping[str, tuple[NotCarriedPort, ...]] = field(default_factory=dict)

    def check(self, route: HTTPRoute, route_path: str) -> list[Diagnostic]:
        found: list[Diagnostic] = []
        destinations_path = join_path(route_path, "route")
        for index, routed in enumerate(route.route):
            path = self.paths.path_of(routed) or index_path(destinations_path, index)
            found.extend(self._destination(routed, path))
        found.extend(self._weights(route, destinations_path))
        return found

    def _error(self, path: str, message: str) -> Diagnostic:
        return _at(self.service.meta, path, message)

    def _destination(self, routed: RouteDestination, path: str) -> Iterable[Diagnostic]:
        destination = routed.destination
        destination_path = join_path(path, "destination")
        hostname = qualify_host(destination.host, self.service.meta.namespace)
        known = self.services.get(hostname)
        if known is None and not self.complete:
            return
        if known is None:
            yield self._error(
                join_path(destination_path, "host"),
                f'unknown service "{destination.host}"'
                f"{_qualified_hint(destination.host, self.services)}",
            )
            return
        if destination.subset is not None and self.complete:
            problem = self._subset_problem(hostname, destination.host, destination.subset)
            if problem is not None:
                yield self._error(join_path(destination_path, "subset"), problem)
        port_numbers = ", ".join(str(port.number) for port in known.ports)
        not_carried = self.not_carried.get(hostname, ())
        if destination.port is not None and known.port(destination.port) is None:
            skipped = next((p for p in not_carried if p.number == destination.port), None)
            yield self._error(
                join_path(destination_path, "port.number"),
                f"port {skipped.number} ({skipped.protocol}) of {destination.host} is not "
                "carried by Pilotfish yet, so this route cannot reach it"
                if skipped is not None
                else f'service "{destination.host}" has no port {destination.port} '
                f"(it has {port_numbers or 'none'})",
            )
        if destination.port is None and not known.ports:
            declared = ", ".join(f"{p.number} ({p.protocol})" for p in not_carried)
            why = f"its ports {declared} are not carried yet" if declared else "it declares none"
            yield self._error(
                destination_path,
                f'service "{destination.host}" has no port Pilotfish carries ({why})',
            )
        if destination.port is None and len(known.ports) > 1:
            yield self._error(
                destination_path,
                f'service "{destination.host}" has several ports ({port_numbers}); set port.number',
            )

    def _subset_problem(self, hostname: str, host: str, subset: str) -> str | None:
        rule = self.rules.get(hostname)
        if rule is None:
            return f'subset "{subset}" is not defined: no DestinationRule for host "{host}"'
        names = [candidate.name for candidate in rule.subsets]
        if subset in names:
            return None
        return (
            f'subset "{subset}" is not defined in DestinationRule '
            f"{rule.meta.namespace}/{rule.meta.name} (it has {', '.join(names) or 'none'})"
        )

    def _weights(self, route: HTTPRoute, destinations_path: str) -> Iterable[Diagnostic]:
        """Istio's rule: weights are relative, an omitted one counts as 0, and several
        destinations need some weight. Traffic is split in proportion, as Envoy does with
        weights that do not sum to 100; that is worth a warning, since it is often a typo."""
        if len(route.route) < 2:
            return
        weights = [routed.weight or 0 for routed in route.route]
        total = sum(weights)
        if total == 0:
            yield self._error(
                destinations_path,
                "weights sum to 0: set a weight on the destinations that should get traffic",
            )
        elif total > MAX_TOTAL_WEIGHT:
            yield self._error(
                destinations_path, f"weights sum to {total}, more than Envoy can add up"
            )
        elif total != TOTAL_WEIGHT:
            shares = ", ".join(f"{100 * weight / total:.4g}%" for weight in weights)
            yield _at(
                self.service.meta,
                destinations_path,
                f"weights sum to {total}, not 100 (an omitted weight counts as 0): "
                f"traffic is split in proportion ({shares})",
                "warning",
            )
