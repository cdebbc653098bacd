"""What a workload's HTTP connection manager gets from its security policies: the JWT and
RBAC filters (they go first, before CORS, faults and the router) and the local-reply
mappers that explain a refusal."""

from __future__ import annotations

from dataclasses import dataclass

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from pilotfish.model.authorization import policies_for
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.security import ROOT_NAMESPACE
from pilotfish.model.services import MeshView
from pilotfish.translate.authorization import (
    PortMap,
    build_rbac_filters,
    denial_mappers,
    same_port,
)
from pilotfish.translate.request_authentication import build_jwt_filter, jwt_failure_mapper


@dataclass(frozen=True)
class HttpSecurity:
    filters: tuple[hcm_pb2.HttpFilter, ...] = ()
    local_reply: hcm_pb2.LocalReplyConfig | None = None


NO_SECURITY = HttpSecurity()


def http_security(view: MeshView, node: ProxyNode, workload_port: int | None) -> HttpSecurity:
    """``workload_port`` is the port a sidecar's policies name for its app (its Workload's
    ``port``); None for a gateway, whose listeners are on the ports policies name."""
    config = view.config
    namespace = policy_namespace(node)
    policies = policies_for(config.authorization_policies, namespace, node.labels)
    authentications = tuple(
        a for a in config.request_authentications if a.applies_to(namespace, node.labels)
    )
    jwt_filter = build_jwt_filter(authentications)
    rbac = build_rbac_filters(policies, _listener_port(node, workload_port))
    filters = ([jwt_filter] if jwt_filter is not None else []) + rbac
    jwt_mapper = jwt_failure_mapper(node.id, authentications)
    mappers = ([jwt_mapper] if jwt_mapper is not None else []) + denial_mappers(node.id, policies)
    return HttpSecurity(
        filters=tuple(filters),
        local_reply=hcm_pb2.LocalReplyConfig(mappers=mappers) if mappers else None,
    )


def policy_namespace(node: ProxyNode) -> str:
    """Istio's ingress gateway lives in the root namespace, so the policies of an app's
    namespace (``allow-nothing`` in ``default``) never lock the gateway out; ours does too,
    whatever namespace it reports."""
    return ROOT_NAMESPACE if node.kind == "gateway" else node.namespace


def _listener_port(node: ProxyNode, workload_port: int | None) -> PortMap:
    """A sidecar's inbound listener receives only its workload's port, on a port of its own."""
    if node.kind != "sidecar":
        return same_port
    inbound_port = node.inbound_port

    def listener_port(port: int) -> int | None:
        return inbound_port if port == workload_port else None

    return listener_port
