"""Envoy's TCP access-log entries (gRPC ALS) -> ``ConnectionRecord``s, with Istio's peer labels.

A TCP proxy reports each connection when its upstream connects, every few seconds while it is
open and when it ends (``model.telemetry.TCP_LOG_FLUSH_SECONDS``); each entry carries the bytes
since the connection began, and Envoy's stream id of the connection. ``ConnectionTracker``
keeps the last count of each open connection, so a record carries what is new since.

Who was on the other end, as for HTTP (``telemetry.als_decode``) but without the peer header,
which a byte stream cannot carry:

- source reporter (a sidecar's outbound or upstream port, the gateway): the service from the
  upstream cluster name, the workload from the endpoint the proxy picked (a sidecar's inbound
  address); a connection that reached no host names no workload.
- destination reporter (a sidecar's inbound): over mTLS the caller's principal is the URI SAN
  of its verified certificate, and its workload labels those of the proxies that hold that
  identity when they all agree (the replicas of one workload); without mTLS nothing names the
  caller, and every ``source_*`` label is ``unknown`` (Istio's too, without its metadata
  exchange, which stock Envoy lacks). An inbound proxy connects upstream as soon as it
  accepts, and its "connected" report may come before the mTLS handshake finished (measured
  on 1.40: no peer certificate yet): such a report is skipped, and the connection counts as
  opened at its next one (its end, or the first periodic report), under its caller's labels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import qualify_host
from pilotfish.telemetry.als_decode import (
    NodeLookup,
    PeerCache,
    cut,
    holds_principal,
    outbound_destination,
    principal_namespace,
    response_flags,
    service_name_and_namespace,
    uri_san,
)
from pilotfish.telemetry.records import (
    UNKNOWN,
    ConnectionEvent,
    ConnectionRecord,
    Peer,
    Reporter,
)

# envoy.data.accesslog.v3.AccessLogType of a TCP proxy's entries.
_EVENTS: Mapping[int, ConnectionEvent] = MappingProxyType(
    {1: "connected", 2: "periodic", 3: "closed"}  # TcpUpstreamConnected, TcpPeriodic, ...End
)
DEFAULT_MAX_OPEN = 100_000


class ConnectionTracker:
    """The byte counts each open connection last reported, by proxy and connection id.

    At most ``max_open`` connections are kept (~200 bytes each); past that the one reported
    longest ago is forgotten (``forgotten`` counts them), and its next report counts it as
    opened again and its bytes from zero. A control plane that restarts forgets them all the
    same way: the counters start over, and the first reports after count from zero.
    """

    def __init__(self, max_open: int = DEFAULT_MAX_OPEN) -> None:
        self.max_open = max_open
        self._last: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()
        self.forgotten = 0

    def report(
        self, proxy: str, connection: str, received: int, sent: int, closed: bool
    ) -> tuple[bool, int, int]:
        """Whether this is the first report seen of the connection, and the bytes received
        and sent since its previous one."""
        key = (proxy, connection)
        last = self._last.pop(key, None)
        before_received, before_sent = last if last is not None else (0, 0)
        if not closed:
            if len(self._last) >= self.max_open:
                self._last.popitem(last=False)
                self.forgotten += 1
            self._last[key] = (max(received, before_received), max(sent, before_sent))
        return last is None, max(0, received - before_received), max(0, sent - before_sent)

    @property
    def open_connections(self) -> int:
        return len(self._last)


def decode_tcp_entry(
    entry: Any,
    reporter: Reporter,
    proxy: ProxyNode,
    nodes: NodeLookup,
    tracker: ConnectionTracker,
    peers: PeerCache | None = None,
) -> ConnectionRecord | None:
    """One ``envoy.data.accesslog.v3.TCPAccessLogEntry`` reported by ``proxy``; None for a
    report made before the inbound's TLS handshake finished."""
    peers = peers or PeerCache()
    common = entry.common_properties
    event = _EVENTS.get(common.access_log_type)
    if event is None:  # an Envoy that does not say: its one entry is the connection's end
        event = "periodic" if common.intermediate_log_entry else "closed"
    if event == "connected" and reporter == "destination" and _handshaking(common):
        return None
    received = entry.connection_properties.received_bytes
    sent = entry.connection_properties.sent_bytes
    downstream_remote = _address(common.downstream_remote_address)
    downstream_local = _address(common.downstream_local_address)
    connection_id = cut(
        common.stream_id
        or f"{common.start_time.ToNanoseconds()}|{downstream_remote}|{downstream_local}"
    )
    opened, received_delta, sent_delta = tracker.report(
        proxy.id, connection_id, received, sent, event == "closed"
    )
    upstream = common.upstream_remote_address.socket_address

    if reporter == "destination":
        source, destination, security = _inbound_peers(common, proxy, nodes, peers)
        hostname = qualify_host(proxy.service, proxy.namespace) if proxy.service else UNKNOWN
    else:
        source = peers.peer(proxy)
        security = UNKNOWN
        hostname, destination = outbound_destination(
            common.upstream_cluster, upstream, nodes, peers
        )
    if hostname == UNKNOWN:
        service_name, service_namespace = UNKNOWN, UNKNOWN
    else:
        service_name, service_namespace = service_name_and_namespace(hostname)
        if service_namespace == UNKNOWN and destination.namespace != UNKNOWN:
            service_namespace = destination.namespace

    return ConnectionRecord(
        start_time=common.start_time.ToNanoseconds() / 1e9,
        event=event,
        opened=opened,
        reporter=reporter,
        proxy=proxy.id,
        source=source,
        destination=destination,
        destination_service=hostname,
        destination_service_name=service_name,
        destination_service_namespace=service_namespace,
        received_bytes=received,
        sent_bytes=sent,
        received_delta=received_delta,
        sent_delta=sent_delta,
        duration_ms=common.duration.ToNanoseconds() / 1e6,
        response_flags=(
            response_flags(common.response_flags) if common.HasField("response_flags") else ()
        ),
        upstream_cluster=common.upstream_cluster,
        upstream_host=f"{upstream.address}:{upstream.port_value}" if upstream.address else "",
        upstream_failure=cut(common.upstream_transport_failure_reason),
        termination_details=cut(common.connection_termination_details),
        connection_security_policy=security,
        downstream_remote=downstream_remote,
        downstream_local=downstream_local,
        connection_id=connection_id,
    )


def _inbound_peers(
    common: Any, proxy: ProxyNode, nodes: NodeLookup, peers: PeerCache
) -> tuple[Peer, Peer, str]:
    tls = common.tls_properties
    peer_principal = uri_san(tls.peer_certificate_properties)
    local_principal = uri_san(tls.local_certificate_properties)
    destination = peers.peer(proxy, local_principal or UNKNOWN)
    if not peer_principal:
        return Peer(), destination, "none"
    return _holder_of(peer_principal, nodes, peers), destination, "mutual_tls"


def _handshaking(common: Any) -> bool:
    """Whether the downstream connection is TLS and shows no peer certificate yet (the mesh's
    TLS chains all ask for one)."""
    if not common.HasField("tls_properties"):
        return False
    tls = common.tls_properties
    return tls.HasField("local_certificate_properties") and not uri_san(
        tls.peer_certificate_properties
    )


def _holder_of(principal: str, nodes: NodeLookup, peers: PeerCache) -> Peer:
    """The labels of the proxies holding ``principal``, when they all have the same (one
    workload's replicas); else only the principal and its namespace. Looked at once per
    connection report, over the connected proxies (a few microseconds each)."""
    holders = {
        peers.peer(node, principal)
        for node in nodes.connected_nodes()
        if holds_principal(node, principal)
    }
    if len(holders) == 1:
        return holders.pop()
    return Peer(principal=principal, namespace=principal_namespace(principal))


def _address(address: Any) -> str:
    socket = address.socket_address
    return f"{socket.address}:{socket.port_value}" if socket.address else ""
