from __future__ import annotations

import math
import random

import pytest
from tests.request_records import T0, Clock, both_sides, record

from pilotfish.telemetry.live import (
    RELATIVE_ERROR,
    SERIES_STEP_SECONDS,
    LatencyHistogram,
    LiveWindows,
    SlotRing,
    StatRow,
)

BACKEND = "backend.default.svc.cluster.local"
OUTSIDE = "api.example.com"


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def row(windows: LiveWindows, name: str, by: str = "service", window: int = 60) -> StatRow:
    rows = {r.name: r for r in windows.stat(by, window)}
    assert name in rows, f"no row for {name} in {sorted(rows)}"
    return rows[name]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_are_within_one_percent_of_the_exact_ones(seed: int) -> None:
    chance = random.Random(seed)
    values = [chance.lognormvariate(1.5, 1.2) for _ in range(5000)] + [0.0] * 20
    histogram = LatencyHistogram()
    for value in values:
        histogram.add(value)
    for q in (0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        exact = exact_quantile(values, q)
        estimate = histogram.quantile(q)
        assert estimate is not None
        assert abs(estimate - exact) <= RELATIVE_ERROR * exact + 1e-9, (q, estimate, exact)


def test_a_single_latency_is_exact_and_no_latency_is_none() -> None:
    histogram = LatencyHistogram()
    assert histogram.quantile(0.99) is None
    histogram.add(12.345)
    assert histogram.quantile(0.5) == 12.345


def test_merged_slots_give_the_percentiles_of_all_their_requests() -> None:
    clock = Clock(T0 + 59)
    windows = LiveWindows(clock)
    chance = random.Random(7)
    durations = [chance.uniform(1, 200) for _ in range(600)]
    windows.add([record(at=T0 + i % 60, duration_ms=d) for i, d in enumerate(durations)])
    stat = row(windows, BACKEND).summary
    for q, got in ((0.5, stat.p50_ms), (0.95, stat.p95_ms), (0.99, stat.p99_ms)):
        exact = exact_quantile(durations, q)
        assert got is not None and abs(got - exact) <= RELATIVE_ERROR * exact


def test_a_request_between_two_sidecars_counts_once() -> None:
    windows = LiveWindows(Clock(T0 + 1))
    for i in range(10):
        windows.add(both_sides(at=T0 + i / 10))
    stat = row(windows, BACKEND).summary
    assert stat.requests == 10
    assert stat.success_rate == 1.0
    assert stat.rps == pytest.approx(10 / 60)


def test_the_callers_record_first_still_counts_once_when_the_callees_arrives() -> None:
    windows = LiveWindows(Clock(T0 + 1))
    caller, callee = both_sides(at=T0)
    windows.add([caller])
    assert row(windows, BACKEND).summary.requests == 1  # no destination reporter known yet
    windows.add([callee])
    assert row(windows, BACKEND).summary.requests == 1


def test_a_connection_that_never_reached_the_callee_is_a_failure_of_its_service() -> None:
    windows = LiveWindows(Clock(T0 + 1))
    for _ in range(9):
        windows.add(both_sides(at=T0))
    windows.add([record(reporter="source", code=503, flags=("UF", "URX"), at=T0)])
    windows.add([record(reporter="source", code=503, flags=("UH",), at=T0)])
    stat = row(windows, BACKEND).summary
    assert stat.requests == 11
    assert stat.success_rate == pytest.approx(9 / 11)


def test_a_failure_the_callee_reported_is_not_counted_again_from_the_caller() -> None:
    windows = LiveWindows(Clock(T0 + 1))
    windows.add(both_sides(at=T0, code=500))
    windows.add(both_sides(at=T0, code=200))
    stat = row(windows, BACKEND).summary
    assert (stat.requests, stat.success_rate) == (2, 0.5)


def test_calls_out_of_the_mesh_count_from_the_caller() -> None:
    windows = LiveWindows(Clock(T0 + 1))
    windows.add([record(reporter="source", service=OUTSIDE, destination="unknown")] * 3)
    windows.add([record(reporter="source", service=OUTSIDE, destination="unknown", code=502)])
    stat = row(windows, OUTSIDE).summary
    assert (stat.requests, stat.success_rate) == (4, 0.75)


def test_a_grpc_error_status_is_a_failure() -> None:
    windows = LiveWindows(Clock(T0 + 1))
    windows.add([record(grpc_status="14"), record(grpc_status="0")])
    assert row(windows, BACKEND).summary.success_rate == 0.5


def test_the_window_holds_only_its_last_seconds() -> None:
    clock = Clock(T0 + 100)
    windows = LiveWindows(clock)
    windows.add([record(at=T0 + 100 - age) for age in (0, 30, 59, 60, 61, 90, 500)])
    assert row(windows, BACKEND).summary.requests == 3
    assert row(windows, BACKEND, window=600).summary.requests == 7
    assert row(windows, BACKEND, window=600).summary.rps == pytest.approx(7 / 600)
    clock.now += 61
    assert windows.stat("service", 60) == []


def test_by_workload_counts_what_each_workload_served() -> None:
    windows = LiveWindows(Clock(T0 + 1))
    windows.add(both_sides(destination="backend-v1", at=T0) * 1)
    windows.add(both_sides(destination="backend-v2", at=T0, code=503))
    windows.add(both_sides(destination="backend-v2", at=T0))
    assert row(windows, "backend-v1", by="workload").summary.requests == 1
    v2 = row(windows, "backend-v2", by="workload")
    assert (v2.summary.requests, v2.summary.success_rate, v2.namespace) == (2, 0.5, "default")
    assert "frontend" not in {r.name for r in windows.stat("workload")}


def test_the_stat_row_json_has_the_api_fields() -> None:
    windows = LiveWindows(Clock(T0 + 1))
    windows.add([record(at=T0, duration_ms=8.0)])
    assert row(windows, BACKEND).to_json() == {
        "name": BACKEND,
        "namespace": "default",
        "requests": 1,
        "rps": round(1 / 60, 3),
        "success_rate": 1.0,
        "p50_ms": 8.0,
        "p95_ms": 8.0,
        "p99_ms": 8.0,
    }


def test_the_graph_has_an_edge_per_caller_and_service() -> None:
    windows = LiveWindows(Clock(T0 + 1))
    windows.add(both_sides(at=T0) * 1)
    windows.add(both_sides(at=T0, code=500))
    gateway = "pilotfish-ingressgateway"
    windows.add([record(reporter="source", source=gateway, service=OUTSIDE, duration_ms=40)])
    graph = windows.graph(60)
    assert graph["window_seconds"] == 60
    assert graph["nodes"] == [
        {"id": f"service:{OUTSIDE}", "kind": "service", "name": OUTSIDE, "namespace": "unknown"},
        {"id": f"service:{BACKEND}", "kind": "service", "name": BACKEND, "namespace": "default"},
        {"id": "workload:default/backend", "kind": "workload", "name": "backend",
         "namespace": "default"},
        {"id": "workload:default/frontend", "kind": "workload", "name": "frontend",
         "namespace": "default"},
        {"id": f"workload:default/{gateway}", "kind": "workload", "name": gateway,
         "namespace": "default"},
    ]  # fmt: skip
    edges = {(e["source"], e["target"]): e for e in graph["edges"]}  # type: ignore[union-attr]
    backend = edges[("workload:default/frontend", f"service:{BACKEND}")]
    assert (backend["requests"], backend["success_rate"]) == (2, 0.5)
    outside = edges[(f"workload:default/{gateway}", "service:api.example.com")]
    assert (outside["requests"], outside["p99_ms"]) == (1, 40.0)
    assert len(edges) == 2


def test_series_has_a_point_per_ten_seconds_oldest_first() -> None:
    clock = Clock(T0 + 895)
    windows = LiveWindows(clock)
    windows.add([record(at=T0 + 5)] * 2 + [record(at=T0 + 891, code=500)] * 4)
    points = windows.series(BACKEND, 15)
    assert len(points) == 90
    assert [p["t"] for p in points] == [T0 + SERIES_STEP_SECONDS * i for i in range(90)]
    assert points[0] == {"t": T0, "requests": 2, "rps": 0.2, "success_rate": 1.0, "p99_ms": 5.0}
    assert points[1]["requests"] == 0 and points[1]["success_rate"] is None
    # The current step has lasted 5 s of its 10.
    last = {"t": T0 + 890, "requests": 4, "rps": 0.8, "success_rate": 0.0, "p99_ms": 5.0}
    assert points[-1] == last
    assert len(windows.series(BACKEND, 1)) == 6
    assert all(p["requests"] == 0 for p in windows.series("nobody", 15))


def test_old_slots_and_keys_are_pruned() -> None:
    clock = Clock(T0)
    windows = LiveWindows(clock, prune_every_seconds=0)
    windows.add([record(at=T0, service=f"s{i}.default.svc.cluster.local") for i in range(5)])
    clock.now += 15 * 60 + 10
    windows.add([record(at=clock.now)])
    assert [r.name for r in windows.stat("service", 600)] == [BACKEND]
    assert len(windows.series("s1.default.svc.cluster.local")) == 90
    assert windows.key_count() == {"services": 1, "workloads": 1, "edges": 1, "series": 1}


def test_keys_beyond_the_cap_are_dropped_and_counted() -> None:
    windows = LiveWindows(Clock(T0 + 1), max_keys=2)
    windows.add([record(at=T0, service=f"s{i}.default.svc.cluster.local") for i in range(3)])
    assert len(windows.stat()) == 2
    assert windows.dropped_records == 3  # once per family that had no room: services, series, edges


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_running_windows_match_a_sum_of_the_slots(seed: int) -> None:
    """The ring keeps a running total per window length; late records, pruning and jumps
    of the clock must leave it equal to the sum of the slots it covers."""
    chance = random.Random(seed)
    ring = SlotRing(1, 30)
    added: list[tuple[int, bool, float]] = []
    now = 1000
    for _ in range(400):
        now += chance.choice((0, 0, 1, 1, 2, 7, 40))
        for _ in range(chance.randint(0, 3)):
            at = now - chance.choice((0, 0, 0, 1, 3, 20, 35))
            ok, ms = chance.random() < 0.8, chance.uniform(1, 100)
            ring.add(at, ok, ms)
            added.append((at, ok, ms))
        if chance.random() < 0.3:
            ring.prune(now)
        length = chance.choice((1, 5, 10, 30))
        last = ring.start_of(now)
        first = last - length + 1
        got = ring.window(first, last)
        kept = [a for a in added if first <= a[0] <= last and a[0] in ring.slots]
        assert got.requests == len(kept)
        assert got.failures == sum(1 for a in kept if not a[1])
        assert got.latency.count == len(kept)
        expected = LatencyHistogram()
        for a in kept:
            expected.add(a[2])
        assert got.latency.buckets == expected.buckets
