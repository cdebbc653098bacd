from __future__ import annotations

from pilotfish.telemetry.otlp import spans_to_otlp
from pilotfish.telemetry.traces import parse_span


def test_spans_become_one_resource_per_local_service_with_otlp_json_fields() -> None:
    client = parse_span(
        {
            "traceId": "48485a3953bb6124",
            "id": "a2fb4a1d1a96d312",
            "parentId": "0000000000000001",
            "name": "backend:8080/*",
            "kind": "CLIENT",
            "timestamp": 1_700_000_000_000_000,
            "duration": 2500,
            "localEndpoint": {"serviceName": "frontend"},
            "remoteEndpoint": {"serviceName": "backend", "ipv4": "127.0.0.1", "port": 8080},
            "annotations": [{"timestamp": 1_700_000_000_000_100, "value": "ws"}],
            "tags": {"http.status_code": "503", "error": "true"},
        }
    )
    server = parse_span(
        {
            "traceId": "463ac35c9f6413ad48485a3953bb6124",
            "id": "b2fb4a1d1a96d312",
            "kind": "SERVER",
            "timestamp": 1_700_000_000_000_500,
            "duration": 1000,
            "localEndpoint": {"serviceName": "backend"},
        }
    )
    stray = parse_span({"traceId": "1" * 16, "id": "2" * 16})
    body = spans_to_otlp([client, server, stray])
    resources = body["resourceSpans"]
    assert isinstance(resources, list)
    names = [r["resource"]["attributes"] for r in resources]
    assert names == [
        [{"key": "service.name", "value": {"stringValue": service}}]
        for service in ("frontend", "backend", "unknown_service")
    ]
    first = resources[0]["scopeSpans"][0]["spans"][0]
    assert first["traceId"] == "0000000000000000" + "48485a3953bb6124"
    assert first["spanId"] == "a2fb4a1d1a96d312"
    assert first["parentSpanId"] == "0000000000000001"
    assert first["kind"] == 3
    assert first["startTimeUnixNano"] == "1700000000000000000"
    assert first["endTimeUnixNano"] == "1700000000002500000"
    assert first["status"] == {"code": 2, "message": ""}
    assert first["events"] == [{"timeUnixNano": "1700000000000100000", "name": "ws"}]
    attributes = {a["key"]: a["value"] for a in first["attributes"]}
    assert attributes["http.status_code"] == {"stringValue": "503"}
    assert attributes["peer.service"] == {"stringValue": "backend"}
    assert attributes["network.peer.address"] == {"stringValue": "127.0.0.1"}
    assert attributes["network.peer.port"] == {"intValue": "8080"}
    second = resources[1]["scopeSpans"][0]["spans"][0]
    assert second["traceId"] == "463ac35c9f6413ad48485a3953bb6124"
    assert second["kind"] == 2
    assert "status" not in second and "parentSpanId" not in second
    assert resources[2]["scopeSpans"][0]["spans"][0]["kind"] == 1
