"""`pilotfish trace DIR [TRACE_ID]`: recent traces, or one trace as a waterfall in the terminal.

The spans come from the admin API's Zipkin v2 routes; the formatting here is pure (spans and a
width in, text out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pilotfish.cli.admin_api import DIRECT, NoMesh, admin_url
from pilotfish.telemetry.traces import Span, SpanError, parse_span, trace_start

MIN_BAR = 10


def add_trace_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    trace = commands.add_parser(
        "trace", help="recent traces, or one trace as a waterfall (Zipkin v2 API of the admin)"
    )
    trace.add_argument("directory", type=Path)
    trace.add_argument("trace_id", nargs="?", help="a 16- or 32-hex trace id")
    trace.add_argument("--service", help="only traces through this service")
    trace.add_argument("--limit", type=int, default=20, help="how many traces to list")
    trace.add_argument("--admin", help="admin API URL (default: read from DIR/.pilotfish)")
    trace.set_defaults(handler=run_trace)


# --- pure formatting ------------------------------------------------------------------------


def spans_from_json(data: object) -> list[Span]:
    """What the admin API answered, as spans; a span it could not have sent is skipped."""
    found = []
    for item in data if isinstance(data, list) else []:
        try:
            found.append(parse_span(item))
        except SpanError:
            continue
    return found


def _is_error(span: Span) -> bool:
    if "error" in span.tags:
        return True
    status = span.tags.get("http.status_code", "")
    return status.isdigit() and int(status) >= 500


def _milliseconds(micros: int | None) -> str:
    if micros is None:
        return "?"
    value = micros / 1000
    return (
        f"{value:.2f}ms" if value < 10 else f"{value:.1f}ms" if value < 1000 else f"{value:.0f}ms"
    )


@dataclass(frozen=True)
class Row:
    span: Span
    depth: int


def span_tree(spans: Sequence[Span]) -> list[Row]:
    """Spans in parent order (each followed by its children, by start time), with their depth.

    With B3's shared spans a client and the server it called carry the same id: the server
    (``shared``) hangs under the client, and the spans whose parent is that id under the server,
    as Zipkin's UI draws them.
    """
    clients = {s.id: s for s in spans if not s.shared}
    servers = {s.id: s for s in spans if s.shared}

    def parent_of(span: Span) -> Span | None:
        if span.shared:
            return clients.get(span.id) or _by_id(span.parent_id)
        return _by_id(span.parent_id)

    def _by_id(span_id: str | None) -> Span | None:
        if span_id is None:
            return None
        return servers.get(span_id) or clients.get(span_id)

    children: dict[int, list[Span]] = {}
    roots: list[Span] = []
    for span in spans:
        parent = parent_of(span)
        if parent is None or parent is span:
            roots.append(span)
        else:
            children.setdefault(id(parent), []).append(span)

    def start(span: Span) -> tuple[int, bool, str]:
        return (span.timestamp or 0, span.shared, span.id)

    rows: list[Row] = []
    seen: set[int] = set()

    def visit(span: Span, depth: int) -> None:
        if id(span) in seen:  # a cycle of parent ids: show each span once
            return
        seen.add(id(span))
        rows.append(Row(span, depth))
        for child in sorted(children.get(id(span), []), key=start):
            visit(child, depth + 1)

    for root in sorted(roots, key=start):
        visit(root, 0)
    for span in sorted(spans, key=start):  # what a cycle left out
        if id(span) not in seen:
            visit(span, 0)
    return rows


def _outcome(span: Span) -> str:
    parts = []
    status = span.tags.get("http.status_code")
    if status:
        parts.append(status)
    if _is_error(span):
        flags = span.tags.get("response_flags", "-")
        error = span.tags.get("error", "")
        parts.append("ERROR" + (f" {flags}" if flags not in ("", "-") else ""))
        if error not in ("", "true"):
            parts.append(error)
    return " ".join(parts)


def format_waterfall(spans: Sequence[Span], width: int = 100) -> str:
    """One line per span, indented under its parent: service and name, start offset from the
    trace's start, duration, a bar on the trace's time scale, and the HTTP status / error."""
    if not spans:
        return "no spans"
    rows = span_tree(spans)
    begin = trace_start(spans) or 0
    end = max((s.timestamp or begin) + (s.duration or 0) for s in spans)
    total = max(1, end - begin)
    labels = [
        "  " * row.depth + f"{row.span.service or '?'}: {row.span.name or '?'}" for row in rows
    ]
    offsets = [f"+{_milliseconds((r.span.timestamp or begin) - begin)}" for r in rows]
    durations = [_milliseconds(r.span.duration) for r in rows]
    outcomes = [_outcome(r.span) for r in rows]
    label_width = min(max(len(label) for label in labels), max(20, width * 2 // 5))
    offset_width = max(len(o) for o in offsets)
    duration_width = max(len(d) for d in durations)
    outcome_width = max(len(o) for o in outcomes)
    fixed = label_width + offset_width + duration_width + outcome_width + 8
    bar_width = max(MIN_BAR, width - fixed)
    trace_id = spans[0].trace_id
    header = (
        f"trace {trace_id}: {len(spans)} spans, {_milliseconds(total)}, "
        f"started {_clock_time(begin)}"
    )
    lines = [header]
    for row, label, offset, duration, outcome in zip(
        rows, labels, offsets, durations, outcomes, strict=True
    ):
        span = row.span
        first = round(((span.timestamp or begin) - begin) / total * bar_width)
        length = max(1, round((span.duration or 0) / total * bar_width))
        first = min(first, bar_width - 1)
        length = min(length, bar_width - first)
        bar = " " * first + "█" * length + " " * (bar_width - first - length)
        if len(label) > label_width:
            label = label[: label_width - 1] + "…"
        lines.append(
            f"{label:<{label_width}}  {offset:>{offset_width}} {duration:>{duration_width}} "
            f"|{bar}| {outcome}".rstrip()
        )
    return "\n".join(lines)


def _clock_time(micros: int) -> str:
    moment = datetime.fromtimestamp(micros / 1_000_000, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class TraceSummary:
    trace_id: str
    start: int | None
    root_service: str
    root_name: str
    duration: int
    spans: int
    error: bool


def summarize(spans: Sequence[Span]) -> TraceSummary:
    rows = span_tree(spans)
    root = rows[0].span
    begin = trace_start(spans)
    end = max(((s.timestamp or 0) + (s.duration or 0) for s in spans), default=0)
    return TraceSummary(
        trace_id=root.trace_id,
        start=begin,
        root_service=root.service or "?",
        root_name=root.name or "?",
        duration=end - begin if begin is not None else 0,
        spans=len(spans),
        error=any(_is_error(s) for s in spans),
    )


def format_trace_list(traces: Sequence[Sequence[Span]]) -> str:
    if not traces:
        return "no traces (is the mesh taking requests, and is tracing sampling above 0?)"
    header = ("TRACE ID", "START", "ROOT", "DURATION", "SPANS", "")
    table = [header]
    for summary in (summarize(t) for t in traces if t):
        start = _clock_time(summary.start)[11:] if summary.start is not None else "?"
        table.append(
            (
                summary.trace_id,
                start,
                f"{summary.root_service}: {summary.root_name}",
                _milliseconds(summary.duration),
                str(summary.spans),
                "ERROR" if summary.error else "",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    )


# --- the command ----------------------------------------------------------------------------


def _get(url: str, path: str, params: Mapping[str, str] | None = None) -> object:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with DIRECT.open(url.rstrip("/") + path + query, timeout=10) as response:
        return json.load(response)


def run_trace(args: argparse.Namespace) -> int:
    try:
        url = admin_url(args.directory, args.admin)
    except NoMesh as exc:
        print(exc, file=sys.stderr)
        return 2
    width = shutil.get_terminal_size((100, 24)).columns
    try:
        if args.trace_id:
            data = _get(url, f"/api/v2/trace/{urllib.parse.quote(args.trace_id)}")
            print(format_waterfall(spans_from_json(data), width))
            return 0
        params = {"limit": str(args.limit)}
        if args.service:
            params["serviceName"] = args.service
        data = _get(url, "/api/v2/traces", params)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            print(f"trace {args.trace_id} not found (it may have aged out)", file=sys.stderr)
            return 1
        print(f"the admin API at {url} answered {exc.code}: {exc.read().decode()}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot reach the admin API at {url}: {exc}", file=sys.stderr)
        return 2
    traces = [spans_from_json(t) for t in data] if isinstance(data, list) else []
    print(format_trace_list(traces))
    return 0
