"""What every HTTP connection manager gets for telemetry: its access logs, the peer header,
tracing, and bodies for the replies the proxy makes itself that say who made them and why.

The names other parts read (``model.telemetry``): the gRPC access logger's ``log_name``
says who reports (outbound, inbound, gateway); ``PEER_HEADER`` carries the caller's node id
from its outbound (or the gateway) to the callee's inbound, which moves it into dynamic
metadata; spans go to ``TELEMETRY_CLUSTER`` when the node's bootstrap has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.config.core.v3 import substitution_format_string_pb2 as format_pb2
from envoy.config.trace.v3 import http_tracer_pb2, zipkin_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as data_accesslog_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.header_to_metadata.v3 import header_to_metadata_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.telemetry import (
    ALS_BUFFER_BYTES,
    ALS_FLUSH_SECONDS,
    ALS_LOG_GATEWAY,
    ALS_LOG_INBOUND,
    ALS_LOG_OUTBOUND,
    LOGGED_REQUEST_HEADERS,
    LOGGED_RESPONSE_HEADERS,
    LOGGED_RESPONSE_TRAILERS,
    PEER_HEADER,
    PEER_METADATA_KEY,
    PEER_METADATA_NAMESPACE,
    RESPONSE_FLAG_WORDS,
    TCP_LOG_FLUSH_SECONDS,
    TELEMETRY_CLUSTER,
    ZIPKIN_ENCODING,
    ZIPKIN_SPANS_PATH,
    TelemetrySettings,
)
from pilotfish.translate.authorization import text_body
from pilotfish.translate.proto_values import duration_from_seconds, format_literal, pack
from pilotfish.translate.resilience import CIRCUIT_BREAKER_OPERATOR, OUTLIER_DETECTION_OPERATOR
from pilotfish.translate.tcp_proxy import NO_TCP_TELEMETRY, TcpTelemetry

# The agent's bootstrap names the control plane's gRPC cluster so; access logs stream there.
XDS_CLUSTER_NAME = "xds-grpc"
# Every reply the proxy makes itself names the proxy in this response header too.
PROXY_HEADER = "x-pilotfish-proxy"

GRPC_ACCESS_LOGGER = "envoy.access_loggers.http_grpc"
TCP_GRPC_ACCESS_LOGGER = "envoy.access_loggers.tcp_grpc"
FILE_ACCESS_LOGGER = "envoy.access_loggers.file"
ZIPKIN_TRACER = "envoy.tracers.zipkin"
HEADER_MUTATION_FILTER_NAME = "envoy.filters.http.header_mutation"
HEADER_TO_METADATA_FILTER_NAME = "envoy.filters.http.header_to_metadata"

# Istio's default access log fields (pilot/pkg/model/telemetry_logging.go), in its order.
ISTIO_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)
# Istio's keys for accessLogEncoding JSON, with the same operators as the text format.
ISTIO_JSON_FORMAT: tuple[tuple[str, str], ...] = (
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("connection_termination_details", "%CONNECTION_TERMINATION_DETAILS%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    ("upstream_service_time", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("upstream_transport_failure_reason", "%UPSTREAM_TRANSPORT_FAILURE_REASON%"),
)

# The mesh's own replies, most specific cause first: a reply flagged "UF,URX" (retries of a
# refused connection ran out) is explained by its UF, and the flags list shows the rest.
LOCAL_REPLY_FLAGS = (
    "UF",
    "UH",
    "NR",
    "NC",
    "UO",
    "UT",
    "RL",
    "FI",
    "DI",
    "DC",
    "DPE",
    "UPE",
    "URX",
)
# After the cause: where it happened, Envoy's own reason, and every flag of the reply.
LOCAL_REPLY_WHERE = (
    "; cluster %UPSTREAM_CLUSTER%, route %ROUTE_NAME%, details %RESPONSE_CODE_DETAILS%, "
    "%UPSTREAM_TRANSPORT_FAILURE_REASON% [%RESPONSE_FLAGS%]"
)

HttpRole = Literal["outbound", "inbound", "gateway"]
_LOG_NAMES: dict[HttpRole, str] = {
    "outbound": ALS_LOG_OUTBOUND,
    "inbound": ALS_LOG_INBOUND,
    "gateway": ALS_LOG_GATEWAY,
}


@dataclass(frozen=True)
class HttpTelemetry:
    """What one HTTP connection manager gets: ``filters`` go first of all; the
    ``reply_headers`` go on every local reply mapper, the security ones included."""

    access_logs: tuple[accesslog_pb2.AccessLog, ...] = ()
    filters: tuple[hcm_pb2.HttpFilter, ...] = ()
    tracing: hcm_pb2.HttpConnectionManager.Tracing | None = None
    reply_mappers: tuple[hcm_pb2.ResponseMapper, ...] = ()
    reply_headers: tuple[base_pb2.HeaderValueOption, ...] = field(default=())


NO_TELEMETRY = HttpTelemetry()


def http_telemetry(node: ProxyNode, settings: TelemetrySettings, role: HttpRole) -> HttpTelemetry:
    peer_filter = peer_metadata_filter() if role == "inbound" else peer_header_filter(node.id)
    return HttpTelemetry(
        access_logs=tuple(access_logs(role, settings)),
        filters=(peer_filter,),
        tracing=tracing(settings) if node.telemetry and settings.enable_tracing else None,
        reply_mappers=tuple(local_reply_mappers(node.id)),
        reply_headers=(_overwrite(PROXY_HEADER, format_literal(node.id)),),
    )


def tcp_telemetry(node: ProxyNode, settings: TelemetrySettings, role: HttpRole) -> TcpTelemetry:
    """What a TCP proxy of ``node`` in ``role`` reports: each connection to the control plane
    (the ``istio_tcp_*`` metrics, with the same ``log_name`` as the role's HTTP log) when it
    connects, every ``TCP_LOG_FLUSH_SECONDS`` and when it ends; the mesh's ``accessLogFile``
    gets one line per connection, when it ends. ``node`` is the reporter: the control plane
    knows it from the log stream, so nothing of it goes into the config."""
    del node
    logs: list[accesslog_pb2.AccessLog] = []
    if settings.request_telemetry:
        logs.append(tcp_grpc_access_log(_LOG_NAMES[role]))
    if settings.access_log_file is not None:
        logs.append(_at_connection_end(file_access_log(settings)))
    if not logs:
        return NO_TCP_TELEMETRY
    return TcpTelemetry(
        access_logs=tuple(logs),
        access_log_options=tcp_proxy_pb2.TcpProxy.TcpAccessLogOptions(
            flush_access_log_on_connected=True,
            access_log_flush_interval=duration_from_seconds(TCP_LOG_FLUSH_SECONDS),
        ),
    )


# --- access logs ------------------------------------------------------------------------------


def access_logs(role: HttpRole, settings: TelemetrySettings) -> list[accesslog_pb2.AccessLog]:
    """The control plane's gRPC log (unless ``enableRequestTelemetry`` is false), and the
    mesh's ``accessLogFile`` when set."""
    logs = [grpc_access_log(_LOG_NAMES[role])] if settings.request_telemetry else []
    if settings.access_log_file is not None:
        logs.append(file_access_log(settings))
    return logs


def grpc_access_log(log_name: str) -> accesslog_pb2.AccessLog:
    config = als_pb2.HttpGrpcAccessLogConfig(
        common_config=_common_grpc_log_config(log_name),
        additional_request_headers_to_log=LOGGED_REQUEST_HEADERS,
        additional_response_headers_to_log=LOGGED_RESPONSE_HEADERS,
        additional_response_trailers_to_log=LOGGED_RESPONSE_TRAILERS,
    )
    return accesslog_pb2.AccessLog(name=GRPC_ACCESS_LOGGER, typed_config=pack(config))


def tcp_grpc_access_log(log_name: str) -> accesslog_pb2.AccessLog:
    config = als_pb2.TcpGrpcAccessLogConfig(common_config=_common_grpc_log_config(log_name))
    return accesslog_pb2.AccessLog(name=TCP_GRPC_ACCESS_LOGGER, typed_config=pack(config))


def _common_grpc_log_config(log_name: str) -> als_pb2.CommonGrpcAccessLogConfig:
    return als_pb2.CommonGrpcAccessLogConfig(
        log_name=log_name,
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=XDS_CLUSTER_NAME)
        ),
        transport_api_version=config_source_pb2.V3,
        # Flushed once a second, so the live views are about 1 s late; a big buffer
        # keeps the flushes to those (model.telemetry says what it saves).
        buffer_flush_interval=duration_from_seconds(ALS_FLUSH_SECONDS),
        buffer_size_bytes=wrappers_pb2.UInt32Value(value=ALS_BUFFER_BYTES),
    )


def _at_connection_end(log: accesslog_pb2.AccessLog) -> accesslog_pb2.AccessLog:
    """Only the entry of a connection's end: the connected and periodic ones are for the
    metrics, a file wants one line per connection (as Istio's has)."""
    log.filter.log_type_filter.types.append(data_accesslog_pb2.TcpConnectionEnd)
    return log


def file_access_log(settings: TelemetrySettings) -> accesslog_pb2.AccessLog:
    assert settings.access_log_file is not None
    return accesslog_pb2.AccessLog(
        name=FILE_ACCESS_LOGGER,
        typed_config=pack(
            file_pb2.FileAccessLog(
                path=settings.access_log_file, log_format=access_log_format(settings)
            )
        ),
    )


def access_log_format(settings: TelemetrySettings) -> format_pb2.SubstitutionFormatString:
    if settings.access_log_encoding == "JSON":
        keys = struct_pb2.Struct()
        for key, operator in ISTIO_JSON_FORMAT:
            keys[key] = operator
        return format_pb2.SubstitutionFormatString(json_format=keys)
    text = settings.access_log_format or ISTIO_TEXT_FORMAT
    # As Istio does: one entry per line even when the user's format forgot the newline.
    if not text.endswith("\n"):
        text += "\n"
    return format_pb2.SubstitutionFormatString(
        text_format_source=base_pb2.DataSource(inline_string=text)
    )


# --- the peer header --------------------------------------------------------------------------


def peer_header_filter(node_id: str) -> hcm_pb2.HttpFilter:
    """Sets ``PEER_HEADER`` to this proxy's id on every request, whatever the app sent."""
    mutation = header_mutation_pb2.HeaderMutation(
        mutations=header_mutation_pb2.Mutations(
            request_mutations=[
                mutation_rules_pb2.HeaderMutation(
                    # The value is a format string: a "%" of the id must stay itself.
                    append=_overwrite(PEER_HEADER, format_literal(node_id))
                )
            ]
        )
    )
    return hcm_pb2.HttpFilter(name=HEADER_MUTATION_FILTER_NAME, typed_config=pack(mutation))


def peer_metadata_filter() -> hcm_pb2.HttpFilter:
    """Moves ``PEER_HEADER`` into dynamic metadata, where the access log reads it, and away
    from the request, so the app never sees it."""
    rule = header_to_metadata_pb2.Config.Rule(
        header=PEER_HEADER,
        on_header_present=header_to_metadata_pb2.Config.KeyValuePair(
            metadata_namespace=PEER_METADATA_NAMESPACE,
            key=PEER_METADATA_KEY,
            type=header_to_metadata_pb2.Config.STRING,
        ),
        remove=True,
    )
    return hcm_pb2.HttpFilter(
        name=HEADER_TO_METADATA_FILTER_NAME,
        typed_config=pack(header_to_metadata_pb2.Config(request_rules=[rule])),
    )


# --- tracing ----------------------------------------------------------------------------------


def tracing(settings: TelemetrySettings) -> hcm_pb2.HttpConnectionManager.Tracing:
    """Zipkin spans to the control plane; W3C ``traceparent`` and B3 headers both go on to
    the next hop, so apps and tracers of either kind continue the trace."""
    zipkin = zipkin_pb2.ZipkinConfig(
        collector_cluster=TELEMETRY_CLUSTER,
        collector_endpoint=ZIPKIN_SPANS_PATH,
        # Protobuf costs Envoy far less than JSON (model.telemetry says how much).
        collector_endpoint_version=zipkin_pb2.ZipkinConfig.CollectorEndpointVersion.Value(
            ZIPKIN_ENCODING
        ),
        trace_id_128bit=True,
        # Client and server spans of one hop get ids of their own, as Istio's do.
        shared_span_context=wrappers_pb2.BoolValue(value=False),
        trace_context_option=zipkin_pb2.ZipkinConfig.USE_B3_WITH_W3C_PROPAGATION,
    )
    return hcm_pb2.HttpConnectionManager.Tracing(
        random_sampling=percent_pb2.Percent(value=settings.tracing_sampling),
        provider=http_tracer_pb2.Tracing.Http(name=ZIPKIN_TRACER, typed_config=pack(zipkin)),
        custom_tags=[
            custom_tag_pb2.CustomTag(tag=tag, literal=custom_tag_pb2.CustomTag.Literal(value=value))
            for tag, value in sorted(settings.tags.items())
        ],
    )


# --- the proxy's own replies ------------------------------------------------------------------


def local_reply_mappers(node_id: str) -> list[hcm_pb2.ResponseMapper]:
    """A body for each reply this proxy makes itself (Envoy's status code stays): which
    proxy, the cause in words, the cluster and route, Envoy's details and the flags.

    Without them a refused connection reads "upstream connect error or disconnect/reset
    before headers", which names neither the proxy nor the service.
    """
    mappers = [
        _flag_mapper(node_id, (flag,), _CAUSES.get(flag, format_literal(RESPONSE_FLAG_WORDS[flag])))
        for flag in LOCAL_REPLY_FLAGS
    ]
    # Any other flag (an empty list matches every flagged reply).
    mappers.append(
        _flag_mapper(node_id, (), format_literal("the proxy answered this request itself"))
    )
    return mappers


# Causes that need Envoy's operators (the others are fixed words). UO does not say which
# limit was hit, so it names the ones the cluster sets; UH names the cluster's outlier
# detection, which may have ejected every endpoint (translate.resilience keeps both).
_CAUSES = {
    "UO": f"circuit breaker of %UPSTREAM_CLUSTER% is full ({CIRCUIT_BREAKER_OPERATOR})",
    "UH": f"{format_literal(RESPONSE_FLAG_WORDS['UH'])} ({OUTLIER_DETECTION_OPERATOR})",
}


def _flag_mapper(node_id: str, flags: Sequence[str], cause: str) -> hcm_pb2.ResponseMapper:
    """``cause`` is an Envoy format string."""
    text = f"pilotfish: {node_id} answered "
    return hcm_pb2.ResponseMapper(
        filter=accesslog_pb2.AccessLogFilter(
            response_flag_filter=accesslog_pb2.ResponseFlagFilter(flags=list(flags))
        ),
        body_format_override=text_body(text, f"%RESPONSE_CODE%: {cause}{LOCAL_REPLY_WHERE}"),
    )


def _overwrite(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
