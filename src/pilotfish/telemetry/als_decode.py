"""Envoy's HTTP access-log entries (gRPC ALS) -> ``RequestRecord``s, with Istio's peer labels.

Who reported: the stream's ``log_name`` (``ALS_LOG_NAMES``) and its node. Who was on the
other end:

- destination reporter (a sidecar's inbound): the caller is the node id its sidecar put in
  the peer header, moved by the inbound into dynamic metadata ``pilotfish.peer``/``id``; its
  principal is the URI SAN of the mTLS peer certificate (``connection_security_policy``
  ``mutual_tls``, else ``none``). When both exist and disagree, the certificate wins: a
  header can be forged by whoever reaches the inbound port, a certificate cannot.
- source reporter (a sidecar's outbound, the gateway): the service from the upstream cluster
  name (``outbound|port|subset|host``), else (no host was picked) the Host header when a
  proxy of the mesh serves that service, else ``unknown``; the workload from the endpoint
  the proxy picked (a sidecar's inbound address). The source side cannot see the upstream
  connection's certificates in an access-log entry, so its principals and security policy
  stay ``unknown``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol

from envoy.config.core.v3 import base_pb2

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import CLUSTER_DOMAIN, qualify_host
from pilotfish.model.telemetry import PEER_METADATA_KEY, PEER_METADATA_NAMESPACE
from pilotfish.telemetry.records import UNKNOWN, Peer, Reporter, RequestRecord

# Envoy's short codes for the fields of envoy.data.accesslog.v3.ResponseFlags, in the order
# Envoy writes %RESPONSE_FLAGS% (source/common/stream_info/utility.h), which is also the
# fields' number order; ``unauthorized_details`` is a message, handled on its own.
RESPONSE_FLAG_FIELDS: tuple[tuple[str, str], ...] = (
    ("failed_local_healthcheck", "LH"),
    ("no_healthy_upstream", "UH"),
    ("upstream_request_timeout", "UT"),
    ("local_reset", "LR"),
    ("upstream_remote_reset", "UR"),
    ("upstream_connection_failure", "UF"),
    ("upstream_connection_termination", "UC"),
    ("upstream_overflow", "UO"),
    ("no_route_found", "NR"),
    ("delay_injected", "DI"),
    ("fault_injected", "FI"),
    ("rate_limited", "RL"),
    ("unauthorized_details", "UAEX"),
    ("rate_limit_service_error", "RLSE"),
    ("downstream_connection_termination", "DC"),
    ("upstream_retry_limit_exceeded", "URX"),
    ("stream_idle_timeout", "SI"),
    ("invalid_envoy_request_headers", "IH"),
    ("downstream_protocol_error", "DPE"),
    ("upstream_max_stream_duration_reached", "UMSDR"),
    ("response_from_cache_filter", "RFCF"),
    ("no_filter_config_found", "NFCF"),
    ("duration_timeout", "DT"),
    ("upstream_protocol_error", "UPE"),
    ("no_cluster_found", "NC"),
    ("overload_manager", "OM"),
    ("dns_resolution_failure", "DF"),
    ("downstream_remote_reset", "DR"),
)
_UNAUTHORIZED_EXTERNAL_SERVICE = 1  # ResponseFlags.Unauthorized.Reason.EXTERNAL_SERVICE
_FLAG_CODES: Mapping[str, str] = MappingProxyType(dict(RESPONSE_FLAG_FIELDS))
_METHODS: Mapping[int, str] = MappingProxyType(
    {number: name for name, number in base_pb2.RequestMethod.items() if number}
)
# Strings a client chooses are cut to this many characters, so that the records kept per
# proxy cost a bounded amount whatever the requests carry.
MAX_FIELD_CHARS = 1024
_CUT_MARKER = "..."
# Peer labels kept per node; past this many the cache starts over (churn of node ids).
_MAX_CACHED_PEERS = 10_000


class NodeLookup(Protocol):
    """What decoding needs of the node directory (``telemetry.nodes.NodeDirectory``)."""

    def get(self, node_id: str) -> ProxyNode | None: ...

    def by_inbound_address(self, host: str, port: int) -> ProxyNode | None: ...

    def connected_nodes(self) -> list[ProxyNode]: ...


def peer_of(node: ProxyNode, principal: str = UNKNOWN) -> Peer:
    """Istio's labels for one proxy's workload."""
    return Peer(
        workload=node.workload_name,
        namespace=node.namespace,
        principal=principal,
        app=node.labels.get("app", UNKNOWN),
        version=node.labels.get("version", UNKNOWN),
        canonical_service=node.canonical_service,
        canonical_revision=node.canonical_revision,
    )


class PeerCache:
    """``peer_of`` once per node and principal: most entries name the same few proxies."""

    def __init__(self) -> None:
        self._peers: dict[tuple[str, str], tuple[ProxyNode, Peer]] = {}

    def peer(self, node: ProxyNode, principal: str = UNKNOWN) -> Peer:
        key = (node.id, principal)
        cached = self._peers.get(key)
        # The same id may come back as another node (a reconnect with new labels).
        if cached is not None and cached[0] is node:
            return cached[1]
        if len(self._peers) >= _MAX_CACHED_PEERS:
            self._peers.clear()
        peer = peer_of(node, principal)
        self._peers[key] = (node, peer)
        return peer


def response_flags(flags: Any) -> tuple[str, ...]:
    """An ``envoy.data.accesslog.v3.ResponseFlags`` -> Envoy's short codes, in Envoy's order."""
    codes: list[str] = []
    # Only the fields set (usually none), in field number order: Envoy's order.
    for descriptor, value in flags.ListFields():
        if (
            descriptor.name == "unauthorized_details"
            and value.reason != _UNAUTHORIZED_EXTERNAL_SERVICE
        ):
            continue
        code = _FLAG_CODES.get(descriptor.name)
        if code is not None:
            codes.append(code)
    return tuple(codes)


def trace_id(headers: Mapping[str, str]) -> str:
    """The W3C trace id (``traceparent: 00-<32 hex>-<16 hex>-<flags>``), else B3's."""
    parts = headers.get("traceparent", "").split("-")
    if len(parts) >= 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        return parts[1].lower()
    return headers.get("x-b3-traceid", "").lower()


def split_outbound_cluster(name: str) -> tuple[int, str, str] | None:
    """``outbound|8080|v1|web.default.svc.cluster.local`` -> (8080, "v1", host)."""
    parts = name.split("|")
    if len(parts) != 4 or parts[0] != "outbound" or not parts[1].isdecimal() or not parts[3]:
        return None
    return int(parts[1]), parts[2], parts[3]


def service_name_and_namespace(hostname: str) -> tuple[str, str]:
    """``web.shop.svc.cluster.local`` -> ("web", "shop"); another host is its own name, in an
    unknown namespace (Istio names a ServiceEntry's namespace; the host alone does not)."""
    suffix = "." + CLUSTER_DOMAIN
    if hostname.endswith(suffix):
        name, _, namespace = hostname[: -len(suffix)].partition(".")
        if name and namespace and "." not in namespace:
            return name, namespace
    return hostname, UNKNOWN


# HTTPAccessLogEntry.HTTPVersion -> what Envoy's %PROTOCOL% prints.
_HTTP_VERSIONS: Mapping[int, str] = MappingProxyType(
    {1: "HTTP/1.0", 2: "HTTP/1.1", 3: "HTTP/2", 4: "HTTP/3"}
)


def decode_entry(
    entry: Any,
    reporter: Reporter,
    proxy: ProxyNode,
    nodes: NodeLookup,
    peers: PeerCache | None = None,
) -> RequestRecord:
    """One ``envoy.data.accesslog.v3.HTTPAccessLogEntry`` reported by ``proxy``; pass one
    ``peers`` for every entry of a stream, or of the control plane, to make labels once."""
    peers = peers or PeerCache()
    common = entry.common_properties
    request = entry.request
    response = entry.response
    request_headers = request.request_headers
    if common.HasField("time_to_last_downstream_tx_byte"):
        duration_ms = common.time_to_last_downstream_tx_byte.ToNanoseconds() / 1e6
    else:
        duration_ms = common.duration.ToNanoseconds() / 1e6
    content_type = request_headers.get("content-type", "")
    protocol = "grpc" if content_type.startswith("application/grpc") else "http"
    grpc_status = ""
    if protocol == "grpc":  # as Istio: an HTTP answer's grpc-status header is not a gRPC status
        grpc_status = response.response_trailers.get(
            "grpc-status"
        ) or response.response_headers.get("grpc-status", "")
    upstream = common.upstream_remote_address.socket_address
    upstream_host = f"{upstream.address}:{upstream.port_value}" if upstream.address else ""

    if reporter == "destination":
        source, destination, security = _inbound_peers(common, proxy, nodes, peers)
        hostname = qualify_host(proxy.service, proxy.namespace) if proxy.service else UNKNOWN
    else:
        source = peers.peer(proxy)
        security = UNKNOWN
        hostname, destination = outbound_destination(
            common.upstream_cluster, upstream, nodes, peers
        )
        if hostname == UNKNOWN and request.authority:
            hostname = _authority_service(request.authority, proxy, nodes)
    if hostname == UNKNOWN:
        service_name, service_namespace = UNKNOWN, UNKNOWN
    else:
        service_name, service_namespace = service_name_and_namespace(hostname)
        if service_namespace == UNKNOWN and destination.namespace != UNKNOWN:
            service_namespace = destination.namespace

    return RequestRecord(
        start_time=common.start_time.ToNanoseconds() / 1e9,
        reporter=reporter,
        proxy=proxy.id,
        source=source,
        destination=destination,
        destination_service=hostname,
        destination_service_name=service_name,
        destination_service_namespace=service_namespace,
        method=_method(request.request_method),
        path=cut(request.path),
        authority=cut(request.authority),
        request_protocol=protocol,
        response_code=response.response_code.value,
        grpc_status=grpc_status,
        response_flags=(
            response_flags(common.response_flags) if common.HasField("response_flags") else ()
        ),
        response_code_details=cut(response.response_code_details),
        upstream_failure=cut(common.upstream_transport_failure_reason),
        duration_ms=duration_ms,
        request_bytes=request.request_headers_bytes + request.request_body_bytes,
        response_bytes=response.response_headers_bytes + response.response_body_bytes,
        upstream_cluster=common.upstream_cluster,
        upstream_host=upstream_host,
        route_name=common.route_name,
        request_id=cut(request.request_id),
        trace_id=trace_id(request_headers),
        connection_security_policy=security,
        http_version=_HTTP_VERSIONS.get(entry.protocol_version, ""),
    )


def _inbound_peers(
    common: Any, proxy: ProxyNode, nodes: NodeLookup, peers: PeerCache
) -> tuple[Peer, Peer, str]:
    tls = common.tls_properties
    peer_principal = uri_san(tls.peer_certificate_properties)
    local_principal = uri_san(tls.local_certificate_properties)
    security = "mutual_tls" if peer_principal else "none"
    caller_id = ""
    peer_metadata = common.metadata.filter_metadata.get(PEER_METADATA_NAMESPACE)
    if peer_metadata is not None:
        value = peer_metadata.fields.get(PEER_METADATA_KEY)
        if value is not None and value.WhichOneof("kind") == "string_value":
            caller_id = value.string_value
    caller = nodes.get(caller_id) if caller_id else None
    if caller is not None and peer_principal and not holds_principal(caller, peer_principal):
        caller = None
    if caller is not None:
        source = peers.peer(caller, peer_principal or UNKNOWN)
    elif peer_principal:
        source = Peer(principal=peer_principal, namespace=principal_namespace(peer_principal))
    else:
        source = Peer()
    return source, peers.peer(proxy, local_principal or UNKNOWN), security


def outbound_destination(
    cluster: str, upstream: Any, nodes: NodeLookup, peers: PeerCache
) -> tuple[str, Peer]:
    parts = split_outbound_cluster(cluster)
    hostname = parts[2] if parts is not None else UNKNOWN
    callee = nodes.by_inbound_address(upstream.address, upstream.port_value)
    return hostname, peers.peer(callee) if callee is not None else Peer()


def _authority_service(authority: str, proxy: ProxyNode, nodes: NodeLookup) -> str:
    """The service a request was for when no cluster took it (Envoy names the cluster only
    once it picked a host: not for UH, UO, NR...): as Istio does, the Host header's host (a
    sidecar's short name qualified in its namespace, as its app meant it), but only when a
    proxy of the mesh serves that service. Any other Host is ``unknown``: a client choosing
    Hosts at random must not make a new service (a new series) per request."""
    host = authority.rsplit(":", 1)[0] if not authority.endswith("]") else authority
    if proxy.kind == "sidecar":
        host = qualify_host(host, proxy.namespace)
    for node in nodes.connected_nodes():
        if node.service and qualify_host(node.service, node.namespace) == host:
            return host
    return UNKNOWN


def cut(value: str) -> str:
    """``value``, or its first ``MAX_FIELD_CHARS`` characters with a marker when longer."""
    if len(value) <= MAX_FIELD_CHARS:
        return value
    return value[: MAX_FIELD_CHARS - len(_CUT_MARKER)] + _CUT_MARKER


def uri_san(certificate: Any) -> str:
    for san in certificate.subject_alt_name:
        if san.WhichOneof("san") == "uri":
            return str(san.uri)
    return ""


def holds_principal(node: ProxyNode, principal: str) -> bool:
    """Whether ``principal`` (``spiffe://<td>/ns/<ns>/sa/<sa>``) is the node's identity, in
    whatever trust domain."""
    return principal.endswith(f"/ns/{node.namespace}/sa/{node.service_account}")


def principal_namespace(principal: str) -> str:
    _, found, rest = principal.partition("/ns/")
    namespace = rest.split("/", 1)[0] if found else ""
    return namespace or UNKNOWN


def _method(value: int) -> str:
    return _METHODS.get(value, "")
