"""Zipkin v2 spans as OTLP/HTTP JSON (``ExportTraceServiceRequest``), for OpenTelemetry collectors.

One resource per local service (``service.name``), one scope. OTLP's JSON mapping writes ids as
hex, 64-bit times as decimal strings and enums as numbers. The mapping of fields follows what
the OpenTelemetry Collector's Zipkin receiver does: tags become string attributes, the remote
endpoint becomes ``peer.service`` / ``network.peer.*``, an ``error`` tag becomes an error status.
"""

from __future__ import annotations

from collections.abc import Iterable

from pilotfish.telemetry.traces import Span

SCOPE_NAME = "pilotfish"
UNKNOWN_SERVICE = "unknown_service"
# opentelemetry.proto.trace.v1.Span.SpanKind and Status.StatusCode
_KINDS = {None: 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}
STATUS_ERROR = 2


def _attribute(key: str, value: str | int) -> dict[str, object]:
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": value}}


def span_to_otlp(span: Span) -> dict[str, object]:
    start = (span.timestamp or 0) * 1000
    end = start + (span.duration or 0) * 1000
    attributes = [_attribute(k, v) for k, v in sorted(span.tags.items())]
    if span.remote is not None:
        if span.remote.service_name:
            attributes.append(_attribute("peer.service", span.remote.service_name))
        address = span.remote.ipv4 or span.remote.ipv6
        if address:
            attributes.append(_attribute("network.peer.address", address))
        if span.remote.port:
            attributes.append(_attribute("network.peer.port", span.remote.port))
    out: dict[str, object] = {
        # OTLP trace ids are 16 bytes: a 64-bit Zipkin id is the low half, as B3 defines it.
        "traceId": span.trace_id.rjust(32, "0"),
        "spanId": span.id,
        "name": span.name or "",
        "kind": _KINDS[span.kind],
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(end),
        "attributes": attributes,
    }
    if span.parent_id is not None:
        out["parentSpanId"] = span.parent_id
    if span.annotations:
        out["events"] = [
            {"timeUnixNano": str(a.timestamp * 1000), "name": a.value} for a in span.annotations
        ]
    if "error" in span.tags:
        error = span.tags["error"]
        out["status"] = {"code": STATUS_ERROR, "message": "" if error == "true" else error}
    return out


def spans_to_otlp(spans: Iterable[Span]) -> dict[str, object]:
    """An ``ExportTraceServiceRequest`` body: resources in the order their services came."""
    by_service: dict[str, list[dict[str, object]]] = {}
    for span in spans:
        by_service.setdefault(span.service or UNKNOWN_SERVICE, []).append(span_to_otlp(span))
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [_attribute("service.name", service)]},
                "scopeSpans": [{"scope": {"name": SCOPE_NAME}, "spans": converted}],
            }
            for service, converted in by_service.items()
        ]
    }
