"""Which Gateway servers a gateway proxy runs, and which VirtualServices bind to them."""

from __future__ import annotations

from collections.abc import Mapping

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import Gateway, GatewayServer, VirtualService, selector_matches
from pilotfish.model.services import MeshView

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
