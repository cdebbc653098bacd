"""pilotfish.io/v1alpha1 Workload -> ``model.Workload``: a process ``pilotfish up`` starts.

Example::

    apiVersion: pilotfish.io/v1alpha1
    kind: Workload
    metadata: {name: reviews-v2}
    spec:
      service: reviews          # the service name callers use (a DNS label)
      port: 9080                # where the process listens (given to it as PORT)
      protocol: HTTP            # HTTP | HTTP2 | GRPC | TCP | TLS (and Istio's other names);
                                # unset: appProtocol, else detected from the traffic
      appProtocol: grpc         # Kubernetes' field, read as Istio reads it
      labels: {version: v2}     # matched by DestinationRule subsets
      replicas: 2               # default 1
      command: [python3, reviews.py]   # run from the folder holding this file
      env: {STARS: "red"}
      serviceAccount: reviews   # identity spiffe://<trustDomain>/ns/<namespace>/sa/reviews
                                # (default "default", as in Istio)
      locality: us-east/zone-a  # region/zone/subzone of every replica (locality failover)
      upstreams:                # loopback ports of the sidecar for TCP and proxy-less clients
      - {service: db, port: 5432, localPort: 15432}   # localPort unset: picked free
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from pilotfish.load.dns_names import DNS_LABEL, DNS_SUBDOMAIN
from pilotfish.load.fields import FieldReader, Fields, ObjectPaths, describe
from pilotfish.load.parse_locality import read_locality
from pilotfish.load.parse_protocols import (
    GRPC_WEB,
    GRPC_WEB_WARNING,
    carried_as,
    not_carried_consequence,
    protocol_of_app_protocol,
    read_istio_protocol,
    select_protocol,
)
from pilotfish.load.yaml_source import join_path
from pilotfish.model.diagnostics import Diagnostic
from pilotfish.model.identity import DEFAULT_SERVICE_ACCOUNT
from pilotfish.model.resources import MeshConfig, Meta, Protocol, Upstream, Workload, qualify_host
from pilotfish.model.services import Service

SPEC_FIELDS = (
    "service",
    "port",
    "protocol",
    "appProtocol",
    "labels",
    "replicas",
    "command",
    "env",
    "serviceAccount",
    "locality",
    "upstreams",
)
UPSTREAM_FIELDS = ("service", "port", "localPort")

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The runner sets these for every replica; a value in the YAML would be overwritten.
RUNNER_ENV = ("PORT", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy")
# Every replica is a process plus an Envoy (~70 MB) on this one machine; past a hundred the
# machine runs out long before the mesh is useful, so a larger number is surely a typo.
MAX_REPLICAS = 100


@dataclass(frozen=True)
class RejectedWorkload:
    """What is left of a Workload with errors in its own fields: never run, but its upstreams
    are still checked against the folder, so that every problem is reported in one go."""

    meta: Meta
    replicas: int
    upstreams: tuple[Upstream, ...]


def parse_workload(
    reader: FieldReader, spec: Fields, meta: Meta, directory: str
) -> Workload | RejectedWorkload:
    service = reader.string(spec, "service", "spec", required=True)
    if service is not None and DNS_LABEL.fullmatch(service) is None:
        reader.error(
            "spec.service",
            f'"{service}" is not a DNS label (lower-case letters, digits, "-", at most 63)',
        )
    port = reader.port(spec, "port", "spec", required=True)
    protocol = _protocol(reader, spec, port)
    labels = reader.string_map(spec, "labels", "spec")
    replicas = reader.integer(spec, "replicas", "spec", minimum=1, maximum=MAX_REPLICAS)
    command = _command(reader, spec)
    env = reader.string_map(spec, "env", "spec")
    locality = read_locality(reader, spec, "locality", "spec")
    service_account = reader.string(spec, "serviceAccount", "spec")
    if service_account is not None and DNS_SUBDOMAIN.fullmatch(service_account) is None:
        reader.error(
            "spec.serviceAccount",
            f'"{service_account}" is not a service account name (lower-case DNS subdomain)',
        )
        service_account = None
    for name in env:
        env_path = join_path("spec.env", name)
        if ENV_NAME.fullmatch(name) is None:
            reader.error(env_path, "not a valid environment variable name")
        elif name in RUNNER_ENV:
            reader.warning(env_path, "set by pilotfish up for every replica; this value is ignored")
    upstreams = _upstreams(reader, spec)
    if service is None or port is None or not command or protocol is None:
        return RejectedWorkload(meta, replicas or 1, upstreams)
    return Workload(
        meta=meta,
        service=service,
        port=port,
        command=command,
        protocol=protocol,
        labels=labels,
        replicas=1 if replicas is None else replicas,
        env=env,
        directory=directory,
        service_account=service_account or DEFAULT_SERVICE_ACCOUNT,
        locality=locality,
        upstreams=upstreams,
    )


def _protocol(reader: FieldReader, spec: Fields, port: int | None) -> Protocol | None:
    """``protocol``, else ``appProtocol`` as Istio reads a Kubernetes port's, else detection
    (TCP on a port whose server speaks first); None after an error."""
    explicit = read_istio_protocol(reader, spec, "protocol", "spec")
    if explicit is None and spec.get("protocol") not in (None, ""):
        return None
    app_protocol = reader.string(spec, "appProtocol", "spec")
    if app_protocol is not None and protocol_of_app_protocol(app_protocol) is None:
        reader.warning(
            "spec.appProtocol",
            f'"{app_protocol}" names no protocol Istio knows: '
            + (
                "ignored, protocol decides"
                if explicit is not None
                else "the protocol is detected from the traffic (HTTP, else TCP)"
            ),
        )
    chosen = select_protocol(protocol=explicit, app_protocol=app_protocol, port=port)
    hidden = protocol_of_app_protocol(app_protocol) if app_protocol is not None else None
    if explicit is not None and hidden is not None and carried_as(hidden) != carried_as(chosen):
        reader.warning(
            "spec.appProtocol",
            f"says {hidden} but protocol says {explicit}: protocol decides, the port is "
            f"carried as {carried_as(chosen)}",
        )
    if chosen == GRPC_WEB:
        reader.warning("spec.protocol" if explicit else "spec.appProtocol", GRPC_WEB_WARNING)
    carried = carried_as(chosen)
    if carried is None:
        reader.error(
            "spec.protocol" if explicit else "spec.appProtocol",
            f"{chosen} is not carried: {not_carried_consequence(chosen)} (a Workload's port "
            "must be TCP-based)",
        )
    return carried


def _upstreams(reader: FieldReader, spec: Fields) -> tuple[Upstream, ...]:
    """Each must name a service and its port; a bad one is left out (and reported)."""
    found: list[Upstream] = []
    for item, path in reader.items(spec, "upstreams", "spec"):
        fields = reader.mapping(item, path, UPSTREAM_FIELDS)
        if fields is None:
            continue
        service = reader.string(fields, "service", path, required=True)
        if service is not None and DNS_SUBDOMAIN.fullmatch(service) is None:
            reader.error(
                join_path(path, "service"),
                f'"{service}" is not a service name (a short name or a qualified host)',
            )
            service = None
        port = reader.port(fields, "port", path, required=True)
        local_port = reader.port(fields, "localPort", path)
        if service is None or port is None:
            continue
        found.append(reader.paths.remember(Upstream(service, port, local_port), path))
    return tuple(found)


def _command(reader: FieldReader, spec: Fields) -> tuple[str, ...]:
    """An argv list; arguments may be empty strings, the program may not."""
    argv: list[str] = []
    for item, path in reader.items(spec, "command", "spec", required=True):
        if not isinstance(item, str):
            reader.error(path, f"expected a string, got {describe(item)} (quote it)")
            continue
        argv.append(item)
    if argv and not argv[0]:
        reader.error("spec.command[0]", "the program name must not be empty")
        return ()
    return tuple(argv)


def upstream_problems(
    config: MeshConfig,
    services: Mapping[str, Service],
    paths: ObjectPaths,
    *,
    complete: bool = True,
    rejected: Sequence[RejectedWorkload] = (),
) -> Iterator[Diagnostic]:
    """An upstream is a listener on the replica's loopback: it must lead to a known service
    port, and two of them cannot share a local port (nor, without namespaces, two sidecars).
    The upstreams of ``rejected`` Workloads are checked too (after the valid ones')."""
    shared_loopback = config.mesh.interception == "explicit"
    # Without namespaces every sidecar shares one loopback, so local ports are mesh-wide.
    local_ports: dict[tuple[int, int], tuple[Meta, str]] = {}
    workloads: list[Workload | RejectedWorkload] = [*config.workloads, *rejected]
    for position, workload in enumerate(workloads):
        scope = -1 if shared_loopback else position
        source = workload.meta.source
        targets: dict[tuple[str, int], str] = {}
        for index, upstream in enumerate(workload.upstreams):
            path = paths.path_of(upstream) or f"spec.upstreams[{index}]"
            hostname = qualify_host(upstream.service, workload.meta.namespace)
            problem = _target_problem(config, services, upstream, hostname, complete)
            if problem is not None:
                field, message = problem
                yield source.diagnostic(join_path(path, field), message)
            first = targets.setdefault((hostname, upstream.port), path)
            if first != path:
                yield source.diagnostic(
                    path, f"{upstream.service} port {upstream.port} is already upstream {first}"
                )
            if upstream.local_port is None:
                continue
            local_path = join_path(path, "localPort")
            if shared_loopback and workload.replicas > 1:
                yield source.diagnostic(
                    local_path,
                    f"each of the {workload.replicas} replicas' sidecars would listen on "
                    f"127.0.0.1:{upstream.local_port}: leave localPort unset (each replica "
                    "then gets a free port, in its environment)",
                )
            owner, owner_path = local_ports.setdefault(
                (scope, upstream.local_port), (workload.meta, local_path)
            )
            if owner is not workload.meta or owner_path != local_path:
                line, col = owner.source.locate(owner_path)
                yield source.diagnostic(
                    local_path,
                    f"local port {upstream.local_port} is already taken by Workload "
                    f"{owner.namespace}/{owner.name} ({owner.source.file}:{line}:{col})",
                )


def _target_problem(
    config: MeshConfig,
    services: Mapping[str, Service],
    upstream: Upstream,
    hostname: str,
    complete: bool,
) -> tuple[str, str] | None:
    """(field, message) when the upstream's service or port is unknown."""
    known = services.get(hostname)
    if known is None:
        # A file read only in part may hold the service in its lost part.
        return ("service", f'unknown service "{upstream.service}"') if complete else None
    if known.port(upstream.port) is not None:
        return None
    skipped = next(
        (
            port
            for entry in config.service_entries
            for host in entry.hosts
            if qualify_host(host, entry.meta.namespace) == hostname
            for port in entry.ports_not_carried
            if port.number == upstream.port
        ),
        None,
    )
    if skipped is not None:
        return (
            "port",
            f"port {upstream.port} ({skipped.protocol}) of {upstream.service} is not carried, "
            "so this upstream cannot reach it",
        )
    ports = ", ".join(str(port.number) for port in known.ports) or "none"
    return ("port", f'service "{upstream.service}" has no port {upstream.port} (it has {ports})')
