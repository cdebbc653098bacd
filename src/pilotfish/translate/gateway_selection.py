"""Which Gateway servers a gateway proxy runs, and which VirtualServices bind to them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import Gateway, GatewayServer, VirtualService, selector_matches
from pilotfish.model.security import ServerTLSSettings
from pilotfish.model.services import MeshView
from pilotfish.translate.naming import gateway_route_config_name, gateway_tls_route_config_name

_HTTP_PROTOCOLS = ("HTTP", "HTTP2", "GRPC")


def gateway_selects(gateway: Gateway, labels: Mapping[str, str]) -> bool:
    """An empty selector selects every gateway proxy."""
    return selector_matches(gateway.selector, labels)


def http_servers_by_port(
    view: MeshView, node: ProxyNode
) -> dict[int, tuple[tuple[Gateway, GatewayServer], ...]]:
    """HTTP servers of the Gateways selecting ``node``, grouped by port, ports ascending."""
    if node.kind != "gateway":
        return {}
    grouped: dict[int, list[tuple[Gateway, GatewayServer]]] = {}
    for gateway in view.config.gateways:
        if not gateway_selects(gateway, node.labels):
            continue
        for server in gateway.servers:
            if server.protocol in _HTTP_PROTOCOLS:
                grouped.setdefault(server.port, []).append((gateway, server))
    return {port: tuple(grouped[port]) for port in sorted(grouped)}


@dataclass(frozen=True)
class GatewayChain:
    """One filter chain of a gateway port: the servers it serves and the route config that
    holds their hosts, and only theirs."""

    route_config: str
    servers: tuple[tuple[Gateway, GatewayServer], ...]
    # For a TLS chain: the server's TLS and the SNI names it answers (() for any name).
    tls: ServerTLSSettings | None = None
    server_names: tuple[str, ...] = ()


def server_names(hosts: Sequence[str]) -> list[str]:
    """A server's hosts as SNI names; ``[]`` (any name) when one of them is ``*``."""
    names = [host.split("/", 1)[1] if "/" in host else host for host in hosts]
    return [] if "*" in names else names


def gateway_chains(
    port: int, servers: Sequence[tuple[Gateway, GatewayServer]]
) -> list[GatewayChain]:
    """The chains of ``port``: one per TLS server, told apart by SNI, then one for all its
    plaintext servers.

    Each TLS server gets a route config of its own: with a shared one, a client that passed
    one server's handshake (say, without the client certificate another server requires)
    could ask for that other server's hosts in its Host header. For the same reason the
    plaintext chain never sees the TLS servers' hosts. The first TLS server to name an SNI
    name keeps it (Envoy refuses two chains with the same match); one left with none has no
    chain.
    """
    chains: list[GatewayChain] = []
    taken: set[str] = set()
    for gateway, server in servers:
        if server.tls is None:
            continue
        fresh = [n for n in server_names(server.hosts) or ["*"] if n not in taken]
        if not fresh:
            continue
        taken.update(fresh)
        index = next(i for i, s in enumerate(gateway.servers) if s is server)
        name = gateway_tls_route_config_name(port, gateway.meta.namespace, gateway.meta.name, index)
        chains.append(
            GatewayChain(
                name, ((gateway, server),), server.tls, tuple(n for n in fresh if n != "*")
            )
        )
    plaintext = tuple((g, s) for g, s in servers if s.tls is None)
    if plaintext:
        chains.append(GatewayChain(gateway_route_config_name(port), plaintext))
    return chains


def binds_to(service: VirtualService, gateway: Gateway) -> bool:
    """A bare gateway name refers to the VirtualService's own namespace, as in Istio."""
    qualified = f"{gateway.meta.namespace}/{gateway.meta.name}"
    same_namespace = service.meta.namespace == gateway.meta.namespace
    names = {qualified, gateway.meta.name} if same_namespace else {qualified}
    return any(ref in names for ref in service.gateways)


def gateway_binding(gateway: Gateway) -> str:
    """How match ``gateways`` name this gateway, once qualified: "namespace/name"."""
    return f"{gateway.meta.namespace}/{gateway.meta.name}"


def server_allows(server: GatewayServer, host: str) -> bool:
    for allowed in server.hosts:
        # Istio lets servers write "namespace/host"; the namespace part scopes config
        # visibility, which we do not model, so only the host part counts here.
        pattern = allowed.split("/", 1)[1] if "/" in allowed else allowed
        if pattern in ("*", host):
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False
