"""Port protocols as Istio selects them, shared by ServiceEntry ports, Gateway servers and
Workloads.

Two steps: the Istio protocol a port names (Istio's own names, upper-case), then how Pilotfish
carries it (``model.Protocol``), which is ``None`` for the few it does not carry (UDP).
"""

from __future__ import annotations

from pilotfish.load.fields import FieldReader, Fields, describe
from pilotfish.load.yaml_source import join_path
from pilotfish.model.resources import Protocol

# Every name Istio's protocol.Parse knows (it compares them case-insensitively).
ISTIO_PROTOCOLS = (
    "HTTP",
    "HTTP2",
    "GRPC",
    "GRPC-WEB",
    "HTTPS",
    "TLS",
    "TCP",
    "MONGO",
    "MYSQL",
    "REDIS",
    "UDP",
    "HTTP_PROXY",
)
GRPC_WEB = "GRPC-WEB"
UDP = "UDP"
HTTP_PROXY = "HTTP_PROXY"
_CARRIED_AS: dict[str, Protocol] = {
    "HTTP": "HTTP",
    "HTTP2": "HTTP2",
    "GRPC": "GRPC",
    # gRPC-Web is HTTP requests: they can be proxied as they are (the caller warns).
    GRPC_WEB: "HTTP",
    "TCP": "TCP",
    # Istio carries these as plain TCP unless a feature flag turns on its protocol filters.
    "MONGO": "TCP",
    "MYSQL": "TCP",
    "REDIS": "TCP",
    # A service port speaking HTTPS is TLS to the mesh: routed by SNI, never terminated.
    "HTTPS": "TLS",
    "TLS": "TLS",
}
# Kubernetes' standard appProtocol values (Istio maps these and only these for appProtocol).
_KUBERNETES_APP_PROTOCOLS = {
    "kubernetes.io/h2c": "HTTP2",
    "kubernetes.io/ws": "HTTP",
    "kubernetes.io/wss": "HTTPS",
}
# Istio never detects on these (SMTP, DNS, MySQL, MongoDB): their servers speak first, so a
# proxy waiting for the client's first bytes would wait forever. Unnamed, they are TCP.
SERVER_FIRST_PORTS = frozenset({25, 53, 3306, 27017})
AUTO: Protocol = "AUTO"
GRPC_WEB_WARNING = (
    "GRPC-WEB is carried as plain HTTP: requests are proxied unchanged, never translated to gRPC"
)


def istio_protocol(value: str) -> str | None:
    """Istio's name for ``value`` (any case), or None when Istio knows no such protocol."""
    upper = value.upper()
    return upper if upper in ISTIO_PROTOCOLS else None


def protocol_of_name(name: str) -> str | None:
    """The protocol a Kubernetes-style port name carries: ``<protocol>[-<suffix>]``
    (``http-web``, ``grpc``, ``grpc-web-api``, ``tcp-db``), None when it names none."""
    if name[: len(GRPC_WEB)].upper() == GRPC_WEB:
        return GRPC_WEB
    return istio_protocol(name.split("-", 1)[0])


def protocol_of_app_protocol(value: str) -> str | None:
    """Kubernetes' ``appProtocol``: its standard ``kubernetes.io/`` names, else read like a
    port name (``grpc``, ``http-web``), as Istio does."""
    known = _KUBERNETES_APP_PROTOCOLS.get(value)
    return known if known is not None else protocol_of_name(value)


def select_protocol(
    *,
    protocol: str | None = None,
    app_protocol: str | None = None,
    port_name: str | None = None,
    port: int | None = None,
) -> str:
    """Istio's order for a Kubernetes Service port, after an explicit ``protocol``: the
    ``appProtocol`` (which then hides the name, as in Istio), else the name, else TCP on a
    server-first port, else ``AUTO``. Returns an Istio protocol name or ``AUTO``."""
    if protocol is not None:
        return protocol
    if app_protocol is not None:
        found = protocol_of_app_protocol(app_protocol)
    elif port_name is not None:
        found = protocol_of_name(port_name)
    else:
        found = None
    if found is not None:
        return found
    return "TCP" if port in SERVER_FIRST_PORTS else AUTO


def carried_as(protocol: str) -> Protocol | None:
    """How Pilotfish carries an Istio protocol (or ``AUTO``); None: not carried (UDP)."""
    if protocol == AUTO:
        return AUTO
    return _CARRIED_AS.get(protocol)


def read_istio_protocol(reader: FieldReader, fields: Fields, key: str, path: str) -> str | None:
    """``fields[key]`` as an Istio protocol name; None (with an error) for one Istio does not
    know, or when unset or empty (Istio's "detect it")."""
    value = fields.get(key)
    if value is None or value == "":
        return None
    field_path = join_path(path, key)
    if not isinstance(value, str):
        reader.error(field_path, f"expected a string, got {describe(value)}")
        return None
    protocol = istio_protocol(value)
    if protocol is None:
        reader.error(
            field_path,
            f'"{value}" is not a protocol Istio knows (one of {", ".join(ISTIO_PROTOCOLS)})',
        )
    return protocol


def read_port_protocol(reader: FieldReader, fields: Fields, path: str) -> str | None:
    """A ServiceEntry or Gateway port's Istio protocol: ``protocol``, else the prefix of its
    ``name`` (as Istio reads a Kubernetes port's), else ``AUTO``; None after an error.

    Istio itself reads only ``protocol`` on a ServiceEntry and detects the rest; the name is
    read too because detection can never work for a protocol whose server speaks first
    (MySQL, SMTP), which a ``tcp-db`` name already tells. GRPC-WEB comes back as HTTP, with a
    warning.
    """
    value = fields.get("protocol")
    explicit = None
    if value is not None and value != "":
        explicit = read_istio_protocol(reader, fields, "protocol", path)
        if explicit is None:
            return None
    name = fields.get("name")
    protocol = select_protocol(protocol=explicit, port_name=name if isinstance(name, str) else None)
    if protocol == GRPC_WEB:
        reader.warning(join_path(path, "protocol" if explicit else "name"), GRPC_WEB_WARNING)
        return "HTTP"
    return protocol


def names_http(protocol: str) -> bool:
    """An Istio protocol that Pilotfish serves with an HTTP connection manager."""
    return carried_as(protocol) in ("HTTP", "HTTP2", "GRPC")


def not_carried_consequence(protocol: str) -> str:
    """What does not happen for a port whose protocol ``carried_as`` refuses."""
    if protocol == UDP:
        return "Envoy sidecars proxy TCP only, so UDP traffic to it bypasses the mesh"
    if protocol == HTTP_PROXY:
        return (
            "HTTP_PROXY names a Sidecar egress proxy port in Istio, which Pilotfish does not "
            "have; nothing listens for it"
        )
    return f"{protocol} traffic to it does not go through the mesh"
