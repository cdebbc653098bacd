from __future__ import annotations

import json

from tests.request_records import T0, connection, record

from pilotfish.telemetry.access_log_format import (
    envoy_time,
    format_json_line,
    format_text_line,
)
from pilotfish.translate.telemetry import ISTIO_TEXT_FORMAT


def test_a_good_request_is_istios_default_line_with_dashes_for_what_was_not_sent() -> None:
    line = format_text_line(record(at=T0 + 0.0125, duration_ms=12.5), ISTIO_TEXT_FORMAT)
    assert line == (
        '[2027-01-15T08:00:00.000Z] "GET / HTTP/1.1" 200 - via_upstream - "-" 0 12 12 - "-" "-" '
        '"5d1c7a2e-0000-4000-8000-000000000001" "backend:8080" "127.0.0.1:40001" '
        "outbound|8080||backend.default.svc.cluster.local - - - - default"
    )


def test_a_failure_carries_its_flags_in_words() -> None:
    line = format_text_line(
        record(reporter="source", code=503, flags=("UF", "URX")), ISTIO_TEXT_FORMAT
    )
    assert " 503 UF,URX upstream_reset_before_response_started{connection_failure} " in line
    assert line.endswith(
        " flags: UF=upstream connection failure, URX=upstream retry limit exceeded"
    )


def test_envoy_time_is_utc_with_milliseconds() -> None:
    assert envoy_time(T0 + 1.2345) == "2027-01-15T08:00:01.234Z"


def test_the_json_line_has_istios_field_names_and_the_words() -> None:
    entry = json.loads(format_json_line(record(code=503, flags=("UH",), duration_ms=3.4)))
    assert entry["response_code"] == 503
    assert entry["response_flags"] == "UH"
    assert entry["response_flag_words"] == ["no healthy upstream"]
    assert entry["duration"] == 3
    assert entry["upstream_cluster"] == "outbound|8080||backend.default.svc.cluster.local"
    assert entry["proxy"] == "backend-0"
    assert entry["upstream_transport_failure_reason"] is None


def test_a_format_of_the_users_own_is_filled_operator_by_operator() -> None:
    log_format = (
        "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% peer=%DYNAMIC_METADATA(pilotfish.peer:id)%"
        " %REQ(:AUTHORITY):4% %REQ(X-MISSING?:METHOD)% %RESP(GRPC-STATUS)% 100%%\n"
    )
    line = format_text_line(record(path="/x", code=503, flags=("UO",)), log_format)
    assert line == (
        "/x 503 UO peer=- back GET - 100% flags: UO=upstream overflow (circuit breaker open)"
    )


def test_a_tcp_connection_is_the_line_envoy_writes_for_it_with_istios_format() -> None:
    line = format_text_line(connection(), ISTIO_TEXT_FORMAT)
    assert line == (
        '[2027-01-15T08:00:00.000Z] "- - -" 0 - - - "-" 1200 34000 5321 - "-" "-" "-" "-" '
        '"127.0.0.1:5432" inbound|5432|| - 127.0.0.1:16006 127.0.0.1:40404 - -'
    )
    failed = format_text_line(connection(flags=("UF", "URX"), sent=0), ISTIO_TEXT_FORMAT)
    assert '" 0 UF,URX - - "-" 1200 0 ' in failed
    assert failed.endswith(
        " flags: UF=upstream connection failure, URX=upstream retry limit exceeded"
    )


def test_a_tcp_connections_json_line_has_its_bytes_both_ways_and_its_peers() -> None:
    entry = json.loads(format_json_line(connection()))
    assert entry["protocol"] == "tcp"
    assert (entry["bytes_received"], entry["bytes_sent"], entry["duration"]) == (1200, 34000, 5321)
    assert entry["upstream_host"] == "127.0.0.1:5432"
    assert entry["source_workload"] == "client"
    assert entry["destination_service"] == "db.default.svc.cluster.local"
    assert entry["connection_security_policy"] == "mutual_tls"
    assert entry["response_flags"] == "-"
