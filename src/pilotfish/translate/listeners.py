"""Listeners: a sidecar's ``outbound`` (its app's HTTP proxy) and ``inbound``; gateway ports."""

from __future__ import annotations

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.services import MeshView
from pilotfish.translate.endpoints import socket_address
from pilotfish.translate.gateway_selection import http_servers_by_port
from pilotfish.translate.http_security import NO_SECURITY, HttpSecurity, http_security
from pilotfish.translate.naming import (
    INBOUND_LISTENER,
    OUTBOUND_LISTENER,
    OUTBOUND_ROUTE_CONFIG,
    gateway_listener_name,
    gateway_route_config_name,
    inbound_cluster_name,
    inbound_route_config_name,
)
from pilotfish.translate.proto_values import ads_config_source, duration_from_seconds, pack
from pilotfish.translate.routes import CORS_FILTER_NAME, FAULT_FILTER_NAME

HCM_FILTER_NAME = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER_NAME = "envoy.filters.http.router"


def _http_filters(routing: bool, security: HttpSecurity) -> list[hcm_pb2.HttpFilter]:
    filters = list(security.filters)
    if routing:
        # Always present on routing listeners although they only act on routes that configure
        # CORS or a fault: adding or removing one then changes only RDS, never the listener,
        # and a listener change drains every open connection of every sidecar. CORS first, as
        # in Istio: a preflight is answered before any fault is injected.
        filters.append(
            hcm_pb2.HttpFilter(name=CORS_FILTER_NAME, typed_config=pack(cors_pb2.Cors()))
        )
        filters.append(
            hcm_pb2.HttpFilter(name=FAULT_FILTER_NAME, typed_config=pack(fault_pb2.HTTPFault()))
        )
    # Router last: filters after it never see the request.
    filters.append(
        hcm_pb2.HttpFilter(name=ROUTER_FILTER_NAME, typed_config=pack(router_pb2.Router()))
    )
    return filters


def http_connection_manager(
    stat_prefix: str,
    *,
    rds_name: str | None = None,
    route_config: route_pb2.RouteConfiguration | None = None,
    security: HttpSecurity = NO_SECURITY,
) -> hcm_pb2.HttpConnectionManager:
    """An HCM that either fetches ``rds_name`` over ADS or carries ``route_config`` inline."""
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        http_filters=_http_filters(rds_name is not None, security),
        local_reply_config=security.local_reply,
    )
    if security.filters:
        # As Istio's default (BASE): policies judge "/a/../admin" as the "/admin" it is.
        manager.normalize_path.value = True
    if rds_name is not None:
        manager.rds.route_config_name = rds_name
        manager.rds.config_source.CopyFrom(ads_config_source())
    elif route_config is not None:
        manager.route_config.CopyFrom(route_config)
    return manager


def http_listener(
    name: str, address: str, port: int, manager: hcm_pb2.HttpConnectionManager
) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name,
        address=socket_address(address, port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(name=HCM_FILTER_NAME, typed_config=pack(manager))
                ]
            )
        ],
    )


def inbound_route_config(app_port: int) -> route_pb2.RouteConfiguration:
    """Everything that reached the sidecar's inbound port goes to its app, without a timeout."""
    return route_pb2.RouteConfiguration(
        name=inbound_route_config_name(app_port),
        virtual_hosts=[
            rc.VirtualHost(
                name="inbound",
                domains=["*"],
                routes=[
                    rc.Route(
                        match=rc.RouteMatch(prefix="/"),
                        route=rc.RouteAction(
                            cluster=inbound_cluster_name(app_port),
                            timeout=duration_from_seconds(0),
                        ),
                    )
                ],
            )
        ],
    )


def build_outbound_listener(node: ProxyNode) -> listener_pb2.Listener | None:
    """A sidecar's ``outbound``: the HTTP proxy its app sends to (None without the port)."""
    if node.kind != "sidecar" or node.outbound_port is None:
        return None
    return http_listener(
        OUTBOUND_LISTENER,
        node.bind_address,
        node.outbound_port,
        http_connection_manager(OUTBOUND_LISTENER, rds_name=OUTBOUND_ROUTE_CONFIG),
    )


def build_inbound_listener(view: MeshView, node: ProxyNode) -> listener_pb2.Listener | None:
    """A sidecar's ``inbound``: mesh traffic for its app (None without the ports).

    ``view`` is where the policies that apply to the app's side come from (mTLS,
    authorization); the listener's generator depends on the config for that reason.
    """
    if node.kind != "sidecar" or node.inbound_port is None or node.app_port is None:
        return None
    return http_listener(
        INBOUND_LISTENER,
        node.bind_address,
        node.inbound_port,
        http_connection_manager(
            INBOUND_LISTENER,
            route_config=inbound_route_config(node.app_port),
            security=http_security(view, node),
        ),
    )


def build_gateway_listeners(view: MeshView, node: ProxyNode) -> tuple[listener_pb2.Listener, ...]:
    """``gateway_<port>`` for each HTTP server port of the Gateways selecting this node."""
    return tuple(
        http_listener(
            gateway_listener_name(port),
            node.bind_address,
            port,
            http_connection_manager(
                gateway_listener_name(port),
                rds_name=gateway_route_config_name(port),
                security=http_security(view, node),
            ),
        )
        for port in http_servers_by_port(view, node)
    )
