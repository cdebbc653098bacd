from __future__ import annotations

from pilotfish.cli.main import build_parser
from pilotfish.cli.trace_commands import (
    format_trace_list,
    format_waterfall,
    span_tree,
    spans_from_json,
)
from pilotfish.telemetry.traces import Span, parse_span

TRACE = "463ac35c9f6413ad48485a3953bb6124"
T0 = 1_800_000_000_000_000


def span(span_id: str, service: str, start_ms: float, duration_ms: float, **fields: object) -> Span:
    data: dict[str, object] = {
        "traceId": TRACE,
        "id": span_id * 16,
        "name": f"{service} op",
        "timestamp": T0 + int(start_ms * 1000),
        "duration": int(duration_ms * 1000),
        "localEndpoint": {"serviceName": service},
        "tags": {"http.status_code": "200"},
    }
    data.update(fields)
    return parse_span(data)


# gateway -> frontend's sidecar -> backend's sidecar, with B3's shared server spans.
MESH = [
    span("1", "gateway", 0, 10, kind="CLIENT"),
    span("1", "frontend", 1, 8, kind="SERVER", shared=True),
    span("2", "frontend", 2, 5, kind="CLIENT", parentId="1" * 16,
         tags={"http.status_code": "503", "error": "true", "response_flags": "UF"}),
    span("2", "backend", 3, 3, kind="SERVER", shared=True, parentId="1" * 16),
]  # fmt: skip


def test_spans_are_in_parent_order_with_shared_servers_under_their_clients() -> None:
    shuffled = [MESH[3], MESH[1], MESH[2], MESH[0]]
    rows = span_tree(shuffled)
    assert [(r.span.service, r.span.kind, r.depth) for r in rows] == [
        ("gateway", "CLIENT", 0),
        ("frontend", "SERVER", 1),
        ("frontend", "CLIENT", 2),
        ("backend", "SERVER", 3),
    ]


def test_a_span_whose_parent_never_arrived_is_a_root_and_a_cycle_shows_each_span_once() -> None:
    orphan = span("3", "backend", 4, 1, parentId="9" * 16)
    rows = span_tree([MESH[0], orphan])
    assert [(r.span.service, r.depth) for r in rows] == [("gateway", 0), ("backend", 0)]
    a = span("4", "a", 0, 1, parentId="5" * 16)
    b = span("5", "b", 0, 1, parentId="4" * 16)
    assert sorted(r.span.service or "" for r in span_tree([a, b])) == ["a", "b"]


def test_the_waterfall_indents_scales_its_bars_to_the_width_and_names_the_error() -> None:
    text = format_waterfall(MESH, width=80)
    lines = text.splitlines()
    assert lines[0].startswith(f"trace {TRACE}: 4 spans, 10.0ms, started 2027-01-15 08:00:00.000Z")
    assert all(len(line) <= 80 for line in lines[1:]), [len(line) for line in lines]
    assert lines[1].startswith("gateway: gateway op")
    assert lines[2].startswith("  frontend: frontend op")
    assert lines[4].startswith("      backend: backend op")
    bars = [line[line.index("|") + 1 : line.rindex("|")] for line in lines[1:]]
    assert len({len(bar) for bar in bars}) == 1
    width = len(bars[0])
    # the root fills the bar; the backend starts 30% in and lasts 30%
    assert bars[0] == "█" * width
    assert bars[3].index("█") == round(0.3 * width)
    assert bars[3].count("█") == round(0.3 * width)
    assert "+3.00ms" in lines[4] and "3.00ms" in lines[4]
    assert lines[3].endswith("503 ERROR UF")
    assert lines[1].endswith("| 200")
    wide = format_waterfall(MESH, width=160).splitlines()
    assert len(wide[1]) > len(lines[1])


def test_the_trace_list_shows_root_duration_span_count_and_an_error_marker() -> None:
    ok = [span("7", "gateway", 0, 2.5, traceId="7" * 32, name="GET /")]
    text = format_trace_list([MESH, ok])
    header, failing, fine = text.splitlines()
    assert header.split() == ["TRACE", "ID", "START", "ROOT", "DURATION", "SPANS"]
    assert failing.split() == [TRACE, "08:00:00.000Z", "gateway:", "gateway", "op", "10.0ms", "4",
                               "ERROR"]  # fmt: skip
    assert fine.split() == ["7" * 32, "08:00:00.000Z", "gateway:", "get", "/", "2.50ms", "1"]
    assert "no traces" in format_trace_list([])


def test_spans_from_the_api_are_read_and_the_command_takes_its_options() -> None:
    assert [s.id for s in spans_from_json([MESH[0].to_json(), {"id": 1}])] == ["1" * 16]
    assert spans_from_json({"not": "a list"}) == []
    args = build_parser().parse_args(
        ["trace", "demo", TRACE, "--service", "frontend", "--limit", "3"]
    )
    assert (args.trace_id, args.service, args.limit) == (TRACE, "frontend", 3)
