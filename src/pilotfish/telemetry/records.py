"""One request (or TCP connection) as one proxy saw it: what every view of traffic is made from.

A request through two sidecars is two records, one per reporter (Istio's ``reporter`` label):
the caller's sidecar (``source``) and the callee's (``destination``). Unknown values are
``"unknown"``, as in Istio's metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pilotfish.model.telemetry import flag_words

Reporter = Literal["source", "destination"]
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Peer:
    """One end of a request, with Istio's label values for it."""

    workload: str = UNKNOWN
    namespace: str = UNKNOWN
    principal: str = UNKNOWN
    app: str = UNKNOWN
    version: str = UNKNOWN
    canonical_service: str = UNKNOWN
    canonical_revision: str = UNKNOWN

    def to_json(self) -> dict[str, str]:
        return {
            "workload": self.workload,
            "namespace": self.namespace,
            "principal": self.principal,
            "app": self.app,
            "version": self.version,
            "canonical_service": self.canonical_service,
            "canonical_revision": self.canonical_revision,
        }


@dataclass(frozen=True, slots=True)
class RequestRecord:
    start_time: float
    """Unix seconds when the proxy got the first byte of the request."""
    reporter: Reporter
    proxy: str
    """The node id of the proxy that reported it."""
    source: Peer
    destination: Peer
    destination_service: str
    """The service's hostname (``backend.default.svc.cluster.local``), or ``unknown``."""
    destination_service_name: str
    destination_service_namespace: str
    method: str
    path: str
    authority: str
    request_protocol: str
    """``http`` or ``grpc``, as Istio reports it."""
    response_code: int
    """0 when no response was sent (the caller went away first)."""
    grpc_status: str
    """The ``grpc-status`` of a gRPC response, else ``""``."""
    response_flags: tuple[str, ...]
    """Envoy's short codes (``UF``, ``URX``...); empty when none."""
    response_code_details: str
    upstream_failure: str
    """``%UPSTREAM_TRANSPORT_FAILURE_REASON%``, or ``""``."""
    duration_ms: float
    request_bytes: int
    response_bytes: int
    upstream_cluster: str
    upstream_host: str
    route_name: str
    request_id: str
    trace_id: str
    """The W3C / B3 trace id the request carried, or ``""`` when it was not traced."""
    connection_security_policy: str
    """``mutual_tls`` or ``none`` on the destination side; ``unknown`` on the source side."""
    http_version: str = ""
    """Envoy's ``%PROTOCOL%`` of the downstream request (``HTTP/1.1``, ``HTTP/2``), or ``""``."""

    @property
    def ok(self) -> bool:
        """A success as Linkerd and Istio dashboards count it: anything but a 5xx (a gRPC call
        fails with a non-zero grpc-status), and a response was sent at all."""
        if self.response_code == 0 or self.response_code >= 500:
            return False
        return self.grpc_status in ("", "0")

    @property
    def response_flags_label(self) -> str:
        """Istio's ``response_flags`` label: ``-`` when none, else the codes joined by ``,``."""
        return ",".join(self.response_flags) or "-"

    def to_json(self) -> dict[str, object]:
        return {
            "start_time": self.start_time,
            "reporter": self.reporter,
            "proxy": self.proxy,
            "source": self.source.to_json(),
            "destination": self.destination.to_json(),
            "destination_service": self.destination_service,
            "destination_service_name": self.destination_service_name,
            "destination_service_namespace": self.destination_service_namespace,
            "method": self.method,
            "path": self.path,
            "authority": self.authority,
            "request_protocol": self.request_protocol,
            "response_code": self.response_code,
            "grpc_status": self.grpc_status,
            "response_flags": list(self.response_flags),
            "response_flag_words": list(flag_words(self.response_flags)),
            "response_code_details": self.response_code_details,
            "upstream_failure": self.upstream_failure,
            "duration_ms": self.duration_ms,
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
            "upstream_cluster": self.upstream_cluster,
            "upstream_host": self.upstream_host,
            "route_name": self.route_name,
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "connection_security_policy": self.connection_security_policy,
            "http_version": self.http_version,
            "ok": self.ok,
        }


ConnectionEvent = Literal["connected", "periodic", "closed"]


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """One report of a TCP connection by one proxy: when its upstream connected, every few
    seconds while it is open, and when it ended (Envoy's TCP access-log entry types).

    The ``*_delta`` bytes are those since the connection's previous report (what the
    ``istio_tcp_*_bytes_total`` counters add); ``received_bytes`` / ``sent_bytes`` are since
    it began. Received is from the downstream (the client), sent is to it, at both reporters.
    """

    start_time: float
    """Unix seconds when the proxy accepted the connection."""
    event: ConnectionEvent
    opened: bool
    """The first report of this connection the control plane has seen: counts one opened."""
    reporter: Reporter
    proxy: str
    source: Peer
    destination: Peer
    destination_service: str
    destination_service_name: str
    destination_service_namespace: str
    received_bytes: int
    sent_bytes: int
    received_delta: int
    sent_delta: int
    duration_ms: float
    """Until this report (the whole connection's for ``closed``)."""
    response_flags: tuple[str, ...]
    upstream_cluster: str
    upstream_host: str
    upstream_failure: str
    termination_details: str
    """``%CONNECTION_TERMINATION_DETAILS%``: why the proxy closed it, when it did."""
    connection_security_policy: str
    downstream_remote: str
    downstream_local: str
    connection_id: str
    """Envoy's stream id of the connection (a UUID), the same in each of its reports."""

    @property
    def closed(self) -> bool:
        return self.event == "closed"

    @property
    def ok(self) -> bool:
        """Whether the proxy flagged nothing (no failed upstream connect, no limit hit...)."""
        return not self.response_flags

    @property
    def response_flags_label(self) -> str:
        return ",".join(self.response_flags) or "-"

    def to_json(self) -> dict[str, object]:
        return {
            "start_time": self.start_time,
            "event": self.event,
            "reporter": self.reporter,
            "proxy": self.proxy,
            "source": self.source.to_json(),
            "destination": self.destination.to_json(),
            "destination_service": self.destination_service,
            "destination_service_name": self.destination_service_name,
            "destination_service_namespace": self.destination_service_namespace,
            "request_protocol": "tcp",
            "received_bytes": self.received_bytes,
            "sent_bytes": self.sent_bytes,
            "duration_ms": self.duration_ms,
            "response_flags": list(self.response_flags),
            "response_flag_words": list(flag_words(self.response_flags)),
            "upstream_cluster": self.upstream_cluster,
            "upstream_host": self.upstream_host,
            "upstream_failure": self.upstream_failure,
            "connection_termination_details": self.termination_details,
            "connection_security_policy": self.connection_security_policy,
            "downstream_remote_address": self.downstream_remote,
            "downstream_local_address": self.downstream_local,
            "connection_id": self.connection_id,
        }


LogRecord = RequestRecord | ConnectionRecord
"""A line of a proxy's access log: a request, or a TCP connection (its end)."""
