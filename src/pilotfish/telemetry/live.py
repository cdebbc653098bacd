"""Rolling windows of traffic for the live views: ``stat``, the dashboard's graph and series.

Each request is counted once. A request between two sidecars is reported twice (by the
caller's sidecar as ``source`` and by the callee's as ``destination``); as ``linkerd viz stat``
counts inbound traffic, the destination's record is the one that counts. A source record
counts too when the request never reached the callee (its flags say so: no route, no healthy
upstream, connection failure...), since no destination record exists for it, and for a
service that no destination reporter speaks for at all (a call out of the mesh). That last
choice is made when the views are read, not when a record arrives: the callee's record comes
a flush (about a second) after the caller's, so a decision on arrival would count both.

Memory is bounded: keys per family are capped (records of keys beyond the cap are counted as
dropped), slots older than their retention are pruned, and a slot's latencies are a sparse
histogram of log-spaced buckets (1% relative error), so a slot costs what its distinct
latencies cost, never what its requests cost.

A poll costs per key what changed since the last poll, not what the window holds: each ring
keeps a running total for each of the last few window lengths read (``SlotRing.window``).
The first read of a window length still adds up its slots.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from pilotfish.telemetry.records import UNKNOWN, RequestRecord

# A source record with one of these never reached the callee's sidecar (Envoy answered it
# itself, before or instead of an upstream request), so it is the only record of its request.
NOT_REACHED_FLAGS = frozenset(
    {"UH", "UF", "UO", "NR", "NC", "DO", "UDO", "DF", "RL", "RLSE", "UAEX", "FI"}
)

DEFAULT_WINDOW_SECONDS = 60
MAX_WINDOW_SECONDS = 600
SERIES_STEP_SECONDS = 10
SERIES_MAX_MINUTES = 15
RELATIVE_ERROR = 0.01
_GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
_LOG_GAMMA = math.log(_GAMMA)
_SMALLEST_MS = 1e-3  # below a microsecond a latency is noise: it goes to the zero bucket


@dataclass
class LatencyHistogram:
    """Latencies in log-spaced buckets: bucket ``i`` holds ``(g^(i-1), g^i]`` ms, and its
    middle ``2 g^i / (g + 1)`` is within ``RELATIVE_ERROR`` of every value in it."""

    buckets: dict[int, int] = field(default_factory=dict)
    zeros: int = 0
    count: int = 0
    smallest: float = math.inf
    largest: float = 0.0

    def add(self, ms: float) -> None:
        ms = max(ms, 0.0)
        self.count += 1
        self.smallest = min(self.smallest, ms)
        self.largest = max(self.largest, ms)
        if ms < _SMALLEST_MS:
            self.zeros += 1
            return
        index = math.ceil(math.log(ms) / _LOG_GAMMA)
        self.buckets[index] = self.buckets.get(index, 0) + 1

    def merge(self, other: LatencyHistogram) -> None:
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.zeros += other.zeros
        self.count += other.count
        self.smallest = min(self.smallest, other.smallest)
        self.largest = max(self.largest, other.largest)

    def subtract(self, other: LatencyHistogram) -> None:
        """Take out ``other``'s latencies, which were merged in; the ends stay as they were
        (they cannot be taken back), so they only bound the quantiles more loosely."""
        for index, n in other.buckets.items():
            left = self.buckets.get(index, 0) - n
            if left > 0:
                self.buckets[index] = left
            else:
                self.buckets.pop(index, None)
        self.zeros -= other.zeros
        self.count -= other.count
        if self.count <= 0:
            self.buckets.clear()
            self.zeros = self.count = 0
            self.smallest, self.largest = math.inf, 0.0

    def quantile(self, q: float) -> float | None:
        """The nearest-rank ``q`` quantile (the ``ceil(q n)``-th smallest), within 1%."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        """``quantile`` of each of ``qs``, with one sort of the buckets."""
        if self.count == 0:
            return [None] * len(qs)
        indexes = sorted(self.buckets)
        below = list(accumulate(map(self.buckets.__getitem__, indexes)))
        answers: list[float | None] = []
        for q in qs:
            rank = max(1, math.ceil(q * self.count))
            if rank <= self.zeros:
                answers.append(self.smallest)
                continue
            position = bisect_left(below, rank - self.zeros)
            if position == len(below):
                answers.append(self.largest)
                continue
            middle = 2 * _GAMMA ** indexes[position] / (_GAMMA + 1)
            # The exact ends are known: a quantile never lies outside them.
            answers.append(min(max(middle, self.smallest), self.largest))
        return answers


@dataclass
class Slot:
    requests: int = 0
    failures: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def add(self, ok: bool, duration_ms: float) -> None:
        self.requests += 1
        self.failures += 0 if ok else 1
        self.latency.add(duration_ms)

    def merge(self, other: Slot) -> None:
        self.requests += other.requests
        self.failures += other.failures
        self.latency.merge(other.latency)

    def subtract(self, other: Slot) -> None:
        self.requests -= other.requests
        self.failures -= other.failures
        self.latency.subtract(other.latency)


@dataclass(frozen=True)
class Summary:
    """Golden metrics of some requests over ``seconds``."""

    requests: int
    failures: int
    seconds: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def success_rate(self) -> float | None:
        return (self.requests - self.failures) / self.requests if self.requests else None

    @classmethod
    def of(cls, slot: Slot, seconds: float) -> Summary:
        p50, p95, p99 = slot.latency.quantiles((0.50, 0.95, 0.99))
        return cls(slot.requests, slot.failures, seconds, p50, p95, p99)


@dataclass
class _Running:
    """The total of a ring's slots whose start is in ``[first, last]``, kept up to date."""

    first: int
    last: int
    total: Slot


class SlotRing:
    """Slots of ``width`` seconds (keyed by their start) kept for ``retention`` seconds.

    Reading a window must not walk every slot of every key at each poll of a view, nor may
    pruning: slots expire by position (from the oldest kept start up), and each window
    length that was read keeps a running total that the next read only moves forward (add
    the new slots, take out the ones that left), which a late record or a pruned slot also
    updates.
    """

    def __init__(self, width: int, retention: int, max_windows: int = 4) -> None:
        self.width = width
        self.retention = retention
        self.slots: dict[int, Slot] = {}
        self._floor: int | None = None
        """No slot starts before this."""
        self._max_windows = max_windows
        self._running: dict[int, _Running] = {}
        """Window length (in seconds) -> its running total."""

    def start_of(self, when: float) -> int:
        return int(when // self.width) * self.width

    def add(self, when: float, ok: bool, duration_ms: float) -> None:
        start = self.start_of(when)
        slot = self.slots.get(start)
        if slot is None:
            slot = self.slots[start] = Slot()
            if self._floor is None or start < self._floor:
                self._floor = start
        slot.add(ok, duration_ms)
        for running in self._running.values():
            if running.first <= start <= running.last:
                running.total.add(ok, duration_ms)

    def prune(self, now: float) -> None:
        oldest = self.start_of(now) - self.retention + self.width
        if self._floor is None or self._floor >= oldest:
            return
        if (oldest - self._floor) // self.width <= len(self.slots):
            expired = [s for s in range(self._floor, oldest, self.width) if s in self.slots]
        else:  # idle for long: fewer slots are left than positions passed
            expired = [s for s in self.slots if s < oldest]
        for start in expired:
            slot = self.slots.pop(start)
            for running in self._running.values():
                if running.first <= start <= running.last:
                    running.total.subtract(slot)
        for running in self._running.values():
            running.first = max(running.first, oldest)
        self._floor = oldest if self.slots else None

    def merged(self, first: int, last: int, into: Slot | None = None) -> Slot:
        """Every slot whose start is in ``[first, last]``, added up."""
        total = into if into is not None else Slot()
        total.merge(self.window(first, last))
        return total

    def window(self, first: int, last: int) -> Slot:
        """Like ``merged`` but the ring's own running total: read it, do not change it."""
        length = last - first
        running = self._running.get(length)
        if running is None or last < running.last or last - running.last > length:
            running = self._fresh(first, last)
            self._running.pop(length, None)
            if len(self._running) >= self._max_windows:
                del self._running[next(iter(self._running))]
            self._running[length] = running
            return running.total
        for start in range(running.last + self.width, last + 1, self.width):
            slot = self.slots.get(start)
            if slot is not None:
                running.total.merge(slot)
        for start in range(running.first, min(first, running.last + self.width), self.width):
            slot = self.slots.get(start)
            if slot is not None:
                running.total.subtract(slot)
        running.first, running.last = first, last
        return running.total

    def _fresh(self, first: int, last: int) -> _Running:
        total = Slot()
        if (last - first) // self.width < len(self.slots):
            for start in range(first, last + 1, self.width):
                slot = self.slots.get(start)
                if slot is not None:
                    total.merge(slot)
        else:
            for start, slot in self.slots.items():
                if first <= start <= last:
                    total.merge(slot)
        return _Running(first, last, total)


@dataclass
class _Traffic:
    """One key's requests: ``counted`` always counts; ``source_only`` (source records that
    may have a destination record too) counts only while no destination reporter speaks for
    the service."""

    namespace: str
    counted: SlotRing
    source_only: SlotRing

    def rings(self, with_source_only: bool) -> tuple[SlotRing, ...]:
        return (self.counted, self.source_only) if with_source_only else (self.counted,)

    def empty(self) -> bool:
        return not self.counted.slots and not self.source_only.slots


class _Family:
    """Traffic per key (a service, a workload, an edge), at most ``max_keys`` keys."""

    def __init__(self, width: int, retention: int, max_keys: int) -> None:
        self.width = width
        self.retention = retention
        self.max_keys = max_keys
        self.keys: dict[tuple[str, ...], _Traffic] = {}
        self.dropped = 0

    def add(
        self,
        key: tuple[str, ...],
        namespace: str,
        counted: bool,
        when: float,
        record: RequestRecord,
    ) -> None:
        traffic = self.keys.get(key)
        if traffic is None:
            if len(self.keys) >= self.max_keys:
                self.dropped += 1
                return
            traffic = self.keys[key] = _Traffic(
                namespace,
                SlotRing(self.width, self.retention),
                SlotRing(self.width, self.retention),
            )
        ring = traffic.counted if counted else traffic.source_only
        ring.add(when, record.ok, record.duration_ms)

    def prune(self, now: float) -> None:
        for key in list(self.keys):
            traffic = self.keys[key]
            traffic.counted.prune(now)
            traffic.source_only.prune(now)
            if traffic.empty():
                del self.keys[key]


@dataclass(frozen=True)
class StatRow:
    name: str
    namespace: str
    summary: Summary

    def to_json(self) -> dict[str, object]:
        s = self.summary
        return {
            "name": self.name,
            "namespace": self.namespace,
            "requests": s.requests,
            "rps": round(s.rps, 3),
            "success_rate": s.success_rate,
            "p50_ms": _ms(s.p50_ms),
            "p95_ms": _ms(s.p95_ms),
            "p99_ms": _ms(s.p99_ms),
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class LiveWindows:
    """The record sink behind ``/api/stat``, ``/api/graph`` and ``/api/series``.

    ``clock`` (unix seconds) is read on every add and query, so tests can move time.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        max_keys: int = 1000,
        prune_every_seconds: float = 5.0,
    ) -> None:
        self.clock = clock
        self._services = _Family(1, MAX_WINDOW_SECONDS, max_keys)
        self._workloads = _Family(1, MAX_WINDOW_SECONDS, max_keys)
        self._edges = _Family(1, MAX_WINDOW_SECONDS, max_keys)
        self._series = _Family(SERIES_STEP_SECONDS, SERIES_MAX_MINUTES * 60, max_keys)
        self._reported_by_destination: dict[str, float] = {}
        """Service -> when a destination reporter last spoke for it."""
        self.max_keys = max_keys
        self._prune_every = prune_every_seconds
        self._pruned_at = 0.0
        self.records_too_old = 0

    @property
    def dropped_records(self) -> int:
        """Records of keys beyond the cap, in any family."""
        families = (self._services, self._workloads, self._edges, self._series)
        return sum(f.dropped for f in families)

    def key_count(self) -> dict[str, int]:
        return {
            "services": len(self._services.keys),
            "workloads": len(self._workloads.keys),
            "edges": len(self._edges.keys),
            "series": len(self._series.keys),
        }

    def add(self, records: Sequence[RequestRecord]) -> None:
        now = self.clock()
        self._maybe_prune(now)
        for record in records:
            # A request counts when it ended, as a scraped counter would count it.
            when = min(record.start_time + record.duration_ms / 1000, now)
            if when <= now - SERIES_MAX_MINUTES * 60:
                self.records_too_old += 1
                continue
            self._add(record, when)

    def _add(self, record: RequestRecord, when: float) -> None:
        service = record.destination_service
        if record.reporter == "destination":
            counted = True
            if len(self._reported_by_destination) < self.max_keys:
                seen = self._reported_by_destination.get(service, 0.0)
                self._reported_by_destination[service] = max(seen, when)
        else:
            counted = not NOT_REACHED_FLAGS.isdisjoint(record.response_flags)
        namespace = record.destination_service_namespace
        self._services.add((service,), namespace, counted, when, record)
        self._series.add((service,), namespace, counted, when, record)
        source = record.source
        edge = (source.workload, source.namespace, service)
        self._edges.add(edge, source.namespace, counted, when, record)
        destination = record.destination
        if counted and destination.workload != UNKNOWN:
            key = (destination.workload, destination.namespace)
            self._workloads.add(key, destination.namespace, True, when, record)

    def _maybe_prune(self, now: float) -> None:
        if now - self._pruned_at < self._prune_every:
            return
        self._pruned_at = now
        for family in (self._services, self._workloads, self._edges, self._series):
            family.prune(now)
        horizon = now - SERIES_MAX_MINUTES * 60
        for service in [s for s, t in self._reported_by_destination.items() if t < horizon]:
            del self._reported_by_destination[service]

    def _with_source_only(self, service: str) -> bool:
        return service not in self._reported_by_destination

    def _window(self, traffic: _Traffic, seconds: int, now: float, service: str | None) -> Slot:
        """The last ``seconds`` of one key (read it, do not change it); ``service`` decides
        whether its source-only records count (None: they never do)."""
        last = traffic.counted.start_of(now)
        first = last - seconds + traffic.counted.width
        with_source_only = service is not None and self._with_source_only(service)
        if not with_source_only or not traffic.source_only.slots:
            return traffic.counted.window(first, last)
        total = Slot()
        for ring in traffic.rings(with_source_only):
            ring.merged(first, last, total)
        return total

    # --- the views -------------------------------------------------------------------------

    def stat(
        self, by: str = "service", window_seconds: int = DEFAULT_WINDOW_SECONDS
    ) -> list[StatRow]:
        """Rows by service (hostname) or by workload (what it served), busiest first."""
        seconds = clamp_window(window_seconds)
        now = self.clock()
        self._maybe_prune(now)
        family = self._services if by == "service" else self._workloads
        rows = []
        for key, traffic in family.keys.items():
            total = self._window(traffic, seconds, now, key[0] if by == "service" else None)
            if total.requests:
                rows.append(StatRow(key[0], traffic.namespace, Summary.of(total, seconds)))
        rows.sort(key=lambda r: (-r.summary.requests, r.name))
        return rows

    def graph(self, window_seconds: int = DEFAULT_WINDOW_SECONDS) -> dict[str, object]:
        seconds = clamp_window(window_seconds)
        now = self.clock()
        self._maybe_prune(now)
        nodes: dict[str, dict[str, object]] = {}
        edges = []
        for key, traffic in self._edges.keys.items():
            workload, namespace, service = key
            total = self._window(traffic, seconds, now, service)
            if not total.requests:
                continue
            source_id = workload_node_id(workload, namespace)
            target_id = service_node_id(service)
            nodes[source_id] = {
                "id": source_id, "kind": "workload", "name": workload, "namespace": namespace,
            }  # fmt: skip
            service_namespace = self._services.keys.get((service,))
            nodes[target_id] = {
                "id": target_id,
                "kind": "service",
                "name": service,
                "namespace": service_namespace.namespace if service_namespace else UNKNOWN,
            }
            summary = Summary.of(total, seconds)
            edges.append(
                {
                    "source": source_id,
                    "target": target_id,
                    "requests": summary.requests,
                    "rps": round(summary.rps, 3),
                    "success_rate": summary.success_rate,
                    "p99_ms": _ms(summary.p99_ms),
                }
            )
        # Workloads that only serve (call nobody) are nodes too, so that a view can join each
        # service to the workloads behind it.
        for (workload, namespace), traffic in self._workloads.keys.items():
            node_id = workload_node_id(workload, namespace)
            if node_id not in nodes and self._window(traffic, seconds, now, None).requests:
                nodes[node_id] = {
                    "id": node_id, "kind": "workload", "name": workload, "namespace": namespace,
                }  # fmt: skip
        edges.sort(key=lambda e: (str(e["source"]), str(e["target"])))
        return {
            "window_seconds": seconds,
            "nodes": sorted(nodes.values(), key=lambda n: str(n["id"])),
            "edges": edges,
        }

    def series(self, service: str, minutes: int = SERIES_MAX_MINUTES) -> list[dict[str, object]]:
        """One point per 10 s step over the last ``minutes``, oldest first, empty steps too."""
        minutes = max(1, min(minutes, SERIES_MAX_MINUTES))
        now = self.clock()
        self._maybe_prune(now)
        step = SERIES_STEP_SECONDS
        current = int(now // step) * step
        starts = range(current - (minutes * 60 // step - 1) * step, current + step, step)
        traffic = self._series.keys.get((service,))
        rings = traffic.rings(self._with_source_only(service)) if traffic else ()
        points: list[dict[str, object]] = []
        for start in starts:
            total = Slot()
            for ring in rings:
                slot = ring.slots.get(start)
                if slot is not None:
                    total.merge(slot)
            # The current step has lasted only since its start.
            seconds = step if start < current else max(1.0, now - start)
            summary = Summary.of(total, seconds)
            points.append(
                {
                    "t": start,
                    "requests": summary.requests,
                    "rps": round(summary.rps, 3),
                    "success_rate": summary.success_rate,
                    "p99_ms": _ms(summary.p99_ms),
                }
            )
        return points


def clamp_window(seconds: int) -> int:
    return max(1, min(int(seconds), MAX_WINDOW_SECONDS))


def workload_node_id(workload: str, namespace: str) -> str:
    return f"workload:{namespace}/{workload}"


def service_node_id(hostname: str) -> str:
    return f"service:{hostname}"
