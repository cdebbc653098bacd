"""Port protocols, shared by Gateway servers, ServiceEntry ports and Workloads."""

from __future__ import annotations

from typing import cast

from pilotfish.load.fields import FieldReader, Fields
from pilotfish.load.yaml_source import join_path
from pilotfish.model.resources import Protocol

SUPPORTED = ("HTTP", "HTTP2", "GRPC")
# Real Istio protocols that Pilotfish cannot carry yet. A Workload (ours) refuses them; a
# ServiceEntry or Gateway port keeps them as "not carried", with a warning.
NOT_SUPPORTED = ("HTTPS", "TLS", "TCP", "GRPC-WEB", "MONGO", "MYSQL", "REDIS", "UDP")
GRPC_WEB = "GRPC-WEB"
# What a TCP-level protocol needs that Pilotfish lacks, for the warning.
_WHY_NOT_CARRIED = {
    "HTTPS": "TLS",
    "TLS": "TLS",
    "UDP": "UDP",
}


def read_protocol(
    reader: FieldReader, fields: Fields, key: str, path: str, *, required: bool = False
) -> Protocol | None:
    """Istio compares protocol names case-insensitively; we store them upper-case."""
    value = fields.get(key)
    normalized = {**fields, key: value.upper()} if isinstance(value, str) else fields
    chosen = reader.choice(
        normalized, key, path, SUPPORTED, required=required, not_supported=NOT_SUPPORTED
    )
    return cast(Protocol, chosen) if chosen is not None else None


def read_port_protocol(reader: FieldReader, fields: Fields, path: str) -> str | None:
    """A ServiceEntry or Gateway port's protocol, upper-case: one we carry, one Istio knows
    and we do not carry yet (the caller warns), or ``None`` after an error.

    Without ``protocol``, Istio reads it from the port name (``http-web``, ``grpc``); a name
    that says nothing leaves Istio to detect it from the traffic, which Pilotfish does not do:
    such a port is carried as HTTP, with a warning.
    """
    value = fields.get("protocol")
    if value is None or value == "":
        name = fields.get("name")
        prefix = name.split("-", 1)[0].upper() if isinstance(name, str) else ""
        if prefix in SUPPORTED or prefix in NOT_SUPPORTED:
            return prefix
        reader.warning(
            join_path(path, "protocol"),
            "not set and the port name names none: Istio would detect HTTP or TCP from the "
            "traffic; Pilotfish carries it as HTTP (TCP traffic to it will fail)",
        )
        return "HTTP"
    if not isinstance(value, str):
        return read_protocol(reader, fields, "protocol", path)
    protocol = value.upper()
    if protocol == GRPC_WEB:
        # gRPC-Web is HTTP requests: they can be proxied as they are.
        reader.warning(
            join_path(path, "protocol"),
            "GRPC-WEB is carried as plain HTTP: requests are proxied unchanged, never "
            "translated to gRPC",
        )
        return "HTTP"
    if protocol in NOT_SUPPORTED:
        return protocol
    return read_protocol(reader, fields, "protocol", path)


def is_carried(protocol: str) -> bool:
    return protocol in SUPPORTED


def not_carried_consequence(protocol: str) -> str:
    layer = _WHY_NOT_CARRIED.get(protocol, "TCP")
    return f"{layer} traffic to it does not go through the mesh yet"
