"""The `pilotfish up` banner names each gateway server as what a client connects to."""

from __future__ import annotations

from pilotfish.cli.main import gateway_server_address
from pilotfish.model.resources import GatewayServer
from pilotfish.model.security import ServerTLSSettings


def server(protocol: str, **fields: object) -> GatewayServer:
    return GatewayServer(4000, "p", protocol, ("*",), **fields)  # type: ignore[arg-type]


def test_only_http_servers_get_a_url() -> None:
    assert gateway_server_address(server("HTTP")) == "http://127.0.0.1:4000/"
    terminated = ServerTLSSettings("SIMPLE", "/c.pem", "/k.pem")
    assert gateway_server_address(server("HTTP", tls=terminated)) == "https://127.0.0.1:4000/"
    assert gateway_server_address(server("TCP")) == "tcp 127.0.0.1:4000"
    assert gateway_server_address(server("TLS", passthrough=True)) == "tls 127.0.0.1:4000"
