"""Zipkin protobuf spans read into Zipkin's JSON shape."""

from __future__ import annotations

import pytest

from pilotfish.telemetry.zipkin_proto import ListOfSpans, ZipkinProtoError, spans_from_protobuf


def test_every_field_reads_into_its_json_name() -> None:
    message = ListOfSpans()
    span = message.spans.add(
        trace_id=bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"),
        # Envoy's byte order for span ids: little-endian.
        id=bytes.fromhex("00f067aa0ba902b7")[::-1],
        parent_id=bytes.fromhex("0102030405060708")[::-1],
        kind=1,
        name="backend.default.svc.cluster.local:8080/*",
        timestamp=1_700_000_000_000_000,
        duration=1_500,
        debug=True,
    )
    span.tags["http.status_code"] = "503"
    span.local_endpoint.service_name = "frontend.default"
    span.local_endpoint.ipv4 = bytes([127, 0, 0, 1])
    span.remote_endpoint.ipv6 = bytes(15) + b"\x01"
    span.remote_endpoint.port = 8080
    span.annotations.add(timestamp=1_700_000_000_000_100, value="cs")
    assert spans_from_protobuf(message.SerializeToString()) == [
        {
            "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
            "id": "00f067aa0ba902b7",
            "parentId": "0102030405060708",
            "kind": "CLIENT",
            "name": "backend.default.svc.cluster.local:8080/*",
            "timestamp": 1_700_000_000_000_000,
            "duration": 1_500,
            "localEndpoint": {"serviceName": "frontend.default", "ipv4": "127.0.0.1"},
            "remoteEndpoint": {"ipv6": "::1", "port": 8080},
            "annotations": [{"timestamp": 1_700_000_000_000_100, "value": "cs"}],
            "tags": {"http.status_code": "503"},
            "debug": True,
        }
    ]


def test_a_body_that_is_not_protobuf_is_refused() -> None:
    with pytest.raises(ZipkinProtoError, match="ListOfSpans"):
        spans_from_protobuf(b"\xff\xff\xff")
