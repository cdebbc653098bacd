"""Admin routes for traces: Zipkin's v2 API, so the Zipkin UI or Grafana's Zipkin data source
can read the control plane's recent traces, and the proxies can post their spans.

POST /api/v2/spans                    Zipkin v2 spans, a JSON list or protobuf ListOfSpans
                                      (gzip too); 202, or 400 naming the first bad span (the
                                      good ones are kept); 415 for any other content type
GET  /api/v2/services                 local service names
GET  /api/v2/spans?serviceName=       span names of a service
GET  /api/v2/remoteServices?serviceName=
GET  /api/v2/traces?serviceName=&remoteServiceName=&spanName=&annotationQuery=&minDuration=
                    &maxDuration=&endTs=&lookback=&limit=
GET  /api/v2/trace/{traceId}          404 when unknown
GET  /api/v2/autocompleteKeys         [] (the Zipkin UI asks; no tag is indexed for it)
GET  /api/traces/stats                the store's counts (kept, refused, dropped) and exporters
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from pilotfish.controller.control_plane import ControlPlane
from pilotfish.telemetry.traces import SpanError, parse_spans, parse_trace_query, spans_to_json
from pilotfish.telemetry.zipkin_proto import (
    PROTOBUF_CONTENT_TYPES,
    ZipkinProtoError,
    spans_from_protobuf,
)

JSON_CONTENT_TYPE = "application/json"
SPAN_CONTENT_TYPES = (JSON_CONTENT_TYPE, *PROTOBUF_CONTENT_TYPES)


def _bad_request(message: str) -> web.Response:
    # Zipkin answers its errors in plain text.
    return web.Response(status=400, text=message + "\n")


def add_trace_routes(app: web.Application, control_plane: ControlPlane) -> None:
    store = control_plane.traces

    async def post_spans(request: web.Request) -> web.Response:
        # A page in a browser may post text/plain (or a form) anywhere without asking
        # first; only these types need a CORS preflight, which this server never answers.
        if request.content_type not in SPAN_CONTENT_TYPES:
            return web.Response(
                status=415,
                text=f"{request.content_type}: Zipkin v2 spans are read here as "
                f"{' or '.join(SPAN_CONTENT_TYPES)} (optionally with Content-Encoding: "
                "gzip), not Thrift (Zipkin v1) or anything else\n",
            )
        # aiohttp has already undone a Content-Encoding: gzip.
        raw = await request.read()
        data: object
        try:
            if request.content_type in PROTOBUF_CONTENT_TYPES:
                data = spans_from_protobuf(raw)
            else:
                data = json.loads(raw)
        except ZipkinProtoError as exc:
            return _bad_request(str(exc))
        except ValueError as exc:
            return _bad_request(f"the body is not JSON: {exc}")
        try:
            good, refused = parse_spans(data)
        except SpanError as exc:
            return _bad_request(str(exc))
        store.add(good)
        store.refused(len(refused))
        control_plane.trace_export.offer(good)
        if refused:
            first = refused[0]
            return _bad_request(
                f"span {first.index} of the batch: {first.reason} ({len(refused)} of "
                f"{len(refused) + len(good)} spans refused; the others were kept)"
            )
        return web.Response(status=202)

    def service_param(request: web.Request) -> str | None:
        return request.query.get("serviceName") or None

    async def services(_: web.Request) -> web.Response:
        return web.json_response(store.services())

    async def span_names(request: web.Request) -> web.Response:
        service = service_param(request)
        if service is None:
            return _bad_request("serviceName is required")
        return web.json_response(store.span_names(service))

    async def remote_services(request: web.Request) -> web.Response:
        service = service_param(request)
        if service is None:
            return _bad_request("serviceName is required")
        return web.json_response(store.remote_services(service))

    async def traces(request: web.Request) -> web.Response:
        try:
            query = parse_trace_query(request.query, int(time.time() * 1000))
        except ValueError as exc:
            return _bad_request(str(exc))
        return web.json_response([spans_to_json(t) for t in store.traces(query)])

    async def trace(request: web.Request) -> web.Response:
        trace_id = request.match_info["trace_id"]
        spans = store.trace(trace_id)
        if spans is None:
            return web.Response(status=404, text=f"trace {trace_id} not found\n")
        return web.json_response(spans_to_json(spans))

    async def autocomplete_keys(_: web.Request) -> web.Response:
        return web.json_response([])

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "traces": len(store),
                "spans": store.span_count,
                "bytes": store.bytes,
                "limits": {
                    "max_traces": store.limits.max_traces,
                    "max_spans": store.limits.max_spans,
                    "max_spans_per_trace": store.limits.max_spans_per_trace,
                    "max_age_seconds": store.limits.max_age_seconds,
                    "max_bytes": store.limits.max_bytes,
                },
                "counts": store.counts.to_json(),
                "exporters": control_plane.trace_export.status_json(),
            }
        )

    app.router.add_post("/api/v2/spans", post_spans)
    app.router.add_get("/api/v2/spans", span_names)
    app.router.add_get("/api/v2/services", services)
    app.router.add_get("/api/v2/remoteServices", remote_services)
    app.router.add_get("/api/v2/traces", traces)
    app.router.add_get("/api/v2/trace/{trace_id}", trace)
    app.router.add_get("/api/v2/autocompleteKeys", autocomplete_keys)
    app.router.add_get("/api/traces/stats", stats)
