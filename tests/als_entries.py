"""Real Envoy access-log protobuf messages, built the way Envoy 1.40 fills them in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import struct_pb2

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.telemetry import PEER_METADATA_KEY, PEER_METADATA_NAMESPACE


def http_entry(
    *,
    code: int | None = 200,
    cluster: str = "",
    upstream: tuple[str, int] | None = None,
    peer_id: str | None = None,
    peer_uri: str | None = None,
    local_uri: str | None = None,
    request_headers: Mapping[str, str] | None = None,
    response_headers: Mapping[str, str] | None = None,
    response_trailers: Mapping[str, str] | None = None,
    flags: Sequence[str] = (),
    duration_ms: float = 12.5,
    start_seconds: int = 1_700_000_000,
    path: str = "/hello",
    method: int = base_pb2.GET,
) -> accesslog_pb2.HTTPAccessLogEntry:
    """One entry; ``flags`` are ResponseFlags field names set true."""
    entry = accesslog_pb2.HTTPAccessLogEntry(
        protocol_version=accesslog_pb2.HTTPAccessLogEntry.HTTP11
    )
    common = entry.common_properties
    common.start_time.FromSeconds(start_seconds)
    common.time_to_last_downstream_tx_byte.FromNanoseconds(int(duration_ms * 1e6))
    common.duration.FromNanoseconds(int(duration_ms * 1e6) + 1000)
    common.upstream_cluster = cluster
    common.route_name = "default"
    if upstream is not None:
        common.upstream_remote_address.CopyFrom(
            address_pb2.Address(
                socket_address=address_pb2.SocketAddress(
                    address=upstream[0], port_value=upstream[1]
                )
            )
        )
    for name in flags:
        setattr(common.response_flags, name, True)
    if peer_id is not None:
        peer = struct_pb2.Struct()
        peer.update({PEER_METADATA_KEY: peer_id})
        common.metadata.filter_metadata[PEER_METADATA_NAMESPACE].CopyFrom(peer)
    if peer_uri is not None:
        common.tls_properties.peer_certificate_properties.subject_alt_name.add(uri=peer_uri)
    if local_uri is not None:
        common.tls_properties.local_certificate_properties.subject_alt_name.add(uri=local_uri)
    request = entry.request
    request.request_method = method
    request.path = path
    request.authority = "backend:8080"
    request.request_id = "4a1f-req"
    request.request_headers_bytes = 100
    request.request_body_bytes = 20
    request.request_headers.update(request_headers or {})
    response = entry.response
    if code is not None:
        response.response_code.value = code
    response.response_headers_bytes = 80
    response.response_body_bytes = 1000
    response.response_code_details = "via_upstream"
    response.response_headers.update(response_headers or {})
    response.response_trailers.update(response_trailers or {})
    return entry


def tcp_entry(
    *,
    event: int = accesslog_pb2.TcpConnectionEnd,
    connection: str = "c8393969-3e68-4f76-b11a-9947f210d2de",
    received: int = 0,
    sent: int = 0,
    cluster: str = "",
    upstream: tuple[str, int] | None = None,
    peer_uri: str | None = None,
    local_uri: str | None = None,
    flags: Sequence[str] = (),
    duration_ms: float = 250.0,
    start_seconds: int = 1_700_000_000,
) -> accesslog_pb2.TCPAccessLogEntry:
    """One report of a connection as Envoy 1.40 sends it: ``received`` and ``sent`` are the
    bytes since the connection began (Envoy's periodic entries carry totals, not steps)."""
    entry = accesslog_pb2.TCPAccessLogEntry()
    common = entry.common_properties
    common.access_log_type = event  # type: ignore[assignment]
    common.intermediate_log_entry = event != accesslog_pb2.TcpConnectionEnd
    common.stream_id = connection
    common.start_time.FromSeconds(start_seconds)
    common.duration.FromNanoseconds(int(duration_ms * 1e6))
    common.upstream_cluster = cluster
    common.downstream_remote_address.socket_address.address = "127.0.0.1"
    common.downstream_remote_address.socket_address.port_value = 40404
    common.downstream_local_address.socket_address.address = "127.0.0.1"
    common.downstream_local_address.socket_address.port_value = 15006
    if upstream is not None:
        common.upstream_remote_address.socket_address.address = upstream[0]
        common.upstream_remote_address.socket_address.port_value = upstream[1]
    for name in flags:
        setattr(common.response_flags, name, True)
    if peer_uri is not None:
        common.tls_properties.peer_certificate_properties.subject_alt_name.add(uri=peer_uri)
    if local_uri is not None:
        common.tls_properties.local_certificate_properties.subject_alt_name.add(uri=local_uri)
    entry.connection_properties.received_bytes = received
    entry.connection_properties.sent_bytes = sent
    return entry


def tcp_message(
    entries: Sequence[accesslog_pb2.TCPAccessLogEntry],
    node: ProxyNode | None = None,
    log_name: str = "",
) -> als_pb2.StreamAccessLogsMessage:
    """A stream's message of TCP entries; its first (with the identifier) when ``node``."""
    message = als_pb2.StreamAccessLogsMessage()
    if node is not None:
        message.identifier.node.CopyFrom(envoy_node(node))
        message.identifier.log_name = log_name
    message.tcp_logs.log_entry.extend(entries)
    return message


def envoy_node(node: ProxyNode) -> base_pb2.Node:
    metadata = struct_pb2.Struct()
    metadata.update(node.to_metadata())  # type: ignore[arg-type]
    return base_pb2.Node(id=node.id, cluster=node.service or node.id, metadata=metadata)


def first_message(
    node: ProxyNode, log_name: str, entries: Sequence[accesslog_pb2.HTTPAccessLogEntry]
) -> als_pb2.StreamAccessLogsMessage:
    message = als_pb2.StreamAccessLogsMessage()
    message.identifier.node.CopyFrom(envoy_node(node))
    message.identifier.log_name = log_name
    message.http_logs.log_entry.extend(entries)
    return message


def later_message(
    entries: Sequence[accesslog_pb2.HTTPAccessLogEntry],
) -> als_pb2.StreamAccessLogsMessage:
    message = als_pb2.StreamAccessLogsMessage()
    message.http_logs.log_entry.extend(entries)
    return message
