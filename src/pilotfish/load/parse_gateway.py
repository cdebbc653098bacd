"""networking.istio.io Gateway -> ``model.Gateway`` (plain-text HTTP servers)."""

from __future__ import annotations

from typing import cast

from pilotfish.load.fields import FieldReader, Fields
from pilotfish.load.parse_protocols import is_carried, read_port_protocol
from pilotfish.load.yaml_source import join_path
from pilotfish.model.resources import Gateway, GatewayServer, Meta, Protocol

SPEC_FIELDS = ("selector", "servers")
SERVER_FIELDS = ("port", "hosts", "tls")
SERVER_NOT_IMPLEMENTED = {
    "bind": "the server listens on every address of the gateway",
    "defaultEndpoint": "requests go to the routed services, not to this endpoint",
    "name": "the name labels nothing",
}
PORT_FIELDS = ("number", "name", "protocol")
PORT_NOT_IMPLEMENTED = {"targetPort": "the gateway listens on the port number itself"}
TLS_PROTOCOLS = ("HTTPS", "TLS")


def parse_gateway(reader: FieldReader, spec: Fields, meta: Meta) -> Gateway:
    selector = reader.string_map(spec, "selector", "spec")
    servers: list[GatewayServer] = []
    for item, path in reader.items(spec, "servers", "spec", required=True):
        server = _server(reader, item, path)
        if server is not None:
            servers.append(server)
    return Gateway(meta=meta, selector=selector, servers=tuple(servers))


def _server(reader: FieldReader, value: object, path: str) -> GatewayServer | None:
    fields = reader.mapping(value, path, SERVER_FIELDS, SERVER_NOT_IMPLEMENTED)
    if fields is None:
        return None
    hosts = reader.string_list(fields, "hosts", path, required=True)
    port = reader.child_mapping(
        fields, "port", path, PORT_FIELDS, PORT_NOT_IMPLEMENTED, required=True
    )
    if port is None:
        return None
    port_path = join_path(path, "port")
    number = reader.port(port, "number", port_path, required=True)
    protocol = read_port_protocol(reader, port, port_path) if "protocol" in port else None
    if protocol is None and "protocol" not in port:
        reader.error(join_path(port_path, "protocol"), "required field is missing")
    name = reader.string(port, "name", port_path)
    tls = fields.get("tls")
    if protocol in TLS_PROTOCOLS and tls is None:
        # Istio refuses these too: without tls there is nothing to terminate or pass through.
        reader.error(join_path(path, "tls"), f"required for a {protocol} server")
    if number is None or protocol is None or not hosts:
        return None
    if not is_carried(protocol):
        reader.warning(
            port_path,
            f"the {protocol} server on port {number} is not served: Pilotfish does not carry "
            f"{protocol} yet (the other servers of this Gateway are)",
        )
        return None
    if tls is not None:
        reader.warning(join_path(path, "tls"), _tls_on_http_server(tls))
    return GatewayServer(
        port=number,
        # Istio requires a port name; it only labels stats, so we derive one when absent.
        port_name=name or f"{protocol.lower()}-{number}",
        protocol=cast(Protocol, protocol),
        hosts=hosts,
    )


def _tls_on_http_server(tls: object) -> str:
    if isinstance(tls, dict) and tls.get("httpsRedirect") is True:
        return (
            "httpsRedirect is not implemented: plain HTTP requests are served as they are, "
            "not redirected to HTTPS"
        )
    return "not implemented on a plain HTTP server: requests are served without TLS"
