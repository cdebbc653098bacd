"""Envoy's TCP proxy: a connection's bytes to one cluster, or split between several by weight.

Every opaque (TCP, TLS) chain of every listener ends in this filter: a sidecar's upstream
ports and inbound TCP chains, the transparent outbound listener's TCP chains, the gateway's
TCP and TLS passthrough servers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from pilotfish.translate.proto_values import pack

TCP_PROXY_FILTER_NAME = "envoy.filters.network.tcp_proxy"


@dataclass(frozen=True)
class WeightedCluster:
    name: str
    weight: int = 1


@dataclass(frozen=True)
class TcpTelemetry:
    """What one TCP proxy gets from telemetry: its access logs (Envoy's TCP gRPC logger for
    the ``istio_tcp_*`` metrics) and how often a long connection reports."""

    access_logs: tuple[accesslog_pb2.AccessLog, ...] = ()
    access_log_options: tcp_proxy_pb2.TcpProxy.TcpAccessLogOptions | None = field(default=None)


NO_TCP_TELEMETRY = TcpTelemetry()


def tcp_proxy_filter(
    stat_prefix: str,
    clusters: Sequence[WeightedCluster],
    telemetry: TcpTelemetry = NO_TCP_TELEMETRY,
) -> listener_components_pb2.Filter:
    """One cluster as ``cluster``; several as ``weighted_clusters`` (weights are relative)."""
    if not clusters:
        raise ValueError("a TCP proxy needs at least one cluster")
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix, access_log=telemetry.access_logs)
    if len(clusters) == 1:
        proxy.cluster = clusters[0].name
    else:
        for chosen in clusters:
            proxy.weighted_clusters.clusters.add(name=chosen.name, weight=chosen.weight)
    if telemetry.access_log_options is not None:
        proxy.access_log_options.CopyFrom(telemetry.access_log_options)
    return listener_components_pb2.Filter(name=TCP_PROXY_FILTER_NAME, typed_config=pack(proxy))
