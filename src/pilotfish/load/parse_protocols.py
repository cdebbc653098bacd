"""Port protocols, shared by Gateway servers, ServiceEntry ports and Workloads."""

from __future__ import annotations

from typing import cast

from pilotfish.load.fields import FieldReader, Fields
from pilotfish.model.resources import Protocol

SUPPORTED = ("HTTP", "HTTP2", "GRPC")
# Real Istio protocols that Pilotfish cannot carry yet: each gets "not supported yet"
# instead of "must be one of", so users know the spelling was right.
NOT_SUPPORTED = ("HTTPS", "TLS", "TCP", "GRPC-WEB", "MONGO", "MYSQL", "REDIS", "UDP")


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
