"""What the proxies and the control plane agree on for telemetry, and the mesh's settings for it.

Every proxy streams one access-log entry per request to the control plane over gRPC (Envoy's
access-log service, on the xDS port); the control plane makes Istio's metrics, the live views
and the per-proxy logs from them. Spans go as Zipkin v2 JSON to the admin port.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

# --- the wire between proxies and the control plane -----------------------------------------

# ``log_name`` of each HTTP connection manager's gRPC access logger: who reports the request.
# Istio's reporters: a sidecar's outbound and the gateway report as "source", a sidecar's
# inbound as "destination".
ALS_LOG_OUTBOUND = "pilotfish.outbound"
ALS_LOG_INBOUND = "pilotfish.inbound"
ALS_LOG_GATEWAY = "pilotfish.gateway"
ALS_LOG_NAMES: Mapping[str, Literal["source", "destination"]] = {
    ALS_LOG_OUTBOUND: "source",
    ALS_LOG_GATEWAY: "source",
    ALS_LOG_INBOUND: "destination",
}
# The caller's sidecar (or the gateway) sets this to its own node id on every request it sends
# (replacing whatever the app sent); the callee's inbound moves it into the dynamic metadata
# below and removes it, so the app never sees it and the inbound's log entry names its caller.
PEER_HEADER = "x-pilotfish-peer"
PEER_METADATA_NAMESPACE = "pilotfish.peer"
PEER_METADATA_KEY = "id"
# Request headers and response trailers the gRPC access logger adds to each entry.
LOGGED_REQUEST_HEADERS = ("traceparent", "x-b3-traceid", "content-type")
LOGGED_RESPONSE_HEADERS = ("grpc-status",)
LOGGED_RESPONSE_TRAILERS = ("grpc-status",)
# The gRPC access logger's buffer (Envoy's default is 16 KiB, a flush every ~40 entries under
# load). Measured (benchmarks/telemetry_candidates.py, static pair, wrk -c16): the logger adds
# 17% Envoy CPU per request with 16 KiB and 7% with 256 KiB, where a flush is once a second;
# Envoy's stats access logger adds 4%, but keeps no record of a request to tap or log.
ALS_BUFFER_BYTES = 256 * 1024
ALS_FLUSH_SECONDS = 1.0
# A TCP proxy logs a connection when its upstream connects, every ``TCP_LOG_FLUSH_SECONDS``
# while it is open, and when it ends: a long connection (a database client's pool) shows its
# bytes in ``istio_tcp_*`` within seconds rather than when it closes. Envoy's periodic entries
# carry the bytes since the connection began (measured on 1.40), so the control plane counts
# the difference to the connection's previous entry.
TCP_LOG_FLUSH_SECONDS = 5.0

# The static cluster the agent's bootstrap has when it knows the admin address (node metadata
# PILOTFISH_TELEMETRY is then true): Zipkin spans go there, to ``ZIPKIN_SPANS_PATH``.
TELEMETRY_CLUSTER = "pilotfish-telemetry"
ZIPKIN_SPANS_PATH = "/api/v2/spans"
# Envoy's Zipkin tracer posts protobuf (``HTTP_PROTO``): with every request traced it adds 45%
# Envoy CPU per request, JSON 120% (benchmarks/telemetry_candidates.py). Posting bigger
# batches (runtime ``tracing.zipkin.min_flush_spans``) made it worse, not better.
ZIPKIN_ENCODING = "HTTP_PROTO"

# Istio's buckets (istio.stats): request duration in ms, sizes in bytes.
DURATION_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
    600000, 1800000, 3600000,
)  # fmt: skip
SIZE_BUCKETS_BYTES: tuple[float, ...] = tuple(float(10**n) for n in range(9))


# --- Envoy's response flags, in words ----------------------------------------------------------

RESPONSE_FLAG_WORDS: Mapping[str, str] = {
    "UH": "no healthy upstream",
    "UF": "upstream connection failure",
    "UO": "upstream overflow (circuit breaker open)",
    "NR": "no route configured",
    "URX": "upstream retry limit exceeded",
    "NC": "no cluster found",
    "DT": "request timed out in the proxy (max stream duration)",
    "LH": "local service failed its health check",
    "UT": "upstream request timeout",
    "LR": "connection reset by the proxy itself",
    "UR": "upstream remote reset",
    "UC": "upstream connection termination",
    "DI": "request delayed by fault injection",
    "FI": "request aborted by fault injection",
    "RL": "rate limited locally",
    "UAEX": "refused by the external authorization service",
    "RLSE": "rate limit service error",
    "IH": "invalid header value (strict header check)",
    "SI": "stream idle timeout",
    "DPE": "downstream protocol error",
    "UPE": "upstream protocol error",
    "UMSDR": "upstream max stream duration reached",
    "OM": "overload manager",
    "DF": "DNS resolution failed",
    "DO": "dropped by the load balancer (drop overload)",
    "DR": "downstream remote reset",
    "UDO": "upstream drop overload",
    "DC": "downstream connection terminated",
}


def flag_words(codes: tuple[str, ...]) -> tuple[str, ...]:
    """``("UF", "URX")`` -> their meanings; a code we do not know stays itself."""
    return tuple(RESPONSE_FLAG_WORDS.get(code, code) for code in codes)


# --- the mesh's settings (parsed from the MeshConfig kind into MeshSettings.telemetry) ---------

AccessLogEncoding = Literal["TEXT", "JSON"]
TraceExporterKind = Literal["zipkin", "opentelemetry"]


@dataclass(frozen=True)
class TraceExporter:
    """Where the control plane forwards the spans it collects, besides keeping them.

    ``zipkin``: POST Zipkin v2 JSON to ``url`` (``http://host:port/api/v2/spans``);
    ``opentelemetry``: OTLP/HTTP JSON to ``url`` (``http://host:4318/v1/traces``).
    """

    name: str
    kind: TraceExporterKind
    url: str


@dataclass(frozen=True)
class TelemetrySettings:
    access_log_file: str | None = None
    """Istio's ``accessLogFile``: each Envoy also writes its access log there (``/dev/stdout``
    shows it in ``pilotfish up``'s output, per proxy). None: only the control plane's log."""
    access_log_encoding: AccessLogEncoding = "TEXT"
    access_log_format: str | None = None
    """Istio's ``accessLogFormat`` (TEXT only); None is Istio's default format."""
    tracing_sampling: float = 100.0
    """``defaultConfig.tracing.sampling``, percent of requests traced when the caller did not
    decide. Istio's default is 1; a local mesh traces everything."""
    trace_exporters: tuple[TraceExporter, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    enable_tracing: bool = True
    """Istio's ``enableTracing``: false, and no proxy makes spans (nor pays for them)."""
    request_telemetry: bool = True
    """``enableRequestTelemetry`` (ours): false, and no proxy streams its requests to the
    control plane: no istio_* metrics, stat, tap, logs or traffic on the dashboard."""
