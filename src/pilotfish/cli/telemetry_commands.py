"""`pilotfish stat`, `tap`, `logs`: the running mesh's traffic, read from its admin API."""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from http.client import HTTPResponse
from pathlib import Path

from pilotfish.cli.admin_api import DIRECT, NoMesh, admin_url
from pilotfish.load.durations import DurationError, parse_duration

STAT_COLUMNS = (
    "NAME", "NAMESPACE", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "REQUESTS",
)  # fmt: skip
_CLEAR_SCREEN = "\x1b[H\x1b[2J"


def add_telemetry_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stat = commands.add_parser(
        "stat", help="requests/s, success rate and latency per service or workload"
    )
    _add_mesh_arguments(stat)
    stat.add_argument("--by", choices=("service", "workload"), default="service")
    stat.add_argument(
        "--window",
        type=parse_window,
        default="60s",
        help="how far back to look: 60s (default), 5m, up to 10m",
    )
    stat.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    stat.add_argument(
        "--interval", type=float, default=2.0, help="seconds between refreshes (--watch)"
    )
    stat.set_defaults(handler=run_stat)

    tap = commands.add_parser("tap", help="print requests as they happen")
    _add_mesh_arguments(tap)
    tap.add_argument("--service", default="", help="only to this service (hostname or name)")
    tap.add_argument("--path", default="", help="only paths starting with this")
    tap.add_argument("--workload", default="", help="only from or to this workload")
    tap.add_argument("--errors", action="store_true", help="only failed requests")
    tap.add_argument("--max", type=int, default=0, help="stop after this many (0: never)")
    tap.set_defaults(handler=run_tap)

    logs = commands.add_parser("logs", help="the access log of one proxy, or of all")
    logs.add_argument("directory", type=Path, help="the folder `up` runs")
    logs.add_argument("name", nargs="?", help="a proxy's name (its node id); all when left out")
    logs.add_argument("--admin", help="admin API URL (default: read from DIR/.pilotfish)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument(
        "--json",
        action="store_true",
        help="one JSON object a line (the default when MeshConfig's accessLogEncoding is JSON)",
    )
    logs.add_argument("--limit", type=int, default=100, help="recent lines to print first")
    logs.set_defaults(handler=run_logs)


def _add_mesh_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "directory", type=Path, nargs="?", default=Path("."), help="the folder `up` runs"
    )
    parser.add_argument("--admin", help="admin API URL (default: read from DIR/.pilotfish)")


# --- pure formatting ---------------------------------------------------------------------------


def format_ms(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:.1f}ms" if value < 10 else f"{value:.0f}ms"


def format_stat_table(body: Mapping[str, object]) -> str:
    """``/api/stat``'s answer as a table like ``linkerd viz stat``'s."""
    rows = body.get("rows")
    table: list[tuple[str, ...]] = [STAT_COLUMNS]
    for row in rows if isinstance(rows, list) else []:
        success = row.get("success_rate")
        table.append(
            (
                str(row.get("name", "?")),
                str(row.get("namespace", "?")),
                f"{success * 100:.2f}%" if isinstance(success, int | float) else "-",
                f"{float(row.get('rps', 0)):.1f}rps",
                format_ms(row.get("p50_ms")),
                format_ms(row.get("p95_ms")),
                format_ms(row.get("p99_ms")),
                str(row.get("requests", 0)),
            )
        )
    if len(table) == 1:
        by = body.get("by", "service")
        return f"no requests to any {by} in the last {body.get('window_seconds', '?')}s"
    widths = [max(len(line[i]) for line in table) for i in range(len(STAT_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    )


def format_tap_line(entry: Mapping[str, object]) -> str:
    """One ``RequestRecord.to_json()`` as: time, reporter, source workload -> destination
    service, method, path, status, latency, response flags in words."""
    start = entry.get("start_time")
    moment = (
        datetime.fromtimestamp(start, UTC).strftime("%H:%M:%S.%f")[:-3]
        if isinstance(start, int | float)
        else "?"
    )
    source = entry.get("source")
    workload = source.get("workload", "?") if isinstance(source, Mapping) else "?"
    reporter = "dst" if entry.get("reporter") == "destination" else "src"
    status = str(entry.get("response_code", "?"))
    grpc_status = entry.get("grpc_status")
    if grpc_status:
        status += f" grpc-status={grpc_status}"
    parts = [
        moment,
        reporter,
        f"{workload} -> {entry.get('destination_service', '?')}",
        str(entry.get("method", "?")),
        str(entry.get("path", "?")),
        status,
        format_ms(entry.get("duration_ms")),
    ]
    flags = entry.get("response_flags")
    words = entry.get("response_flag_words")
    if isinstance(flags, list) and isinstance(words, list) and flags:
        parts.append(", ".join(f"{f}={w}" for f, w in zip(flags, words, strict=False)))
    return " ".join(parts)


def parse_window(text: str) -> int:
    """``60s``, ``5m`` or ``90`` (seconds) -> whole seconds from 1 to 600."""
    try:
        seconds = float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
    except DurationError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if not 1 <= seconds <= 600:
        raise argparse.ArgumentTypeError(f"{text!r}: must be from 1s to 10m")
    return round(seconds)


# --- talking to the admin API ------------------------------------------------------------------


def _open(url: str, path: str, query: Mapping[str, object], timeout: float | None) -> HTTPResponse:
    wanted = {k: str(v) for k, v in query.items() if v != ""}
    address = f"{url}{path}?{urllib.parse.urlencode(wanted)}" if wanted else f"{url}{path}"
    try:
        response: HTTPResponse = DIRECT.open(address, timeout=timeout)
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise NoMesh(f"the admin API refused {path}: {message}") from None
    except OSError as exc:
        raise NoMesh(
            f"cannot reach the admin API at {url} ({exc}): is the mesh still running?"
        ) from None
    return response


def get_json(url: str, path: str, query: Mapping[str, object]) -> dict[str, object]:
    with _open(url, path, query, timeout=10) as response:
        body = json.load(response)
    if not isinstance(body, dict):
        raise NoMesh(f"the admin API answered {path} with {type(body).__name__}, not an object")
    return body


def stream_lines(url: str, path: str, query: Mapping[str, object]) -> Iterator[str]:
    """The lines of a streamed answer as they come; ends when the server ends it."""
    with _open(url, path, query, timeout=None) as response:
        for raw in response:
            yield raw.decode().rstrip("\n")


def _failed(exc: NoMesh) -> int:
    print(str(exc), file=sys.stderr)
    return 2


def run_stat(args: argparse.Namespace) -> int:
    try:
        url = admin_url(args.directory, args.admin)
        while True:
            body = get_json(url, "/api/stat", {"by": args.by, "window": args.window})
            table = format_stat_table(body)
            print(_CLEAR_SCREEN + table if args.watch else table, flush=True)
            if not args.watch:
                return 0
            time.sleep(max(0.2, args.interval))
    except NoMesh as exc:
        return _failed(exc)


def run_tap(args: argparse.Namespace) -> int:
    query = {
        "service": args.service,
        "path": args.path,
        "workload": args.workload,
        "errors": 1 if args.errors else "",
        "limit": max(0, args.max),
    }
    shown = 0
    try:
        for line in stream_lines(admin_url(args.directory, args.admin), "/api/tap", query):
            if line:
                print(format_tap_line(json.loads(line)), flush=True)
                shown += 1
    except NoMesh as exc:
        return _failed(exc)
    except (OSError, http.client.HTTPException):
        pass  # the connection broke off: said below
    if args.max > 0 and shown >= args.max:
        return 0
    print("the tap ended: the admin API closed it (has the mesh stopped?)", file=sys.stderr)
    return 1


def run_logs(args: argparse.Namespace) -> int:
    query = {
        "proxy": args.name or "",
        "limit": max(0, args.limit),
        "follow": 1 if args.follow else 0,
        "format": "json" if args.json else "",  # else the MeshConfig's accessLogEncoding
    }
    try:
        for line in stream_lines(admin_url(args.directory, args.admin), "/api/logs", query):
            print(line, flush=True)
    except NoMesh as exc:
        return _failed(exc)
    return 0
