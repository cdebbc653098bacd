"""Admin routes for traffic: ``/metrics`` and the live views.

GET /metrics                                   Istio's metrics and the control plane's own
GET /api/stat?by=service|workload&window=60   golden metrics per service or workload
GET /api/graph?window=60                       workload -> service edges with their metrics
GET /api/series?service=HOST&minutes=15        one service's metrics in 10 s steps
GET /api/tap?service=&path=&workload=&errors=1&limit=
                                               live requests, one RequestRecord JSON a line
GET /api/logs?proxy=NAME&limit=100&follow=0|1&format=text|json
                                               recent access-log lines of one proxy (or all):
                                               requests, and TCP connections when they end;
                                               the format defaults to the MeshConfig's
                                               accessLogEncoding, text is its accessLogFormat
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from aiohttp import web

from pilotfish.controller.control_plane import ControlPlane
from pilotfish.model.telemetry import TelemetrySettings
from pilotfish.telemetry.access_log_format import format_json_line, format_text_line
from pilotfish.telemetry.live import DEFAULT_WINDOW_SECONDS, MAX_WINDOW_SECONDS
from pilotfish.telemetry.prometheus import CONTENT_TYPE, render
from pilotfish.telemetry.records import LogRecord
from pilotfish.telemetry.tap import TapFilter, TapFull
from pilotfish.translate.telemetry import ISTIO_TEXT_FORMAT

log = logging.getLogger("pilotfish.admin")

NDJSON = "application/x-ndjson"
# How often a stream with nothing to send looks whether its client went away.
_IDLE_CHECK_SECONDS = 1.0


# Set when the app shuts down: a stream ends then, or aiohttp would wait its whole
# shutdown_timeout for it and `pilotfish up` would hang on Ctrl-C while a tap is open.
SHUTTING_DOWN = web.AppKey("shutting_down", asyncio.Event)


def add_telemetry_routes(app: web.Application, control_plane: ControlPlane) -> None:
    add_metrics_route(app, control_plane)
    add_live_routes(app, control_plane)


async def _end_streams(app: web.Application) -> None:
    app[SHUTTING_DOWN].set()


class _BadQuery(Exception):
    pass


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw.removesuffix("s")) if name == "window" else int(raw)
    except ValueError:
        raise _BadQuery(f"{name}: {raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise _BadQuery(f"{name}: {value} is not between {low} and {high}")
    return value


def _flag_query(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "0")
    if raw not in ("0", "1", "true", "false"):
        raise _BadQuery(f"{name}: {raw!r} must be 0 or 1")
    return raw in ("1", "true")


def _bad_request(exc: _BadQuery) -> web.Response:
    return web.json_response({"error": str(exc)}, status=400)


def _mesh_log_format(control_plane: ControlPlane) -> str:
    """The MeshConfig's ``accessLogEncoding`` as the logs' default format."""
    settings = _telemetry_settings(control_plane)
    return "json" if settings.access_log_encoding == "JSON" else "text"


def _telemetry_settings(control_plane: ControlPlane) -> TelemetrySettings:
    config = control_plane.controller.config
    return config.mesh.telemetry if config is not None else TelemetrySettings()


def add_live_routes(app: web.Application, control_plane: ControlPlane) -> None:
    app[SHUTTING_DOWN] = asyncio.Event()
    app.on_shutdown.append(_end_streams)
    live = control_plane.live

    async def stat(request: web.Request) -> web.Response:
        by = request.query.get("by", "service")
        try:
            if by not in ("service", "workload"):
                raise _BadQuery(f"by: {by!r} must be service or workload")
            window = _int_query(request, "window", DEFAULT_WINDOW_SECONDS, 1, MAX_WINDOW_SECONDS)
        except _BadQuery as exc:
            return _bad_request(exc)
        rows = [row.to_json() for row in live.stat(by, window)]
        return web.json_response({"window_seconds": window, "by": by, "rows": rows})

    async def graph(request: web.Request) -> web.Response:
        try:
            window = _int_query(request, "window", DEFAULT_WINDOW_SECONDS, 1, MAX_WINDOW_SECONDS)
        except _BadQuery as exc:
            return _bad_request(exc)
        return web.json_response(live.graph(window))

    async def series(request: web.Request) -> web.Response:
        service = request.query.get("service", "")
        try:
            if not service:
                raise _BadQuery("service: the hostname of a service is required")
            minutes = _int_query(request, "minutes", 15, 1, 15)
        except _BadQuery as exc:
            return _bad_request(exc)
        points = live.series(service, minutes)
        return web.json_response({"service": service, "step_seconds": 10, "points": points})

    async def tap(request: web.Request) -> web.StreamResponse:
        try:
            record_filter = TapFilter(
                service=request.query.get("service", ""),
                path_prefix=request.query.get("path", ""),
                workload=request.query.get("workload", ""),
                proxy=request.query.get("proxy", ""),
                errors_only=_flag_query(request, "errors"),
            )
            limit = _int_query(request, "limit", 0, 0, 1_000_000)
        except _BadQuery as exc:
            return _bad_request(exc)

        def line(record: LogRecord) -> str:
            return json.dumps(record.to_json(), separators=(",", ":"))

        return await _stream(request, control_plane, record_filter, limit, line, NDJSON, [])

    async def logs(request: web.Request) -> web.StreamResponse:
        proxy = request.query.get("proxy") or None
        try:
            limit = _int_query(request, "limit", 100, 0, control_plane.proxy_logs.per_proxy * 10)
            follow = _flag_query(request, "follow")
            encoding = request.query.get("format") or _mesh_log_format(control_plane)
            if encoding not in ("text", "json"):
                raise _BadQuery(f"format: {encoding!r} must be text or json")
        except _BadQuery as exc:
            return _bad_request(exc)
        known = set(control_plane.proxy_logs.proxies)
        known.update(status.node_id for status in control_plane.board.proxies())
        if proxy is not None and proxy not in known:
            listing = ", ".join(sorted(known)) or "none yet"
            return web.json_response(
                {"error": f"no proxy {proxy!r}; the proxies are: {listing}"}, status=404
            )
        # The format the mesh's Envoys write to their own files.
        text_format = _telemetry_settings(control_plane).access_log_format or ISTIO_TEXT_FORMAT

        def formatter(record: LogRecord) -> str:
            if encoding == "json":
                return format_json_line(record)
            return format_text_line(record, text_format)

        content_type = NDJSON if encoding == "json" else "text/plain"
        recent = control_plane.proxy_logs.recent(proxy, limit)
        if not follow:
            text = "".join(formatter(record) + "\n" for record in recent)
            return web.Response(text=text, content_type=content_type)
        return await _stream(
            request,
            control_plane,
            TapFilter(proxy=proxy or "", connections=True),
            0,
            formatter,
            content_type,
            recent,
        )

    app.router.add_get("/api/stat", stat)
    app.router.add_get("/api/graph", graph)
    app.router.add_get("/api/series", series)
    app.router.add_get("/api/tap", tap)
    app.router.add_get("/api/logs", logs)


async def _stream(
    request: web.Request,
    control_plane: ControlPlane,
    record_filter: TapFilter,
    limit: int,
    line: Callable[[LogRecord], str],
    content_type: str,
    first: list[LogRecord],
) -> web.StreamResponse:
    """Write ``first``, then every record ``record_filter`` lets through as it arrives, one
    line each, until ``limit`` lines (0: no limit), the client goes away or the server
    shuts down."""
    shutting_down = request.app[SHUTTING_DOWN]
    arrived = asyncio.Event()
    try:
        subscriber = control_plane.tap.subscribe(record_filter, wake=arrived.set)
    except TapFull as exc:
        return web.json_response({"error": str(exc)}, status=503)
    response = web.StreamResponse(
        headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
    )
    written = 0
    try:
        await response.prepare(request)
        pending = first
        while True:
            for record in pending:
                await response.write((line(record) + "\n").encode())
                written += 1
                if limit and written >= limit:
                    return response
            transport = request.transport
            if transport is None or transport.is_closing() or shutting_down.is_set():
                return response
            pending = subscriber.take()
            if not pending:
                arrived.clear()  # no await since the take: nothing can have arrived between
                await _wait_first(arrived, shutting_down, _IDLE_CHECK_SECONDS)
                pending = subscriber.take()
    except ConnectionResetError:  # the client went away while we wrote
        return response
    finally:
        control_plane.tap.unsubscribe(subscriber)
        if subscriber.dropped:
            log.warning(
                "a tap on %s missed %d records (its reader was slower than the traffic)",
                request.path_qs,
                subscriber.dropped,
            )


async def _wait_first(one: asyncio.Event, other: asyncio.Event, timeout: float) -> None:
    waits = [asyncio.ensure_future(one.wait()), asyncio.ensure_future(other.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def add_metrics_route(app: web.Application, control_plane: ControlPlane) -> None:
    """``GET /metrics``: Istio's standard metrics and the control plane's own, in Prometheus's
    text format."""

    async def metrics(_: web.Request) -> web.Response:
        # The families are immutable copies: the text (megabytes for a big mesh) is written
        # off the event loop, which keeps serving xDS meanwhile.
        text = await asyncio.to_thread(render, control_plane.metric_families())
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/metrics", metrics)
