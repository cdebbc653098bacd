"""Names of generated resources, following Istio's conventions (see docs/architecture.md)."""

from __future__ import annotations

OUTBOUND_LISTENER = "outbound"
INBOUND_LISTENER = "inbound"
OUTBOUND_ROUTE_CONFIG = "outbound"
# The internal listener (and the cluster reaching it) where the HTTP tunnelled by a CONNECT
# to an HTTP port of a service is parsed again and routed with the ``outbound`` routes.
OUTBOUND_TUNNEL_LISTENER = "outbound_tunnel"
OUTBOUND_TUNNEL_CLUSTER = "outbound_tunnel"


def outbound_cluster_name(port: int, hostname: str, subset: str | None = None) -> str:
    return f"outbound|{port}|{subset or ''}|{hostname}"


def inbound_cluster_name(app_port: int) -> str:
    return f"inbound|{app_port}||"


def inbound_route_config_name(app_port: int) -> str:
    return f"inbound|{app_port}"


def gateway_listener_name(port: int) -> str:
    return f"gateway_{port}"


def gateway_route_config_name(port: int) -> str:
    return f"http.{port}"


def gateway_tls_route_config_name(port: int, namespace: str, gateway: str, index: int) -> str:
    """The route config of one TLS server: ``index`` is its place in the Gateway's servers."""
    return f"https.{port}.{namespace}/{gateway}.{index}"


def outbound_sni(port: int, hostname: str, subset: str | None = None) -> str:
    """Istio's SNI for mesh mTLS: the server's sidecar can tell which cluster was meant."""
    return f"outbound_.{port}_.{subset or ''}_.{hostname}"


def upstream_listener_name(port: int, hostname: str) -> str:
    """A sidecar's loopback port for one Workload ``upstreams`` entry."""
    return f"upstream|{port}|{hostname}"
