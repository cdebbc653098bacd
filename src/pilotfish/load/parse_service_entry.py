"""networking.istio.io ServiceEntry and WorkloadEntry -> their ``model`` types."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal, cast

from pilotfish.load.dns_names import DNS_LABEL, DNS_SUBDOMAIN
from pilotfish.load.fields import NOT_IMPLEMENTED_PREFIX, FieldReader, Fields, describe
from pilotfish.load.parse_locality import read_locality
from pilotfish.load.parse_protocols import (
    HTTP_PROXY,
    carried_as,
    istio_protocol,
    names_http,
    not_carried_consequence,
    read_port_protocol,
)
from pilotfish.load.yaml_source import join_path
from pilotfish.model.resources import (
    Meta,
    NotCarriedPort,
    ServiceEntry,
    ServicePort,
    WorkloadEntry,
    WorkloadEntrySpec,
)

SERVICE_ENTRY_FIELDS = (
    "hosts",
    "addresses",
    "ports",
    "location",
    "resolution",
    "endpoints",
    "workloadSelector",
)
SERVICE_ENTRY_NOT_IMPLEMENTED = {
    "exportTo": "the ServiceEntry is visible to every namespace",
    "subjectAltNames": "the identity of its endpoints is not checked",
}
LOCATIONS = ("MESH_EXTERNAL", "MESH_INTERNAL")
RESOLUTIONS = ("STATIC", "DNS", "NONE")
RESOLUTIONS_NOT_SUPPORTED = ("DNS_ROUND_ROBIN",)

WORKLOAD_ENTRY_FIELDS = (
    "address",
    "ports",
    "labels",
    "weight",
    "network",
    "serviceAccount",
    "locality",
)
WORKLOAD_ENTRY_NOT_IMPLEMENTED: dict[str, str] = {}

# What Istio's schema allows as a WorkloadEntry port name.
PORT_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?")

Resolution = Literal["STATIC", "DNS", "NONE"]
Location = Literal["MESH_EXTERNAL", "MESH_INTERNAL"]


def parse_service_entry(reader: FieldReader, spec: Fields, meta: Meta) -> ServiceEntry:
    hosts = reader.string_list(spec, "hosts", "spec", required=True)
    for index, host in enumerate(hosts):
        if host == "*":
            reader.error(f"spec.hosts[{index}]", '"*" is not a service name (Istio refuses it)')
    addresses = reader.string_list(spec, "addresses", "spec")
    ports = _service_ports(reader, spec)
    carried = [port for port in ports if isinstance(port, ServicePort)]
    not_carried = [port for port in ports if isinstance(port, NotCarriedPort)]
    for port in not_carried:
        reader.warning(
            reader.paths.path_of(port) or "spec.ports",
            f"port {port.number} ({port.protocol}) of ServiceEntry {meta.namespace}/{meta.name} "
            f"is not carried: {not_carried_consequence(port.protocol)}",
        )
    location = reader.choice(spec, "location", "spec", LOCATIONS) or "MESH_EXTERNAL"
    resolution = reader.choice(
        spec, "resolution", "spec", RESOLUTIONS, not_supported=RESOLUTIONS_NOT_SUPPORTED
    )
    if resolution is None and spec.get("resolution") is None:
        # Istio's default is NONE; say so rather than silently picking another mode.
        resolution = "NONE"
        reader.warning(
            "spec.resolution",
            "not set: Istio's default NONE (pass-through) is not implemented; treated as STATIC",
        )
    elif resolution == "NONE":
        reader.warning(
            "spec.resolution", "NONE (pass-through) is not implemented; treated as STATIC"
        )
    if len(hosts) > 1 and spec.get("resolution") not in (None, "NONE"):
        _hosts_sharing_an_opaque_port(reader, spec)
    if resolution == "DNS" and any("/" in address for address in addresses):
        reader.error(
            "spec.addresses", "CIDR ranges need resolution STATIC or NONE (Istio refuses them)"
        )
    if spec.get("resolution") == "NONE" and spec.get("endpoints"):
        reader.error("spec.endpoints", "cannot be set with resolution NONE (Istio refuses it)")
    endpoints: list[WorkloadEntrySpec] = []
    for item, path in reader.items(spec, "endpoints", "spec"):
        fields = reader.mapping(item, path, WORKLOAD_ENTRY_FIELDS, WORKLOAD_ENTRY_NOT_IMPLEMENTED)
        if fields is None:
            continue
        endpoint = parse_workload_entry_spec(reader, fields, path)
        if endpoint is None:
            continue
        if resolution in ("STATIC", "NONE") and not is_ip_address(endpoint.address):
            reader.error(
                join_path(path, "address"),
                f'"{endpoint.address}" is not an IP address (required with STATIC resolution)',
            )
        endpoints.append(endpoint)
    selector = _workload_selector(reader, spec)
    if endpoints and selector is not None:
        reader.error("spec.workloadSelector", "cannot be combined with endpoints")
    return ServiceEntry(
        meta=meta,
        hosts=hosts,
        ports=tuple(carried),
        addresses=addresses,
        location=cast(Location, location),
        resolution=cast(Resolution, resolution or "STATIC"),
        endpoints=tuple(endpoints),
        workload_selector=selector,
        ports_not_carried=tuple(not_carried),
    )


def _hosts_sharing_an_opaque_port(reader: FieldReader, spec: Fields) -> None:
    """Several hosts on one port are told apart by the HTTP Host or the TLS SNI; plain TCP
    carries neither. Istio judges by ``protocol`` alone, so an unset one counts as TCP here."""
    for item, path in reader.items(spec, "ports", "spec"):
        written = item.get("protocol") if isinstance(item, dict) else None
        protocol = istio_protocol(written) if isinstance(written, str) else None
        if isinstance(written, str) and written and protocol is None:
            continue  # an unknown protocol, reported as such
        if protocol is None or not (
            names_http(protocol) or protocol == HTTP_PROXY or carried_as(protocol) == "TLS"
        ):
            shown = f"protocol {written}" if protocol is not None else "no protocol"
            reader.error(
                path,
                f"{shown} with several hosts: only HTTP (Host) and TLS (SNI) connections name "
                "the host they want; give each host its own ServiceEntry, or set resolution "
                "NONE (Istio refuses it too)",
            )
            return


def _service_ports(reader: FieldReader, spec: Fields) -> list[ServicePort | NotCarriedPort]:
    """Ports by number and name; Istio keys listeners and endpoints on both, so each is unique.

    Istio accepts a ServiceEntry without ports (DNS names or addresses reached on any port);
    Pilotfish then has no port to carry its traffic on, which routes to it report."""
    ports: list[ServicePort | NotCarriedPort] = []
    numbers: set[int] = set()
    names: set[str] = set()
    for item, path in reader.items(spec, "ports", "spec"):
        port = _service_port(reader, item, path)
        if port is None:
            continue
        duplicate = False
        if port.number in numbers:
            reader.error(join_path(path, "number"), f"duplicate port number {port.number}")
            duplicate = True
        if port.name in names:
            reader.error(join_path(path, "name"), f'duplicate port name "{port.name}"')
            duplicate = True
        numbers.add(port.number)
        names.add(port.name)
        if not duplicate:
            ports.append(port)
    return ports


def _service_port(
    reader: FieldReader, value: object, path: str
) -> ServicePort | NotCarriedPort | None:
    fields = reader.mapping(value, path, ("number", "name", "protocol", "targetPort"))
    if fields is None:
        return None
    number = reader.port(fields, "number", path, required=True)
    name = reader.string(fields, "name", path, required=True)
    if name and DNS_LABEL.fullmatch(name) is None:
        reader.error(
            join_path(path, "name"),
            f'"{name}" is not a port name (a DNS label: lower-case letters, digits, "-")',
        )
    protocol = read_port_protocol(reader, fields, path)
    target_port = reader.port(fields, "targetPort", path)
    if number is None or name is None or protocol is None:
        return None
    carried = carried_as(protocol)
    if carried is None:
        return reader.paths.remember(NotCarriedPort(number, name, protocol), path)
    return ServicePort(number=number, name=name, protocol=carried, target_port=target_port)


def _workload_selector(reader: FieldReader, spec: Fields) -> dict[str, str] | None:
    selector = reader.child_mapping(spec, "workloadSelector", "spec", ("labels",))
    if selector is None:
        return None
    # Istio accepts an empty selector; like any label selector it then selects everything.
    labels = reader.string_map(selector, "labels", "spec.workloadSelector")
    for key, value in labels.items():
        if "*" in key or "*" in value:
            reader.error(
                join_path("spec.workloadSelector.labels", key), "a selector cannot hold wildcards"
            )
    return labels


def parse_workload_entry(reader: FieldReader, spec: Fields, meta: Meta) -> WorkloadEntry | None:
    entry = parse_workload_entry_spec(reader, spec, "spec")
    if entry is None:
        return None
    return WorkloadEntry(meta=meta, spec=entry)


def parse_workload_entry_spec(
    reader: FieldReader, fields: Fields, path: str
) -> WorkloadEntrySpec | None:
    """The fields a WorkloadEntry spec shares with a ServiceEntry endpoint."""
    network = reader.string(fields, "network", path)
    # Istio lets an endpoint of another network go without an address: its network's
    # gateway is the way in.
    address = reader.string(fields, "address", path, required=network is None)
    ports = _port_map(reader, fields, path)
    labels = reader.string_map(fields, "labels", path)
    weight = reader.integer(fields, "weight", path, minimum=0, maximum=2**32 - 1)
    service_account = reader.string(fields, "serviceAccount", path)
    locality = read_locality(reader, fields, "locality", path)
    if service_account is not None and DNS_SUBDOMAIN.fullmatch(service_account) is None:
        reader.error(
            join_path(path, "serviceAccount"),
            f'"{service_account}" is not a service account name (lower-case DNS subdomain)',
        )
    if network is not None:
        reader.warning(
            join_path(path, "network"),
            f"{NOT_IMPLEMENTED_PREFIX}: the endpoint is reached directly, never through "
            "its network's gateway"
            + ("" if address else "; without an address it gets no traffic"),
        )
    if not address:
        return None
    if address.startswith("unix://"):
        problem = _unix_address_problem(address, ports)
        if problem is not None:
            reader.error(join_path(path, "address"), problem)
        else:
            reader.warning(
                join_path(path, "address"),
                "unix domain sockets are not supported yet: this endpoint gets no traffic",
            )
        return None
    return WorkloadEntrySpec(
        address=address,
        ports=ports,
        labels=labels,
        weight=weight,
        service_account=service_account,
        locality=locality,
    )


def _unix_address_problem(address: str, ports: dict[str, int]) -> str | None:
    """Istio's rules for a socket address (checked though such endpoints are not used yet)."""
    socket = address.removeprefix("unix://")
    if not (socket.startswith("/") or socket.startswith("@")):
        return "a unix socket must be an absolute path or an abstract socket (@name)"
    if socket.endswith("/"):
        return "a unix socket cannot be a directory"
    if ports:
        return "an endpoint on a unix socket cannot have ports"
    return None


def _port_map(reader: FieldReader, fields: Fields, path: str) -> dict[str, int]:
    raw = fields.get("ports")
    if raw is None:
        return {}
    ports_path = join_path(path, "ports")
    if not isinstance(raw, dict):
        reader.error(ports_path, f"expected a mapping of port name to number, got {describe(raw)}")
        return {}
    found: dict[str, int] = {}
    for name in raw:
        if not isinstance(name, str) or PORT_NAME.fullmatch(name) is None:
            reader.error(
                join_path(ports_path, str(name)),
                "port names are letters, digits and inner dashes (the ServiceEntry's port names)",
            )
            continue
        number = reader.port(cast(Fields, raw), name, ports_path, required=True)
        if number is not None:
            found[name] = number
    return found


def is_ip_address(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True
