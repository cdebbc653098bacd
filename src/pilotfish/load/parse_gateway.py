"""networking.istio.io Gateway -> ``model.Gateway`` (HTTP servers, and HTTPS ones that terminate
TLS with certificates from files)."""

from __future__ import annotations

from typing import cast

from pilotfish.load import parse_tls
from pilotfish.load.fields import FieldReader, Fields
from pilotfish.load.parse_protocols import names_http, read_port_protocol
from pilotfish.load.yaml_source import index_path, join_path
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
HTTPS = "HTTPS"


def parse_gateway(reader: FieldReader, spec: Fields, meta: Meta, directory: str) -> Gateway:
    """``directory``: the file's folder, which certificate file names are relative to."""
    selector = reader.string_map(spec, "selector", "spec")
    servers: list[GatewayServer] = []
    # (port, SNI name) -> the HTTPS server that terminates it; a later one never sees it.
    terminated: dict[tuple[int, str], str] = {}
    for item, path in reader.items(spec, "servers", "spec", required=True):
        server = _server(reader, item, path, directory)
        if server is None:
            continue
        servers.append(server)
        if server.tls is None:
            continue
        for index, host in enumerate(server.hosts):
            name = host.split("/", 1)[-1]
            first = terminated.setdefault((server.port, name), path)
            if first != path:
                reader.warning(
                    index_path(join_path(path, "hosts"), index),
                    f"{name} on port {server.port} is already served by {first}: TLS "
                    "connections for it get that server's certificate",
                )
    return Gateway(meta=meta, selector=selector, servers=tuple(servers))


def _server(reader: FieldReader, value: object, path: str, directory: str) -> GatewayServer | None:
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
    # Istio requires a port name; it only labels stats, so we derive one when absent.
    port_name = name or f"{protocol.lower()}-{number}"
    tls_path = join_path(path, "tls")
    if protocol == HTTPS:
        if tls is None:
            return None  # reported above
        fields = reader.mapping(
            tls, tls_path, parse_tls.SERVER_FIELDS, parse_tls.SERVER_NOT_IMPLEMENTED
        )
        settings = (
            parse_tls.read_server_tls(reader, fields, tls_path, directory) if fields else None
        )
        if fields is not None and fields.get("httpsRedirect"):
            reader.warning(
                join_path(tls_path, "httpsRedirect"),
                "ignored on an HTTPS server: its requests already arrive over TLS",
            )
        if settings is None:
            return None
        return GatewayServer(number, port_name, "HTTP", hosts, tls=settings)
    if not names_http(protocol):
        reader.warning(
            port_path,
            f"the {protocol} server on port {number} is not served: Pilotfish does not carry "
            f"{protocol} yet (the other servers of this Gateway are)",
        )
        return None
    https_redirect = False
    if tls is not None:
        fields = reader.mapping(
            tls, tls_path, parse_tls.SERVER_FIELDS, parse_tls.SERVER_NOT_IMPLEMENTED
        )
        https_redirect = bool(fields and reader.boolean(fields, "httpsRedirect", tls_path))
        others = sorted(k for k in (fields or {}) if k != "httpsRedirect")
        if others:
            reader.warning(
                join_path(tls_path, others[0]),
                f"ignored on a plain {protocol} server (only httpsRedirect applies): its "
                "requests are served without TLS",
            )
    return GatewayServer(
        port=number,
        port_name=port_name,
        protocol=cast(Protocol, protocol),
        hosts=hosts,
        https_redirect=https_redirect,
    )
