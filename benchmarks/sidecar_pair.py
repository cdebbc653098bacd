"""The mesh's sidecar pair for the protocol benchmarks, from hand-written Envoy bootstraps.

client sidecar (one listener per backend: the app's local port for that service, as a
Workload's ``upstreams`` gives it) -> TCP proxy -> server sidecar (one inbound listener per
backend) -> TCP proxy -> the backend. With ``tls=True`` the hop between the sidecars is mutual
TLS as the mesh does it (SPIFFE URI SANs checked by the client, a client certificate required
by the server; ``static_pair.make_certificates``).

The TCP proxies are the mesh's own: ``translate.tcp_proxy.tcp_proxy_filter`` with
``translate.telemetry.tcp_telemetry``'s access loggers, streaming each connection's reports to
a real control plane's access-log service (the ``xds-grpc`` cluster). With ``http2=True`` each
chain is instead the mesh's HTTP connection manager (``translate.listeners
.http_connection_manager`` with ``http_telemetry``: the request log, the peer header, the
local reply bodies; no tracing) routing everything to its cluster over HTTP/2, as a GRPC port
gets it. Only the listeners and clusters around them are written here (they were written before
the translation of TCP listeners was on main; ``mesh_pair`` is the pair ``pilotfish up``
makes, the benchmarks' default). Both Envoys run with the agent's command line
(``static_pair.StaticEnvoy``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import json_format
from static_pair import SPIFFE_ID, PeerFiles, StaticEnvoy, common_tls_context, make_certificates

from pilotfish.agent.ports import free_port
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.telemetry import TelemetrySettings
from pilotfish.translate.listeners import http_connection_manager
from pilotfish.translate.proto_values import pack
from pilotfish.translate.tcp_proxy import WeightedCluster, tcp_proxy_filter
from pilotfish.translate.telemetry import HttpRole, http_telemetry, tcp_telemetry

CONFIG_SOURCE = (
    "hand-written Envoy bootstraps around the mesh's own tcp_proxy_filter + tcp_telemetry "
    "(and http_connection_manager + http_telemetry for HTTP/2), static, no xDS"
)
# (directory name, label in the tables, mTLS between the sidecars) of the TCP pairs
PAIRS = (
    ("pair-plaintext", "static TCP pair (plaintext)", False),
    ("pair-mtls", "static TCP pair (mTLS)", True),
)
_TYPES = "type.googleapis.com/envoy.extensions"


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _cluster(
    name: str, port: int, transport: dict[str, Any] | None = None, http2: bool = False
) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}],
        },
    }
    if transport is not None:
        cluster["transport_socket"] = transport
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{_TYPES}.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def _chain(node: ProxyNode, role: HttpRole, name: str, cluster: str, http2: bool) -> dict[str, Any]:
    if not http2:
        telemetry = tcp_telemetry(node, TelemetrySettings(), role)
        proxy = tcp_proxy_filter(name, [WeightedCluster(cluster)], telemetry)
        return {"filters": [json_format.MessageToDict(proxy)]}
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"),
        route=route_components_pb2.RouteAction(cluster=cluster),
    )
    routes = route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[route_components_pb2.VirtualHost(name=name, domains=["*"], routes=[route])],
    )
    manager = http_connection_manager(
        name, route_config=routes, telemetry=http_telemetry(node, TelemetrySettings(), role)
    )
    hcm = listener_components_pb2.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=pack(manager)
    )
    return {"filters": [json_format.MessageToDict(hcm)]}


def _bootstrap(
    node: ProxyNode, listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "node": {"id": node.id, "cluster": node.service, "metadata": node.to_metadata()},
        "admin": {"address": _address(0)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def client_bootstrap(
    node: ProxyNode,
    local_ports: Mapping[str, int],
    inbound_ports: Mapping[str, int],
    xds_port: int,
    certificates: PeerFiles | None,
    http2: bool,
) -> dict[str, Any]:
    transport = None
    if certificates is not None:
        alpn = ["h2"] if http2 else []
        transport = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": f"{_TYPES}.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": common_tls_context(certificates, alpn, verify_san=SPIFFE_ID),
            },
        }
    listeners, clusters = [], [_cluster("xds-grpc", xds_port, http2=True)]
    for name, local_port in local_ports.items():
        cluster = f"outbound|{inbound_ports[name]}||{name}.default.svc.cluster.local"
        listeners.append(
            {
                "name": f"upstream_{local_port}",
                "address": _address(local_port),
                "filter_chains": [_chain(node, "outbound", name, cluster, http2)],
            }
        )
        clusters.append(_cluster(cluster, inbound_ports[name], transport, http2))
    return _bootstrap(node, listeners, clusters)


def server_bootstrap(
    node: ProxyNode,
    inbound_ports: Mapping[str, int],
    backend_ports: Mapping[str, int],
    xds_port: int,
    certificates: PeerFiles | None,
    http2: bool,
) -> dict[str, Any]:
    listeners, clusters = [], [_cluster("xds-grpc", xds_port, http2=True)]
    for name, inbound_port in inbound_ports.items():
        cluster = f"inbound|{backend_ports[name]}||"
        chain = _chain(node, "inbound", name, cluster, http2)
        if certificates is not None:
            chain["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": f"{_TYPES}.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": common_tls_context(
                        certificates, ["h2"] if http2 else [], verify_san=None
                    ),
                    "require_client_certificate": True,
                },
            }
        listeners.append(
            {
                "name": f"inbound_{inbound_port}",
                "address": _address(inbound_port),
                "filter_chains": [chain],
            }
        )
        clusters.append(_cluster(cluster, backend_ports[name], http2=http2))
    return _bootstrap(node, listeners, clusters)


class SidecarPair:
    """Send to ``ports[name]`` to reach backend ``name`` through both sidecars."""

    def __init__(
        self,
        name: str,
        backend_ports: Mapping[str, int],
        work: Path,
        xds_port: int,
        *,
        tls: bool,
        http2: bool = False,
    ) -> None:
        self.name = name
        directory = work / name
        directory.mkdir(parents=True)
        certificates = make_certificates(directory / "certs") if tls else None
        self.ports = {backend: free_port() for backend in backend_ports}
        inbound_ports = {backend: free_port() for backend in backend_ports}
        client = ProxyNode(id=f"{name}-client-0", service="client", workload="client")
        server = ProxyNode(
            id=f"{name}-server-0",
            service="server",
            workload="server",
            inbound_port=next(iter(inbound_ports.values())),
        )
        self.envoys: list[StaticEnvoy] = []
        try:
            self.envoys.append(
                StaticEnvoy(
                    f"{name}-server",
                    server_bootstrap(
                        server,
                        inbound_ports,
                        backend_ports,
                        xds_port,
                        certificates.server if certificates else None,
                        http2,
                    ),
                    directory,
                )
            )
            self.envoys.append(
                StaticEnvoy(
                    f"{name}-client",
                    client_bootstrap(
                        client,
                        self.ports,
                        inbound_ports,
                        xds_port,
                        certificates.client if certificates else None,
                        http2,
                    ),
                    directory,
                )
            )
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> list[int]:
        return [envoy.pid for envoy in self.envoys]

    def wait_ready(self, serves: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for envoy in self.envoys:
                if envoy.process.poll() is not None:
                    raise RuntimeError(f"{envoy.name} exited early:\n{envoy.log()}")
            if serves():
                return
            time.sleep(0.1)
        logs = "\n".join(f"--- {envoy.name}\n{envoy.log()}" for envoy in self.envoys)
        raise RuntimeError(f"the {self.name} pair did not serve within {timeout:.0f}s:\n{logs}")

    def stop(self) -> None:
        for envoy in self.envoys:
            envoy.stop()
