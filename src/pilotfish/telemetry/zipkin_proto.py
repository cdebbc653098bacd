"""Zipkin's protobuf span format (``zipkin.proto3.ListOfSpans``), read into Zipkin v2 JSON.

Envoy's Zipkin tracer can post spans as JSON or as protobuf; protobuf costs it far less CPU
(benchmarks/telemetry_candidates.py: +45% Envoy CPU per request with every request traced,
against +120% for JSON), so the mesh's Envoys post protobuf (``Content-Type:
application/x-protobuf``) and the trace store keeps Zipkin's JSON shape, which is what its
API answers with. The messages are built at import from a descriptor written here, with the
field numbers of openzipkin/zipkin-api's ``zipkin.proto``.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

PROTOBUF_CONTENT_TYPES = ("application/x-protobuf", "application/protobuf")
_KINDS = {1: "CLIENT", 2: "SERVER", 3: "PRODUCER", 4: "CONSUMER"}
_F = descriptor_pb2.FieldDescriptorProto


class ZipkinProtoError(ValueError):
    """The body is not a ``ListOfSpans``."""


def _field(
    message: Any, name: str, number: int, kind: int, *, repeated: bool = False, type_name: str = ""
) -> None:
    label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    field = message.field.add(name=name, number=number, type=kind, label=label)
    if type_name:
        field.type_name = type_name


def _zipkin_file() -> Any:
    proto = descriptor_pb2.FileDescriptorProto(
        name="pilotfish/telemetry/zipkin.proto", package="zipkin.proto3", syntax="proto3"
    )
    endpoint = proto.message_type.add(name="Endpoint")
    _field(endpoint, "service_name", 1, _F.TYPE_STRING)
    _field(endpoint, "ipv4", 2, _F.TYPE_BYTES)
    _field(endpoint, "ipv6", 3, _F.TYPE_BYTES)
    _field(endpoint, "port", 4, _F.TYPE_INT32)
    annotation = proto.message_type.add(name="Annotation")
    _field(annotation, "timestamp", 1, _F.TYPE_FIXED64)
    _field(annotation, "value", 2, _F.TYPE_STRING)
    span = proto.message_type.add(name="Span")
    tags_entry = span.nested_type.add(name="TagsEntry")
    tags_entry.options.map_entry = True
    _field(tags_entry, "key", 1, _F.TYPE_STRING)
    _field(tags_entry, "value", 2, _F.TYPE_STRING)
    _field(span, "trace_id", 1, _F.TYPE_BYTES)
    _field(span, "parent_id", 2, _F.TYPE_BYTES)
    _field(span, "id", 3, _F.TYPE_BYTES)
    _field(span, "kind", 4, _F.TYPE_INT32)  # an enum on the wire is a varint
    _field(span, "name", 5, _F.TYPE_STRING)
    _field(span, "timestamp", 6, _F.TYPE_FIXED64)
    _field(span, "duration", 7, _F.TYPE_UINT64)
    _field(span, "local_endpoint", 8, _F.TYPE_MESSAGE, type_name=".zipkin.proto3.Endpoint")
    _field(span, "remote_endpoint", 9, _F.TYPE_MESSAGE, type_name=".zipkin.proto3.Endpoint")
    _field(
        span, "annotations", 10, _F.TYPE_MESSAGE, repeated=True,
        type_name=".zipkin.proto3.Annotation",
    )  # fmt: skip
    _field(
        span, "tags", 11, _F.TYPE_MESSAGE, repeated=True, type_name=".zipkin.proto3.Span.TagsEntry"
    )
    _field(span, "debug", 12, _F.TYPE_BOOL)
    _field(span, "shared", 13, _F.TYPE_BOOL)
    spans = proto.message_type.add(name="ListOfSpans")
    _field(spans, "spans", 1, _F.TYPE_MESSAGE, repeated=True, type_name=".zipkin.proto3.Span")
    return proto


def _list_of_spans_class() -> Any:
    pool = descriptor_pool.DescriptorPool()  # our own: nothing else may define zipkin.proto3
    proto = _zipkin_file()
    pool.Add(proto)
    descriptor = pool.FindMessageTypeByName("zipkin.proto3.ListOfSpans")
    return message_factory.GetMessageClass(descriptor)


ListOfSpans: Any = _list_of_spans_class()


def _endpoint(endpoint: Any) -> dict[str, object]:
    out: dict[str, object] = {}
    if endpoint.service_name:
        out["serviceName"] = endpoint.service_name
    if len(endpoint.ipv4) == 4:
        out["ipv4"] = str(ipaddress.IPv4Address(endpoint.ipv4))
    if len(endpoint.ipv6) == 16:
        out["ipv6"] = str(ipaddress.IPv6Address(endpoint.ipv6))
    if endpoint.port:
        out["port"] = endpoint.port
    return out


def _span_id(raw: bytes) -> str:
    """Envoy (1.40) writes a span id's 8 bytes in its host's order, little-endian here, while
    Zipkin means big-endian (its trace ids Envoy does write big-endian). The integration test
    with a real Envoy holds us to what it sends."""
    return raw[::-1].hex()


def _span(span: Any) -> dict[str, object]:
    out: dict[str, object] = {"traceId": span.trace_id.hex(), "id": _span_id(span.id)}
    if span.parent_id:
        out["parentId"] = _span_id(span.parent_id)
    if span.kind in _KINDS:
        out["kind"] = _KINDS[span.kind]
    if span.name:
        out["name"] = span.name
    if span.timestamp:
        out["timestamp"] = span.timestamp
    if span.duration:
        out["duration"] = span.duration
    if span.HasField("local_endpoint"):
        out["localEndpoint"] = _endpoint(span.local_endpoint)
    if span.HasField("remote_endpoint"):
        out["remoteEndpoint"] = _endpoint(span.remote_endpoint)
    if span.annotations:
        out["annotations"] = [
            {"timestamp": a.timestamp, "value": a.value} for a in span.annotations
        ]
    if span.tags:
        out["tags"] = dict(span.tags)
    if span.debug:
        out["debug"] = True
    if span.shared:
        out["shared"] = True
    return out


def spans_from_protobuf(body: bytes) -> list[dict[str, object]]:
    """The spans of a ``ListOfSpans`` body, each as Zipkin's v2 JSON would have it."""
    message = ListOfSpans()
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise ZipkinProtoError(f"not a zipkin.proto3.ListOfSpans: {exc}") from exc
    return [_span(span) for span in message.spans]
