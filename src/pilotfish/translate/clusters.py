"""Clusters: one per service port and per DestinationRule subset, plus a sidecar's inbound one."""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from pilotfish.model.identity import Identity
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import LoadBalancer, Protocol, is_http, speaks_http2
from pilotfish.model.security import ClientTLSSettings, effective_mtls_mode
from pilotfish.model.services import Endpoint, MeshView, Service
from pilotfish.translate.destinations import DestinationIndex, EffectivePolicy
from pilotfish.translate.endpoints import load_assignment
from pilotfish.translate.locality import cluster_locality_policy, weigh_localities
from pilotfish.translate.naming import inbound_cluster_name, outbound_cluster_name, outbound_sni
from pilotfish.translate.proto_values import (
    ads_config_source,
    duration_from_seconds,
    pack,
)
from pilotfish.translate.resilience import (
    apply_inbound_resilience,
    apply_resilience,
    upstream_alpn,
)
from pilotfish.translate.tls_contexts import (
    file_upstream_context,
    istio_tls_mode,
    mesh_upstream_context,
    raw_buffer_socket,
    tls_socket,
)

CONNECT_TIMEOUT_SECONDS = 1.0
HTTP_PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# Istio's default when no DestinationRule picks one: least request spreads load better than
# round robin when backends differ in speed, at the same cost.
DEFAULT_LB_POLICY = cluster_pb2.Cluster.LEAST_REQUEST

_SIMPLE_LB_POLICIES: Mapping[str, cluster_pb2.Cluster.LbPolicy.ValueType] = {
    "ROUND_ROBIN": cluster_pb2.Cluster.ROUND_ROBIN,
    "LEAST_REQUEST": cluster_pb2.Cluster.LEAST_REQUEST,
    "RANDOM": cluster_pb2.Cluster.RANDOM,
}


def lb_policy_for(balancer: LoadBalancer | None) -> cluster_pb2.Cluster.LbPolicy.ValueType:
    if balancer is None:
        return DEFAULT_LB_POLICY
    if balancer.consistent_hash is not None:
        # Ring hash, not Maglev: gRPC proxyless clients NACK Maglev.
        return cluster_pb2.Cluster.RING_HASH
    if balancer.simple is not None:
        return _SIMPLE_LB_POLICIES[balancer.simple]
    return DEFAULT_LB_POLICY


def _with_upstream_protocol(cluster: cluster_pb2.Cluster, protocol: Protocol) -> None:
    """HTTP/2 to HTTP2 and GRPC ports; to an AUTO port each request's own protocol (the
    HTTP/1.1 or h2 that detection found); nothing for TCP and TLS, which carry no HTTP."""
    options = http_protocol_options_pb2.HttpProtocolOptions
    if speaks_http2(protocol):
        chosen = options(
            explicit_http_config=options.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
    elif protocol == "AUTO":
        chosen = options(
            use_downstream_protocol_config=options.UseDownstreamHttpConfig(
                http_protocol_options=protocol_pb2.Http1ProtocolOptions(),
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions(),
            )
        )
    else:
        return
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY].CopyFrom(pack(chosen))


def _without_http_options(cluster: cluster_pb2.Cluster, protocol: Protocol) -> None:
    """An opaque port's connections never meet an HTTP codec: the DestinationRule's HTTP
    settings (pool, outlier matcher) have nothing to act on there."""
    if not is_http(protocol) and protocol != "AUTO":
        cluster.typed_extension_protocol_options.pop(HTTP_PROTOCOL_OPTIONS_KEY, None)


def _dns_endpoints(service: Service, endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """A DNS ServiceEntry without endpoints resolves its own hostname, as in Istio."""
    if endpoints:
        return endpoints
    return (Endpoint(address=service.hostname, ports={p.number: p.number for p in service.ports}),)


def _service_cluster(
    view: MeshView,
    service: Service,
    port: int,
    protocol: Protocol,
    subset: str | None,
    index: DestinationIndex,
) -> cluster_pb2.Cluster:
    name = outbound_cluster_name(port, service.hostname, subset)
    policy = index.effective_policy(service.hostname, subset, port)
    cluster = cluster_pb2.Cluster(
        name=name,
        connect_timeout=duration_from_seconds(CONNECT_TIMEOUT_SECONDS),
        lb_policy=lb_policy_for(policy.load_balancer),
    )
    if service.resolution == "DNS":
        chosen = index.subset(service.hostname, subset) if subset is not None else None
        labels = chosen.labels if chosen is not None else {}
        cluster.type = cluster_pb2.Cluster.STRICT_DNS
        cluster.load_assignment.CopyFrom(
            load_assignment(
                name,
                _dns_endpoints(service, view.endpoints_of(service.hostname)),
                port,
                labels,
            )
        )
    else:
        cluster.type = cluster_pb2.Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(ads_config_source())
        weigh_localities(
            cluster, cluster_locality_policy(view, index, service.hostname, subset, port)
        )
    _with_upstream_protocol(cluster, protocol)
    apply_resilience(cluster, policy)
    _without_http_options(cluster, protocol)
    _with_transport_security(cluster, view, service, port, subset, policy.tls)
    return cluster


def mesh_identities(view: MeshView, service: Service) -> tuple[str, ...]:
    """The SPIFFE ids of the sidecars serving ``service``: what a caller accepts from it."""
    trust_domain = view.config.mesh.trust_domain
    accounts = {
        endpoint.service_account
        for endpoint in view.endpoints_of(service.hostname)
        if endpoint.service_account is not None
    }
    return tuple(
        Identity(trust_domain, service.namespace, account).spiffe_id for account in sorted(accounts)
    )


def _with_transport_security(
    cluster: cluster_pb2.Cluster,
    view: MeshView,
    service: Service,
    port: int,
    subset: str | None,
    settings: ClientTLSSettings | None,
) -> None:
    """Auto mTLS unless a DestinationRule says otherwise (Istio turns auto mTLS off for a
    destination whose rule sets ``tls``).

    Auto mTLS is per endpoint: sidecar-served endpoints (metadata ``tlsMode: istio``, see
    ``endpoints.load_assignment``) get mTLS, the others plaintext. Like Istio, it infers
    the server's mode from the mesh- and namespace-wide PeerAuthentications only: plain text
    when they say DISABLE; a DISABLE policy of one workload needs a DestinationRule too.
    """
    served = service.port(port)
    # A TCP proxy's connection offers no ALPN: the server's sidecar tells it from HTTP by that.
    opaque = served is not None and not is_http(served.protocol) and served.protocol != "AUTO"
    alpn = () if opaque else upstream_alpn(cluster)
    sni = outbound_sni(port, service.hostname, subset)
    if settings is None:
        # No labels: only policies without a selector (the mesh's, the namespace's) apply.
        namespace_mode = effective_mtls_mode(
            view.config.peer_authentications, service.namespace, {}, None
        )
        identities = mesh_identities(view, service) if namespace_mode != "DISABLE" else ()
        if not identities:
            return
        mesh = mesh_upstream_context(identities, sni, alpn)
        cluster.transport_socket_matches.extend(
            [
                cluster_pb2.Cluster.TransportSocketMatch(
                    name="tlsMode-istio", match=istio_tls_mode(), transport_socket=tls_socket(mesh)
                ),
                cluster_pb2.Cluster.TransportSocketMatch(
                    name="tlsMode-disabled", transport_socket=raw_buffer_socket()
                ),
            ]
        )
    elif settings.mode == "ISTIO_MUTUAL":
        names = settings.subject_alt_names or mesh_identities(view, service)
        context = mesh_upstream_context(names, settings.sni or sni, alpn)
        cluster.transport_socket.CopyFrom(tls_socket(context))
    elif settings.mode in ("SIMPLE", "MUTUAL"):
        # The service's own name is the SNI an external server expects unless told otherwise.
        context = file_upstream_context(settings, service.hostname, alpn)
        cluster.transport_socket.CopyFrom(tls_socket(context))
    # DISABLE: no transport socket, plain text to every endpoint.


def build_service_clusters(
    view: MeshView, service: Service, index: DestinationIndex
) -> tuple[cluster_pb2.Cluster, ...]:
    """One service's clusters: each port's, then its subsets', sorted by port."""
    subset_names = [None, *(subset.name for subset in index.subsets_of(service.hostname))]
    return tuple(
        _service_cluster(view, service, port.number, port.protocol, subset, index)
        for port in sorted(service.ports, key=lambda p: p.number)
        for subset in subset_names
    )


def build_outbound_clusters(
    view: MeshView, destinations: DestinationIndex | None = None
) -> tuple[cluster_pb2.Cluster, ...]:
    """Every service port's cluster and its subset clusters, sorted by hostname then port."""
    index = destinations or DestinationIndex(view)
    return tuple(
        cluster
        for hostname in sorted(view.services)
        for cluster in build_service_clusters(view, view.services[hostname], index)
    )


def build_inbound_cluster(
    node: ProxyNode, policy: EffectivePolicy | None = None
) -> cluster_pb2.Cluster | None:
    """The sidecar's own app on loopback; None for proxies without an app (gateways).
    ``policy``: the DestinationRule's for the node's service and port (its connection pool)."""
    if node.kind != "sidecar" or node.app_port is None:
        return None
    name = inbound_cluster_name(node.app_port)
    app = Endpoint(address="127.0.0.1", ports={node.app_port: node.app_port})
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration_from_seconds(CONNECT_TIMEOUT_SECONDS),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        load_assignment=load_assignment(name, (app,), node.app_port),
    )
    _with_upstream_protocol(cluster, node.app_protocol)
    apply_inbound_resilience(cluster, policy or EffectivePolicy())
    _without_http_options(cluster, node.app_protocol)
    return cluster
