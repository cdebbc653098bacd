"""A record as an access-log line: Istio's default text format, or its JSON fields.

The text line has the fields of Istio's default ``accessLogFormat`` in its order (Envoy's
``-`` for a value the record does not carry: the protocol version, user agent, forwarded-for
and socket addresses are not in the access-log entries the proxies send us), then the
response flags in words, which is what the line is most often read for.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pilotfish.model.telemetry import flag_words
from pilotfish.telemetry.records import RequestRecord

_MISSING = "-"


def envoy_time(unix_seconds: float) -> str:
    """Envoy's ``%START_TIME%``: UTC, ISO 8601 with milliseconds."""
    moment = datetime.fromtimestamp(unix_seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _value(text: str | int) -> str:
    return str(text) if text != "" else _MISSING


def _quoted(text: str) -> str:
    return f'"{_value(text)}"'


def flags_in_words(record: RequestRecord) -> str:
    """``UF=upstream connection failure, URX=upstream retry limit exceeded``, or ``""``."""
    words = flag_words(record.response_flags)
    return ", ".join(
        f"{code}={word}" for code, word in zip(record.response_flags, words, strict=True)
    )


def format_text_line(record: RequestRecord) -> str:
    fields = [
        f"[{envoy_time(record.start_time)}]",
        f'"{_value(record.method)} {_value(record.path)} {_MISSING}"',  # %PROTOCOL% not sent
        str(record.response_code),
        record.response_flags_label,
        _value(record.response_code_details),
        _MISSING,  # %CONNECTION_TERMINATION_DETAILS%
        _quoted(record.upstream_failure),
        str(record.request_bytes),
        str(record.response_bytes),
        str(round(record.duration_ms)),
        _MISSING,  # %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
        _quoted(""),  # %REQ(X-FORWARDED-FOR)%
        _quoted(""),  # %REQ(USER-AGENT)%
        _quoted(record.request_id),
        _quoted(record.authority),
        _quoted(record.upstream_host),
        _value(record.upstream_cluster),
        _MISSING,  # %UPSTREAM_LOCAL_ADDRESS%
        _MISSING,  # %DOWNSTREAM_LOCAL_ADDRESS%
        _MISSING,  # %DOWNSTREAM_REMOTE_ADDRESS%
        _MISSING,  # %REQUESTED_SERVER_NAME%
        _value(record.route_name),
    ]
    line = " ".join(fields)
    words = flags_in_words(record)
    return f"{line} flags: {words}" if words else line


def log_fields(record: RequestRecord) -> dict[str, object]:
    """The JSON access-log entry: Istio's JSON field names for what the record carries, the
    flags in words, and who reported it."""
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


def format_json_line(record: RequestRecord) -> str:
    return json.dumps(log_fields(record), separators=(",", ":"))
