"""Checks that need the whole folder: names, references between resources, route weights.

Each diagnostic is located in the resource that makes the reference (the second of two
duplicates, the VirtualService naming an unknown host), since that is the line to fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pilotfish.discovery import services_from_config
from pilotfish.load.fields import ObjectPaths
from pilotfish.load.parse_locality import dns_locality_warnings
from pilotfish.load.parse_peer_authentication import peer_authentication_problems
from pilotfish.load.parse_rate_limit_policy import rate_limit_policy_problems
from pilotfish.load.parse_request_authentication import jwks_hosts_without_service
from pilotfish.load.parse_service_entry import is_ip_address
from pilotfish.load.parse_workload import RejectedWorkload, upstream_problems
from pilotfish.load.yaml_source import index_path, join_path
from pilotfish.model.authorization import http_only_fields
from pilotfish.model.delegation import (
    MESH,
    delegate_key,
    merge_route,
    qualify_gateway,
    virtual_services_by_name,
)
from pilotfish.model.destination_rules import DestinationRuleLookup, host_matches
from pilotfish.model.diagnostics import Diagnostic, Severity
from pilotfish.model.resources import (
    CLUSTER_DOMAIN,
    HTTP_PROTOCOLS,
    Destination,
    DestinationRule,
    HTTPMatchRequest,
    HTTPRoute,
    L4MatchAttributes,
    MeshConfig,
    Meta,
    NotCarriedPort,
    ServiceEntry,
    TCPRoute,
    TLSRoute,
    VirtualService,
    Workload,
    is_http,
    qualify_host,
    selector_matches,
)
from pilotfish.model.services import Service

TOTAL_WEIGHT = 100
MAX_TOTAL_WEIGHT = 2**32 - 1


def validate_mesh(
    config: MeshConfig,
    paths: ObjectPaths,
    known_services: Mapping[str, Service] | None = None,
    *,
    complete: bool = True,
    rejected_workloads: Sequence[RejectedWorkload] = (),
) -> list[Diagnostic]:
    """Every problem between resources. ``known_services`` are services that registries
    other than the config declare; ``rejected_workloads`` (Workloads with errors of their own)
    still have their upstreams checked. When a file could not be read whole (``complete``
    false), a name not found may be in its lost part: references to unknown names are then
    not reported, since they would bury the one real problem; every other check still runs."""
    services = {**(known_services or {}), **services_from_config(config)}
    rules = DestinationRuleLookup(config.destination_rules)
    found: list[Diagnostic] = []
    found.extend(_duplicate_names(config))
    found.extend(_workload_conflicts(config))
    found.extend(
        upstream_problems(config, services, paths, complete=complete, rejected=rejected_workloads)
    )
    found.extend(_service_entry_host_conflicts(config))
    found.extend(_selected_workload_entry_addresses(config))
    found.extend(_destination_rule_problems(config.destination_rules, services, complete))
    if complete:
        found.extend(_port_settings_without_port(config.destination_rules, services, paths))
    found.extend(_virtual_service_conflicts(config.virtual_services))
    found.extend(_delegation_problems(config.virtual_services, paths))
    found.extend(peer_authentication_problems(config))
    found.extend(_http_rules_on_tcp_workloads(config))
    found.extend(dns_locality_warnings(config))
    if complete:
        found.extend(jwks_hosts_without_service(config.request_authentications, services))
    gateways = {(g.meta.namespace, g.meta.name) for g in config.gateways}
    found.extend(_rate_limit_problems(config, services, complete))
    not_carried = _ports_not_carried(config)
    for service in config.virtual_services:
        if complete:
            found.extend(_gateway_references(service, gateways))
            found.extend(_hosts_without_service(service, services))
        checker = _RouteChecker(service, services, rules, paths, complete, not_carried)
        for index, route in enumerate(service.http):
            route_path = paths.path_of(route) or f"spec.http[{index}]"
            found.extend(checker.check(route, route_path))
            found.extend(_match_gateway_references(service, route, route_path, gateways))
        l4_routes: list[tuple[str, TCPRoute | TLSRoute]] = [
            *((f"spec.tcp[{i}]", r) for i, r in enumerate(service.tcp)),
            *((f"spec.tls[{i}]", r) for i, r in enumerate(service.tls)),
        ]
        for default_path, l4_route in l4_routes:
            route_path = paths.path_of(l4_route) or default_path
            found.extend(checker.check(l4_route, route_path))
            found.extend(_match_gateway_references(service, l4_route, route_path, gateways))
    return found


def _http_rules_on_tcp_workloads(config: MeshConfig) -> Iterable[Diagnostic]:
    """Istio judges a TCP connection on a rule's other fields only: an ALLOW rule that needs
    an HTTP field never matches it, a DENY (or AUDIT) rule applies without that field."""
    opaque = [w for w in config.workloads if not is_http(w.protocol)]
    for policy in config.authorization_policies:
        selected = [w for w in opaque if policy.applies_to(w.meta.namespace, w.labels)]
        if not selected:
            continue
        # Every one, in a stable order: a warning that changes between runs looks like news.
        named = [f"{w.meta.name} ({w.protocol})" for w in sorted(selected, key=_workload_key)]
        where = f"Workload{'s' if len(named) > 1 else ''} {', '.join(named)}"
        their = "their" if len(named) > 1 else "its"
        for index, rule in enumerate(policy.rules):
            fields = http_only_fields(rule)
            if not fields:
                continue
            what = (
                f"this rule never matches {their} TCP connections, which it would allow"
                if policy.action == "ALLOW"
                else f"this rule applies to {their} TCP connections without them, so it "
                "matches more of them"
            )
            yield _at(
                policy.meta,
                f"spec.rules[{index}]",
                f"{', '.join(fields)} only exist in HTTP requests; on {where} {what}",
                "warning",
            )


def _workload_key(workload: Workload) -> tuple[str, str]:
    return workload.meta.namespace, workload.meta.name


def _rate_limit_problems(
    config: MeshConfig, services: Mapping[str, Service], complete: bool
) -> Iterable[Diagnostic]:
    with_sidecars = {qualify_host(w.service, w.meta.namespace) for w in config.workloads}
    gateways = {(g.meta.namespace, g.meta.name): g for g in config.gateways}
    return rate_limit_policy_problems(
        config.rate_limit_policies, services, gateways, with_sidecars, complete=complete
    )


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
        config.peer_authentications,
        config.authorization_policies,
        config.request_authentications,
        config.rate_limit_policies,
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
        if "*" in hostname:
            if complete and not any(host_matches(hostname, known) for known in services):
                yield _at(
                    rule.meta,
                    "spec.host",
                    f'"{rule.host}" matches no service; this rule has no effect until one exists',
                    "warning",
                )
        elif complete and hostname not in services:
            yield _at(
                rule.meta,
                "spec.host",
                f'unknown service "{rule.host}"; this rule has no effect until one exists',
                "warning",
            )


def _port_settings_without_port(
    rules: Iterable[DestinationRule], services: Mapping[str, Service], paths: ObjectPaths
) -> Iterable[Diagnostic]:
    """A portLevelSettings entry for a port that none of the rule's hosts has applies nowhere."""
    for rule in rules:
        hostname = qualify_host(rule.host, rule.meta.namespace)
        matched = [s for name, s in services.items() if host_matches(hostname, name)]
        if not matched:
            continue  # the rule's host is warned about already
        ports = sorted({port.number for service in matched for port in service.ports})
        policies = [rule.traffic_policy, *(subset.traffic_policy for subset in rule.subsets)]
        for policy in policies:
            for number, settings in (policy.port_settings if policy else {}).items():
                if number in ports:
                    continue
                yield _at(
                    rule.meta,
                    paths.path_of(settings) or "spec.trafficPolicy.portLevelSettings",
                    f'host "{rule.host}" has no port {number} '
                    f"(its ports: {', '.join(map(str, ports))}): these settings apply nowhere",
                    "warning",
                )


def _bindings(service: VirtualService) -> list[str]:
    """Where a VirtualService applies: "mesh" and/or gateways as "namespace/name"."""
    if not service.gateways:
        return [MESH]
    return [
        qualify_gateway(gateway, service.meta.namespace) for gateway in service.gateways if gateway
    ]


def _virtual_service_conflicts(services: Iterable[VirtualService]) -> Iterable[Diagnostic]:
    """Two VirtualServices for one host.

    On a gateway Istio merges them: the routes of each, in the order the resources were
    loaded, under one virtual host; translation does the same, and we only warn when an
    earlier one answers every request, so that the later routes can never be reached.
    Sidecars do not merge: Istio silently keeps only the oldest, which we refuse to guess.
    """
    owner: dict[tuple[str, str], tuple[VirtualService, int]] = {}
    catch_all: dict[tuple[str, str], VirtualService] = {}
    for service in services:
        for binding in sorted(set(_bindings(service))):
            for index, host in enumerate(service.hosts):
                if not host:
                    continue
                key = (qualify_host(host, service.meta.namespace), binding)
                earlier, earlier_index = owner.setdefault(key, (service, index))
                if earlier is service:
                    if _routes_everything(service):
                        catch_all.setdefault(key, service)
                    continue
                earlier_at = (
                    f"{earlier.meta.namespace}/{earlier.meta.name} "
                    f"({_where(earlier.meta, f'spec.hosts[{earlier_index}]')})"
                )
                if binding == MESH:
                    yield _at(
                        service.meta,
                        f"spec.hosts[{index}]",
                        f'host "{host}" on the mesh is already routed by VirtualService '
                        f"{earlier_at}; sidecars take one VirtualService per host (Istio "
                        "merges them only on gateways): move these routes into that one",
                    )
                    continue
                blocker = catch_all.get(key)
                if blocker is not None:
                    yield _at(
                        service.meta,
                        f"spec.hosts[{index}]",
                        f'host "{host}" on gateway {binding}: these routes are merged after '
                        f"those of VirtualService {blocker.meta.namespace}/{blocker.meta.name}, "
                        "one of whose routes takes every request, so they are never used",
                        "warning",
                    )
                elif _routes_everything(service):
                    catch_all.setdefault(key, service)


def _routes_everything(service: VirtualService) -> bool:
    """Whether some route of ``service`` matches every request (a route with no conditions)."""
    return any(
        route.delegate is None and any(_matches_everything(m) for m in route.match or (None,))
        for route in service.http
    )


def _matches_everything(match: HTTPMatchRequest | None) -> bool:
    if match is None:
        return True
    bare = HTTPMatchRequest(name=match.name)
    if match.uri is not None and (match.uri.kind, match.uri.value) in (
        ("prefix", "/"),
        ("prefix", ""),
    ):
        bare = HTTPMatchRequest(name=match.name, uri=match.uri)
    return match == bare


def _delegation_problems(
    services: tuple[VirtualService, ...], paths: ObjectPaths
) -> Iterable[Diagnostic]:
    """Delegates as Istio has them: a VirtualService without hosts, itself not delegating."""
    by_name = virtual_services_by_name(services)
    used: set[tuple[str, str]] = set()
    for root in services:
        for index, http in enumerate(root.http):
            if http.delegate is None:
                continue
            route_path = paths.path_of(http) or f"spec.http[{index}]"
            path = join_path(route_path, "delegate")
            namespace, name = key = delegate_key(http.delegate, root.meta.namespace)
            used.add(key)
            target = by_name.get(key)
            if root.is_delegate:
                yield _at(
                    root.meta,
                    path,
                    "a delegate VirtualService (one without hosts) cannot delegate again",
                )
                continue
            if target is None:
                yield _at(root.meta, path, f'unknown VirtualService "{namespace}/{name}"')
                continue
            if not target.is_delegate:
                yield _at(
                    root.meta,
                    path,
                    f'VirtualService "{namespace}/{name}" has hosts, so it is not a delegate '
                    f"({_where(target.meta, 'spec.hosts')}); a delegate has no hosts",
                )
                continue
            for sub_index, sub in enumerate(target.http):
                merged = merge_route(http, root.meta.namespace, sub, namespace)
                if sub.delegate is None and merged is None:
                    sub_path = paths.path_of(sub) or f"spec.http[{sub_index}]"
                    yield _at(
                        root.meta,
                        route_path,
                        f"route {sub_path} of delegate {namespace}/{name} "
                        f"({_where(target.meta, sub_path)}) asks for requests that none of "
                        "this route's matches admits, so it is dropped",
                        "warning",
                    )
    for service in services:
        key = (service.meta.namespace, service.meta.name)
        if service.is_delegate and key not in used:
            yield _at(
                service.meta,
                "metadata.name",
                "has no hosts, so it is a delegate, but no VirtualService delegates to it: "
                "its routes apply nowhere",
                "warning",
            )


def _match_gateway_references(
    service: VirtualService,
    route: HTTPRoute | TCPRoute | TLSRoute,
    route_path: str,
    gateways: set[tuple[str, str]],
) -> Iterable[Diagnostic]:
    blocks: tuple[HTTPMatchRequest | L4MatchAttributes, ...] = route.match
    for match_index, match in enumerate(blocks):
        for index, gateway in enumerate(match.gateways):
            if gateway == MESH:
                continue
            namespace, _, name = qualify_gateway(gateway, service.meta.namespace).partition("/")
            if (namespace, name) not in gateways:
                yield _at(
                    service.meta,
                    index_path(
                        join_path(
                            index_path(join_path(route_path, "match"), match_index), "gateways"
                        ),
                        index,
                    ),
                    f'unknown Gateway "{namespace}/{name}"',
                )


def _gateway_references(
    service: VirtualService, gateways: set[tuple[str, str]]
) -> Iterable[Diagnostic]:
    for index, gateway in enumerate(service.gateways):
        if not gateway or gateway == MESH:
            continue
        namespace, _, name = qualify_gateway(gateway, service.meta.namespace).partition("/")
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
    rules: DestinationRuleLookup
    paths: ObjectPaths
    complete: bool = True
    not_carried: Mapping[str, tuple[NotCarriedPort, ...]] = field(default_factory=dict)

    def check(self, route: HTTPRoute | TCPRoute | TLSRoute, route_path: str) -> list[Diagnostic]:
        found: list[Diagnostic] = []
        destinations_path = join_path(route_path, "route")
        http = isinstance(route, HTTPRoute)
        for index, routed in enumerate(route.route):
            path = self.paths.path_of(routed) or index_path(destinations_path, index)
            found.extend(
                self._destination(routed.destination, join_path(path, "destination"), http=http)
            )
        for index, mirror in enumerate(route.mirrors if isinstance(route, HTTPRoute) else ()):
            path = self.paths.path_of(mirror) or index_path(join_path(route_path, "mirrors"), index)
            found.extend(self._destination(mirror.destination, path, http=True))
        found.extend(self._weights(route, destinations_path))
        return found

    def _error(self, path: str, message: str) -> Diagnostic:
        return _at(self.service.meta, path, message)

    def _destination(
        self, destination: Destination, destination_path: str, *, http: bool
    ) -> Iterable[Diagnostic]:
        """``http``: the destination of an HTTP route (or mirror), else of a tcp/tls route."""
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
                "carried, so this route cannot reach it"
                if skipped is not None
                else f'service "{destination.host}" has no port {destination.port} '
                f"(it has {port_numbers or 'none'})",
            )
        if destination.port is None and not known.ports:
            declared = ", ".join(f"{p.number} ({p.protocol})" for p in not_carried)
            why = f"its ports {declared} are not carried" if declared else "it declares none"
            yield self._error(
                destination_path,
                f'service "{destination.host}" has no port Pilotfish carries ({why})',
            )
        # An HTTP route never reaches a TCP or TLS port, so only several HTTP (or AUTO) ports
        # are ambiguous for it; a tcp or tls route may lead to any port, so, as in Istio, a
        # service of more than one port needs port.number there.
        ports = [
            p.number for p in known.ports if not http or p.protocol in HTTP_PROTOCOLS | {"AUTO"}
        ]
        if destination.port is None and len(ports) > 1:
            yield self._error(
                destination_path,
                f'service "{destination.host}" has several {"HTTP " if http else ""}ports '
                f"({', '.join(map(str, ports))}); set port.number",
            )

    def _subset_problem(self, hostname: str, host: str, subset: str) -> str | None:
        rule = self.rules.rule_for(hostname)
        if rule is None:
            return f'subset "{subset}" is not defined: no DestinationRule for host "{host}"'
        names = [candidate.name for candidate in rule.subsets]
        if subset in names:
            return None
        return (
            f'subset "{subset}" is not defined in DestinationRule '
            f"{rule.meta.namespace}/{rule.meta.name} (it has {', '.join(names) or 'none'})"
        )

    def _weights(
        self, route: HTTPRoute | TCPRoute | TLSRoute, destinations_path: str
    ) -> Iterable[Diagnostic]:
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
