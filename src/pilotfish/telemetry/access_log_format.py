"""A record as an access-log line: a format of Envoy's command operators (the one the mesh's
Envoys write: Istio's default or the mesh's ``accessLogFormat``), or Istio's JSON fields.

The record holds what the proxies' gRPC access-log entries carry, so an operator for
something else (the protocol version, the user agent, forwarded-for, socket addresses) is
Envoy's ``-``, as it is for a value Envoy does not have. The response flags are appended in
words, which is what a line is most often read for.

A TCP connection's line is what Envoy writes for one with the same format: the request's
operators are ``-``, ``%RESPONSE_CODE%`` is 0, the bytes are the connection's both ways.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from pilotfish.model.telemetry import flag_words
from pilotfish.telemetry.records import ConnectionRecord, LogRecord, RequestRecord

_MISSING = "-"

# %NAME%, %NAME(argument)%, %NAME(argument):max_length%, and %% for a percent sign.
_OPERATOR = re.compile(r"%%|%([A-Z][A-Z0-9_]*)(?:\(([^)]*)\))?(?::([0-9]+))?%")

_PLAIN: Mapping[str, Callable[[RequestRecord], str | int]] = {
    "RESPONSE_CODE": lambda r: r.response_code,
    "RESPONSE_FLAGS": lambda r: r.response_flags_label,
    "RESPONSE_CODE_DETAILS": lambda r: r.response_code_details,
    "UPSTREAM_TRANSPORT_FAILURE_REASON": lambda r: r.upstream_failure,
    "BYTES_RECEIVED": lambda r: r.request_bytes,
    "BYTES_SENT": lambda r: r.response_bytes,
    "DURATION": lambda r: round(r.duration_ms),
    "UPSTREAM_HOST": lambda r: r.upstream_host,
    "UPSTREAM_CLUSTER": lambda r: r.upstream_cluster,
    "UPSTREAM_CLUSTER_RAW": lambda r: r.upstream_cluster,
    "ROUTE_NAME": lambda r: r.route_name,
    "GRPC_STATUS_NUMBER": lambda r: r.grpc_status,
    "PROTOCOL": lambda r: r.http_version,
}
_CONNECTION: Mapping[str, Callable[[ConnectionRecord], str | int]] = {
    "RESPONSE_CODE": lambda r: 0,
    "RESPONSE_FLAGS": lambda r: r.response_flags_label,
    "CONNECTION_TERMINATION_DETAILS": lambda r: r.termination_details,
    "UPSTREAM_TRANSPORT_FAILURE_REASON": lambda r: r.upstream_failure,
    "BYTES_RECEIVED": lambda r: r.received_bytes,
    "BYTES_SENT": lambda r: r.sent_bytes,
    "DURATION": lambda r: round(r.duration_ms),
    "UPSTREAM_HOST": lambda r: r.upstream_host,
    "UPSTREAM_CLUSTER": lambda r: r.upstream_cluster,
    "UPSTREAM_CLUSTER_RAW": lambda r: r.upstream_cluster,
    "DOWNSTREAM_REMOTE_ADDRESS": lambda r: r.downstream_remote,
    "DOWNSTREAM_LOCAL_ADDRESS": lambda r: r.downstream_local,
}
_REQUEST_HEADERS: Mapping[str, Callable[[RequestRecord], str]] = {
    ":method": lambda r: r.method,
    ":path": lambda r: r.path,
    "x-envoy-original-path": lambda r: r.path,
    ":authority": lambda r: r.authority,
    "host": lambda r: r.authority,
    "x-request-id": lambda r: r.request_id,
}


def envoy_time(unix_seconds: float) -> str:
    """Envoy's ``%START_TIME%``: UTC, ISO 8601 with milliseconds."""
    moment = datetime.fromtimestamp(unix_seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _request_header(record: RequestRecord, argument: str) -> str:
    # REQ(X?Y): header X, else header Y.
    for name in argument.lower().split("?"):
        read = _REQUEST_HEADERS.get(name.strip())
        value = read(record) if read is not None else ""
        if value:
            return value
    return ""


def _operator_value(record: LogRecord, name: str, argument: str) -> str:
    if name == "START_TIME":
        return envoy_time(record.start_time)
    if isinstance(record, ConnectionRecord):
        connection = _CONNECTION.get(name)
        return str(connection(record)) if connection is not None else ""
    if name == "REQ":
        return _request_header(record, argument)
    if name in ("RESP", "TRAILER") and argument.lower() == "grpc-status":
        return record.grpc_status
    read = _PLAIN.get(name)
    return str(read(record)) if read is not None else ""


def render(log_format: str, record: LogRecord) -> str:
    """``log_format``'s command operators filled from ``record``; ``-`` where it has no value."""

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        text = _operator_value(record, match.group(1), match.group(2) or "")
        if match.group(3):
            text = text[: int(match.group(3))]
        return text or _MISSING

    return _OPERATOR.sub(value, log_format).rstrip("\n")


def flags_in_words(record: LogRecord) -> str:
    """``UF=upstream connection failure, URX=upstream retry limit exceeded``, or ``""``."""
    words = flag_words(record.response_flags)
    return ", ".join(
        f"{code}={word}" for code, word in zip(record.response_flags, words, strict=True)
    )


def format_text_line(record: LogRecord, log_format: str) -> str:
    """The line in ``log_format``, then the flags in words."""
    line = render(log_format, record)
    words = flags_in_words(record)
    return f"{line} flags: {words}" if words else line


def log_fields(record: LogRecord) -> dict[str, object]:
    """The JSON access-log entry: Istio's JSON field names for what the record carries, the
    flags in words, and who reported it."""
    if isinstance(record, ConnectionRecord):
        return connection_log_fields(record)
    return {
        "start_time": envoy_time(record.start_time),
        "proxy": record.proxy,
        "reporter": record.reporter,
        "method": record.method,
        "path": record.path,
        "protocol": record.request_protocol,
        "response_code": record.response_code,
        "response_flags": record.response_flags_label,
        "response_flag_words": list(flag_words(record.response_flags)),
        "response_code_details": record.response_code_details,
        "upstream_transport_failure_reason": record.upstream_failure or None,
        "bytes_received": record.request_bytes,
        "bytes_sent": record.response_bytes,
        "duration": round(record.duration_ms),
        "request_id": record.request_id or None,
        "authority": record.authority or None,
        "upstream_host": record.upstream_host or None,
        "upstream_cluster": record.upstream_cluster or None,
        "route_name": record.route_name or None,
        "source_workload": record.source.workload,
        "destination_service": record.destination_service,
        "trace_id": record.trace_id or None,
    }


def connection_log_fields(record: ConnectionRecord) -> dict[str, object]:
    return {
        "start_time": envoy_time(record.start_time),
        "proxy": record.proxy,
        "reporter": record.reporter,
        "protocol": "tcp",
        "response_flags": record.response_flags_label,
        "response_flag_words": list(flag_words(record.response_flags)),
        "connection_termination_details": record.termination_details or None,
        "upstream_transport_failure_reason": record.upstream_failure or None,
        "bytes_received": record.received_bytes,
        "bytes_sent": record.sent_bytes,
        "duration": round(record.duration_ms),
        "upstream_host": record.upstream_host or None,
        "upstream_cluster": record.upstream_cluster or None,
        "downstream_remote_address": record.downstream_remote or None,
        "downstream_local_address": record.downstream_local or None,
        "source_workload": record.source.workload,
        "source_principal": record.source.principal,
        "destination_service": record.destination_service,
        "connection_security_policy": record.connection_security_policy,
    }


def format_json_line(record: LogRecord) -> str:
    return json.dumps(log_fields(record), separators=(",", ":"))
