"""networking.istio.io Gateway -> ``model.Gateway``: HTTP servers, HTTPS ones that terminate TLS
with certificates from files, TCP servers, and TLS (or HTTPS) servers that pass TLS through."""

from __future__ import annotations

from typing import cast

from pilotfish.load import parse_tls
from pilotfish.load.fields import FieldReader, Fields
from pilotfish.load.parse_protocols import ISTIO_PROTOCOLS, names_http, read_port_protocol
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
# Istio carries these as plain TCP at a gateway (without its protocol filters).
TCP_PROTOCOLS = ("TCP", "MONGO", "MYSQL", "REDIS")
TLS_MODES = (*parse_tls.SERVER_MODES, *parse_tls.SERVER_MODES_NOT_SUPPORTED)
PASSTHROUGH = "PASSTHROUGH"
# Valid for Istio, not carried here: what a user would miss.
MODES_NOT_CARRIED = {
    "AUTO_PASSTHROUGH": "AUTO_PASSTHROUGH (routing by the mesh's own SNI names, "
    "outbound_.<port>_.<subset>_.<host>, without VirtualServices, between networks) is not "
    "carried by Pilotfish",
    "ISTIO_MUTUAL": "ISTIO_MUTUAL at a gateway (clients that present mesh certificates) is not "
    "carried by Pilotfish",
}
PASSTHROUGH_IGNORES = (
    "serverCertificate",
    "privateKey",
    "caCertificates",
    "credentialName",
    "caCertCredentialName",
    "httpsRedirect",
    "minProtocolVersion",
    "maxProtocolVersion",
)


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
    _warn_tcp_sharing_a_port(reader, servers)
    return Gateway(meta=meta, selector=selector, servers=tuple(servers))


def _warn_tcp_sharing_a_port(reader: FieldReader, servers: list[GatewayServer]) -> None:
    """A TCP server's connections cannot be told from those of other servers on its port
    (Istio reports the conflict too): the port serves the others, and the TCP one gets none."""
    for server in servers:
        others = [s for s in servers if s.port == server.port and s.protocol != "TCP"]
        path = reader.paths.path_of(server)
        if server.protocol == "TCP" and others and path is not None:
            reader.warning(
                join_path(path, "port"),
                f"port {server.port} also has {others[0].protocol} servers: this TCP server "
                "gets no connections (give it a port of its own)",
            )


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
    protocol = None
    if "protocol" not in port:
        reader.error(join_path(port_path, "protocol"), "required field is missing")
    elif port["protocol"] in (None, ""):
        # Unlike a ServiceEntry port, a server port is never detected nor named: Istio
        # refuses an empty protocol.
        reader.error(
            join_path(port_path, "protocol"),
            f"must not be empty: a Gateway server needs one of {', '.join(ISTIO_PROTOCOLS)}",
        )
    else:
        protocol = read_port_protocol(reader, port, port_path)
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
    if protocol in TLS_PROTOCOLS:
        if tls is None:
            return None  # reported above
        return _tls_server(reader, tls, tls_path, number, port_name, protocol, hosts, directory)
    if protocol in TCP_PROTOCOLS:
        if tls is not None:
            reader.error(tls_path, f"a {protocol} server has no TLS settings (Istio refuses them)")
            return None
        return reader.paths.remember(GatewayServer(number, port_name, "TCP", hosts), path)
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


def _tls_server(
    reader: FieldReader,
    tls: object,
    tls_path: str,
    number: int,
    port_name: str,
    protocol: str,
    hosts: tuple[str, ...],
    directory: str,
) -> GatewayServer | None:
    """An HTTPS or TLS server: PASSTHROUGH (Istio's default mode) routes connections by SNI
    to ``tls`` routes; HTTPS with SIMPLE or MUTUAL terminates and serves HTTP routes."""
    fields = reader.mapping(
        tls, tls_path, parse_tls.SERVER_FIELDS, parse_tls.SERVER_NOT_IMPLEMENTED
    )
    if fields is None:
        return None
    mode = reader.choice(fields, "mode", tls_path, TLS_MODES) or (
        PASSTHROUGH if fields.get("mode") is None else None
    )
    if mode is None:
        return None  # reported
    not_served = "this server is not served (the other servers of this Gateway are)"
    if mode in MODES_NOT_CARRIED:
        reader.warning(join_path(tls_path, "mode"), f"{MODES_NOT_CARRIED[mode]}: {not_served}")
        return None
    if mode == PASSTHROUGH:
        for key in PASSTHROUGH_IGNORES:
            if fields.get(key) is not None:
                # Istio warns the same: nothing is terminated, so nothing of this is used.
                reader.warning(
                    join_path(tls_path, key),
                    "ignored with PASSTHROUGH: connections are passed through by SNI, "
                    "never terminated here",
                )
        return GatewayServer(number, port_name, "TLS", hosts, passthrough=True)
    if protocol != HTTPS:
        reader.warning(
            join_path(tls_path, "mode"),
            f"a TLS server that terminates ({mode}, then tcp routes) is not carried by "
            f"Pilotfish yet: {not_served}",
        )
        return None
    settings = parse_tls.read_server_tls(reader, fields, tls_path, directory)
    if fields.get("httpsRedirect"):
        reader.warning(
            join_path(tls_path, "httpsRedirect"),
            "ignored on an HTTPS server: its requests already arrive over TLS",
        )
    if settings is None:
        return None
    return GatewayServer(number, port_name, "HTTP", hosts, tls=settings)
