"""CONNECT in a sidecar's ``outbound`` listener: how grpcio, curl and most HTTPS clients use
the HTTP proxy their environment names.

Envoy terminates every CONNECT it routes (``connect_config``) and carries the tunnel's bytes:

- to a service port that carries HTTP (HTTP, HTTP2, GRPC, AUTO): into the internal listener
  ``OUTBOUND_TUNNEL_LISTENER``, an HTTP connection manager with the ``outbound`` routes, so
  the requests inside (gRPC's HTTP/2 too) get the routes, splits, retries and policies of
  plain requests to that host;
- to a TCP or TLS port: as they are, to the clusters of the caller's ``tcp`` routes (the
  port's own without one), so the TLS of an HTTPS call to an outside host is never
  terminated (the client verifies the server's own certificate);
- anywhere else: nowhere. The catch-all virtual host refuses it, and the outbound
  connection manager's ``connect_refusal_mapper`` says which proxy refused which host:port.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import wrappers_pb2

from pilotfish.model.resilience import UNLIMITED_THRESHOLD
from pilotfish.model.resources import HTTP_PROTOCOLS, Protocol
from pilotfish.translate.authorization import text_body
from pilotfish.translate.naming import OUTBOUND_TUNNEL_CLUSTER, OUTBOUND_TUNNEL_LISTENER
from pilotfish.translate.proto_values import duration_from_seconds, pack
from pilotfish.translate.tcp_proxy import WeightedCluster

CONNECT = "CONNECT"
REFUSAL_HEADER = "x-pilotfish-refusal"
WEBSOCKET = "websocket"
CONNECT_ROUTE_NAME = "connect"
REFUSED_CONNECT_ROUTE_NAME = "connect_refused"
INTERNAL_LISTENER_EXTENSION = "envoy.bootstrap.internal_listener"
INTERNAL_LISTENER_TYPE = (
    "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
)
TUNNEL_CONNECT_TIMEOUT_SECONDS = 1.0
TUNNEL_IDLE_TIMEOUT_SECONDS = 3600.0

# AUTO is detected on the server's side; through a CONNECT the client's bytes are HTTP (a
# client that tunnels something else to such a port needs the port named TCP).
ROUTED_AS_HTTP: frozenset[Protocol] = HTTP_PROTOCOLS | {"AUTO"}


def routed_as_http(protocol: Protocol) -> bool:
    """Whether the ``outbound`` routes carry this port's requests (virtual host routes)."""
    return protocol in ROUTED_AS_HTTP


def upgrade_configs(*, connect: bool) -> list[hcm_pb2.HttpConnectionManager.UpgradeConfig]:
    """WebSocket on every connection manager, as Istio allows it by default; CONNECT only
    where an app's own proxy requests arrive (the sidecar's ``outbound``)."""
    types = [WEBSOCKET, CONNECT] if connect else [WEBSOCKET]
    return [hcm_pb2.HttpConnectionManager.UpgradeConfig(upgrade_type=kind) for kind in types]


def _connect_route(name: str) -> rc.Route:
    route = rc.Route(name=name, match=rc.RouteMatch(connect_matcher=rc.RouteMatch.ConnectMatcher()))
    # No span for a tunnel: the requests inside an HTTP one get theirs, opaque bytes none.
    route.tracing.random_sampling.SetInParent()
    route.tracing.overall_sampling.SetInParent()
    return route


def _terminating(action: rc.RouteAction) -> rc.RouteAction:
    action.upgrade_configs.append(
        rc.RouteAction.UpgradeConfig(
            upgrade_type=CONNECT, connect_config=rc.RouteAction.UpgradeConfig.ConnectConfig()
        )
    )
    # A tunnel lives as long as its client keeps it: no route timeout, and an hour without
    # a byte either way (Envoy's TCP proxy default) rather than a request's 5 minutes.
    action.timeout.CopyFrom(duration_from_seconds(0))
    action.idle_timeout.CopyFrom(duration_from_seconds(TUNNEL_IDLE_TIMEOUT_SECONDS))
    return action


def tunnel_route() -> rc.Route:
    """A CONNECT to an HTTP port: its bytes to the internal listener, parsed again there."""
    route = _connect_route(CONNECT_ROUTE_NAME)
    route.route.CopyFrom(_terminating(rc.RouteAction(cluster=OUTBOUND_TUNNEL_CLUSTER)))
    return route


def opaque_connect_route(clusters: Sequence[WeightedCluster]) -> rc.Route:
    """A CONNECT to a TCP or TLS port: its bytes as they are to ``clusters`` (by weight)."""
    if not clusters:
        raise ValueError("a CONNECT route needs at least one cluster")
    action = rc.RouteAction()
    if len(clusters) == 1:
        action.cluster = clusters[0].name
    else:
        for chosen in clusters:
            action.weighted_clusters.clusters.add(
                name=chosen.name, weight=wrappers_pb2.UInt32Value(value=chosen.weight)
            )
    route = _connect_route(CONNECT_ROUTE_NAME)
    route.route.CopyFrom(_terminating(action))
    return route


REFUSED_CONNECT_STATUS = 404


def refused_connect_route() -> rc.Route:
    """For the catch-all virtual host: ``connect_refusal_mapper`` writes the body."""
    route = _connect_route(REFUSED_CONNECT_ROUTE_NAME)
    route.direct_response.CopyFrom(rc.DirectResponseAction(status=REFUSED_CONNECT_STATUS))
    return route


def connect_refusal_mapper(node_id: str) -> hcm_pb2.ResponseMapper:
    """The body of a refused CONNECT: which proxy, which host:port, why; the reason also in
    the ``REFUSAL_HEADER``, because curl, urllib, requests and grpcio never show the body
    of a CONNECT's answer (``curl -v`` shows its headers). The only 404 a CONNECT gets
    from the outbound connection manager is ``refused_connect_route``'s (no user route
    matches a CONNECT)."""
    reason = "no service in the mesh answers %REQ(:AUTHORITY)%"
    return hcm_pb2.ResponseMapper(
        headers_to_add=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(
                    key=REFUSAL_HEADER, value=f"{node_id} refused CONNECT: {reason}"
                ),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        ],
        filter=accesslog_pb2.AccessLogFilter(
            and_filter=accesslog_pb2.AndFilter(
                filters=[
                    _is_connect(),
                    accesslog_pb2.AccessLogFilter(
                        status_code_filter=accesslog_pb2.StatusCodeFilter(
                            comparison=accesslog_pb2.ComparisonFilter(
                                op=accesslog_pb2.ComparisonFilter.EQ,
                                value=base_pb2.RuntimeUInt32(
                                    default_value=REFUSED_CONNECT_STATUS,
                                    runtime_key="pilotfish.refused_connect_status",
                                ),
                            )
                        )
                    ),
                ]
            )
        ),
        body_format_override=text_body(
            f"pilotfish: {node_id} refused CONNECT ",
            "%REQ(:AUTHORITY)%: no service in the mesh answers this host:port "
            "(declare an outside host with a ServiceEntry)",
        ),
    )


def _is_connect(invert: bool = False) -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(
        header_filter=accesslog_pb2.HeaderFilter(
            header=rc.HeaderMatcher(
                name=":method",
                string_match=string_pb2.StringMatcher(exact=CONNECT),
                invert_match=invert,
            )
        )
    )


def without_open_tunnels(log: accesslog_pb2.AccessLog) -> accesslog_pb2.AccessLog:
    """``log`` for every request but an established CONNECT: the requests inside an HTTP
    tunnel are logged by the internal listener, one by one, and counting the tunnel too
    would count them twice in the request metrics. Refused CONNECTs are still logged."""
    filtered = accesslog_pb2.AccessLog()
    filtered.CopyFrom(log)
    filtered.filter.CopyFrom(
        accesslog_pb2.AccessLogFilter(
            or_filter=accesslog_pb2.OrFilter(
                filters=[
                    _is_connect(invert=True),
                    accesslog_pb2.AccessLogFilter(
                        status_code_filter=accesslog_pb2.StatusCodeFilter(
                            comparison=accesslog_pb2.ComparisonFilter(
                                op=accesslog_pb2.ComparisonFilter.GE,
                                value=base_pb2.RuntimeUInt32(
                                    default_value=300,
                                    runtime_key="pilotfish.logged_connect_status",
                                ),
                            )
                        )
                    ),
                ]
            )
        )
    )
    return filtered


def build_tunnel_listener(manager: hcm_pb2.HttpConnectionManager) -> listener_pb2.Listener:
    """The internal listener (no socket: reached only through ``build_tunnel_cluster``)."""
    return listener_pb2.Listener(
        name=OUTBOUND_TUNNEL_LISTENER,
        stat_prefix=OUTBOUND_TUNNEL_LISTENER,
        internal_listener=listener_pb2.Listener.InternalListenerConfig(),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=pack(manager),
                    )
                ]
            )
        ],
    )


def build_tunnel_cluster() -> cluster_pb2.Cluster:
    """The way from a terminated CONNECT into ``build_tunnel_listener``. Unlimited: every
    open tunnel is one connection, and Envoy's default of 1,024 would refuse the next."""
    cluster = cluster_pb2.Cluster(
        name=OUTBOUND_TUNNEL_CLUSTER,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration_from_seconds(TUNNEL_CONNECT_TIMEOUT_SECONDS),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=OUTBOUND_TUNNEL_CLUSTER,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(
                                address=address_pb2.Address(
                                    envoy_internal_address=address_pb2.EnvoyInternalAddress(
                                        server_listener_name=OUTBOUND_TUNNEL_LISTENER
                                    )
                                )
                            )
                        )
                    ]
                )
            ],
        ),
    )
    unlimited = wrappers_pb2.UInt32Value(value=UNLIMITED_THRESHOLD)
    cluster.circuit_breakers.thresholds.append(
        circuit_breaker_pb2.CircuitBreakers.Thresholds(
            max_connections=unlimited,
            max_pending_requests=unlimited,
            max_requests=unlimited,
        )
    )
    return cluster
