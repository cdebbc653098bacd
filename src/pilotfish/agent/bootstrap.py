"""Envoy's bootstrap for a Pilotfish proxy: who it is, where its admin listens, where xDS lives.

Pure: returns a plain JSON-serialisable dict in Envoy's v3 JSON mapping, so it can be written
to a file, diffed in tests and checked against the Bootstrap proto without touching protobuf here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Any

from pilotfish.model.identity import SDS_CLUSTER_NAME
from pilotfish.model.keepalive import XdsKeepalive, milliseconds
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.telemetry import TELEMETRY_CLUSTER
from pilotfish.translate.connect_tunnel import (
    INTERNAL_LISTENER_EXTENSION,
    INTERNAL_LISTENER_TYPE,
)
from pilotfish.translate.telemetry import XDS_CLUSTER_NAME

ADMIN_HOST = "127.0.0.1"
# Envoy's Zipkin reporter posts its buffered spans every 5 s by default, or as soon as 5 wait
# (``tracing.zipkin.min_flush_spans``): flushing every second shows a trace within about a
# second. The batch size stays Envoy's: bigger batches cost Envoy more CPU, not less
# (benchmarks/telemetry_candidates.py).
ZIPKIN_RUNTIME = {"tracing.zipkin.flush_interval_ms": 1000}

MAX_DOWNSTREAM_CONNECTIONS = 50_000
INTERNAL_LISTENER_BOOTSTRAP_EXTENSION = {
    "name": INTERNAL_LISTENER_EXTENSION,
    "typed_config": {"@type": INTERNAL_LISTENER_TYPE},
}

_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_DOWNSTREAM_CONNECTIONS_CONFIG = (
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)

# Envoy's default backoff for re-establishing the ADS stream is 500 ms growing to 30 s. After a
# control-plane restart that leaves every proxy up to 30 s behind, so we cap it at 1 s: the
# retry_policy of GrpcService.EnvoyGrpc is, per its proto documentation, only honoured for xDS
# streams, which is exactly what we want (max_interval defaults to 10x base when unset).
_XDS_RECONNECT_BASE = "0.1s"
_XDS_RECONNECT_MAX = "1s"

# A dead control plane should be noticed by the kernel, not after the OS default of two hours.
_XDS_KEEPALIVE = {"keepalive_time": 10, "keepalive_interval": 5, "keepalive_probes": 3}


def build_bootstrap(
    node: ProxyNode,
    *,
    xds_address: tuple[str, int],
    admin_port: int,
    delta: bool = True,
    keepalive: XdsKeepalive | None = None,
    sds_socket: Path | None = None,
    telemetry_address: tuple[str, int] | None = None,
    admin_host: str = ADMIN_HOST,
) -> dict[str, Any]:
    """Envoy v3 bootstrap for ``node``, fetching everything over ADS from ``xds_address``.

    ``admin_port`` 0 lets Envoy choose; the caller then learns the port from
    ``--admin-address-path`` (``EnvoyProcess`` does this). ``keepalive`` must be the policy
    the xDS server was started with (both default to ``XdsKeepalive()``). With
    ``sds_socket``, the static cluster ``SDS_CLUSTER_NAME`` reaches the agent's SDS server
    there, for the TLS contexts that name their secrets. With ``telemetry_address`` (the
    control plane's admin port), the static cluster ``TELEMETRY_CLUSTER`` reaches it and
    the node says so in its metadata, so its listeners get tracing.

    A fixed ``admin_port`` goes into the node's metadata too (ADMIN_ADDRESS), and a node with
    an ``outlier_log`` gets it as the event log of outlier detection: that is where the control
    plane reads what this proxy sees of its endpoints, and when and why it ejected one.
    ``admin_host`` is where the admin interface listens: a proxy in a network namespace of
    its own binds its replica's address, the one the control plane can reach.
    """
    clusters = [_xds_cluster(*xds_address, keepalive or XdsKeepalive())]
    if sds_socket is not None:
        clusters.append(_sds_cluster(sds_socket))
    if telemetry_address is not None:
        clusters.append(_telemetry_cluster(*telemetry_address))
    node = dataclasses.replace(node, telemetry=telemetry_address is not None)
    if admin_port:
        node = dataclasses.replace(node, admin_address=f"{admin_host}:{admin_port}")
    bootstrap: dict[str, Any] = {
        "node": {
            "id": node.id,
            # As Istio's "<canonical service>.<namespace>": Zipkin names spans' service so.
            "cluster": f"{node.canonical_service}.{node.namespace}",
            "metadata": node.to_metadata(),
            **_locality(node.locality),
        },
        "admin": {"address": _socket_address(admin_host, admin_port)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": XDS_CLUSTER_NAME,
                            "retry_policy": {
                                "retry_back_off": {
                                    "base_interval": _XDS_RECONNECT_BASE,
                                    "max_interval": _XDS_RECONNECT_MAX,
                                }
                            },
                        }
                    }
                ],
            },
            "cds_config": _via_ads(),
            "lds_config": _via_ads(),
        },
        "static_resources": {"clusters": clusters},
        # The sidecar's CONNECT tunnels to HTTP ports enter an internal listener.
        "bootstrap_extensions": [INTERNAL_LISTENER_BOOTSTRAP_EXTENSION],
        "overload_manager": _connection_limit(),
        # A static layer plus an admin layer: runtime can be inspected and changed
        # through /runtime_modify while debugging, and nothing is read from disk.
        "layered_runtime": {
            "layers": [
                {"name": "static", "static_layer": dict(ZIPKIN_RUNTIME)},
                {"name": "admin", "admin_layer": {}},
            ]
        },
    }
    if node.outlier_log is not None:
        bootstrap["cluster_manager"] = {"outlier_detection": {"event_log_path": node.outlier_log}}
    return bootstrap


def _connection_limit() -> dict[str, Any]:
    # Envoy 1.40 warns at startup when nothing caps downstream connections (and the older
    # runtime key for it is deprecated). A generous explicit cap documents the choice.
    return {
        "resource_monitors": [
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": f"type.googleapis.com/{_DOWNSTREAM_CONNECTIONS_CONFIG}",
                    "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                },
            }
        ]
    }


def _via_ads() -> dict[str, Any]:
    return {"ads": {}, "resource_api_version": "V3"}


def _xds_cluster(host: str, port: int, keepalive: XdsKeepalive) -> dict[str, Any]:
    return {
        "name": XDS_CLUSTER_NAME,
        # STATIC needs an IP literal; a name such as "localhost" is resolved by Envoy instead.
        "type": "STATIC" if _is_ip_literal(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER_NAME,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address(host, port)}}]}
            ],
        },
        "typed_extension_protocol_options": _http2(
            {
                "connection_keepalive": {
                    "interval": _duration(keepalive.proxy_ping_interval),
                    "timeout": _duration(keepalive.proxy_ping_timeout),
                },
            }
        ),
        "upstream_connection_options": {"tcp_keepalive": dict(_XDS_KEEPALIVE)},
    }


def _telemetry_cluster(host: str, port: int) -> dict[str, Any]:
    # Plain HTTP/1.1 to the admin server (its Zipkin API), Envoy's default protocol.
    return {
        "name": TELEMETRY_CLUSTER,
        "type": "STATIC" if _is_ip_literal(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": TELEMETRY_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address(host, port)}}]}
            ],
        },
    }


def _sds_cluster(socket_path: Path) -> dict[str, Any]:
    # A Unix socket to a process on this machine: no keepalive needed, a dead agent is seen
    # at once as a closed connection.
    return {
        "name": SDS_CLUSTER_NAME,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": SDS_CLUSTER_NAME,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(socket_path)}}}}]}
            ],
        },
        "typed_extension_protocol_options": _http2({}),
    }


def _http2(options: dict[str, Any]) -> dict[str, Any]:
    # xDS and SDS are gRPC, so HTTP/2 is mandatory: without it Envoy never completes a stream
    # and logs nothing at the default level.
    return {
        _HTTP_PROTOCOL_OPTIONS: {
            "@type": f"type.googleapis.com/{_HTTP_PROTOCOL_OPTIONS}",
            "explicit_http_config": {"http2_protocol_options": options},
        }
    }


def _duration(seconds: float) -> str:
    return f"{milliseconds(seconds) / 1000:.3f}s"


def _locality(locality: str | None) -> dict[str, Any]:
    """Envoy's Node.locality, so its own stats and admin pages say where it is (Pilotfish
    reads the caller's locality from the LOCALITY metadata)."""
    if not locality:
        return {}
    names = ("region", "zone", "sub_zone")
    return {"locality": dict(zip(names, locality.split("/", 2), strict=False))}


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
