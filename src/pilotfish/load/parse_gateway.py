"""networking.istio.io Gateway -> ``model.Gateway`` (plain-text HTTP servers)."""

from __future__ import annotations

from pilotfish.load.fields import FieldReader, Fields
from pilotfish.load.parse_protocols import read_protocol
from pilotfish.load.yaml_source import join_path
from pilotfish.model.resources import Gateway, GatewayServer, Meta

SPEC_FIELDS = ("selector", "servers")
SERVER_FIELDS = ("port", "hosts")
SERVER_NOT_IMPLEMENTED = ("tls", "bind", "defaultEndpoint", "name")
PORT_FIELDS = ("number", "name", "protocol")
PORT_NOT_IMPLEMENTED = ("targetPort",)


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
    protocol = read_protocol(reader, port, "protocol", port_path, required=True)
    name = reader.string(port, "name", port_path)
    if number is None or protocol is None or not hosts:
        return None
    return GatewayServer(
        port=number,
        # Istio requires a port name; it only labels stats, so we derive one when absent.
        port_name=name or f"{protocol.lower()}-{number}",
        protocol=protocol,
        hosts=hosts,
    )
