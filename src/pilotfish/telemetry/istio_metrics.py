"""Istio's standard HTTP metrics, counted from request records (a ``RecordSink``).

``istio_requests_total`` (counter), ``istio_request_duration_milliseconds``,
``istio_request_bytes`` and ``istio_response_bytes`` (histograms with Istio's buckets), all
with Istio's labels (``ISTIO_LABELS``), one series per label set and reporter.

Cardinality is bounded: all four metrics have the same label set for a record, so they share
one table of series, and it holds at most ``max_series`` label sets (so each metric has at
most that many series). When a record's label set is new and the table is full, the series
idle for ``IDLE_SECONDS`` are evicted (Prometheus reads a series that comes back as a counter
reset); if none is, the record is not counted in any of the four:
``pilotfish_telemetry_series_dropped_total`` counts such records, and the first one logs a
warning. Series already in the table keep counting. The labels
themselves are bounded by the mesh (workloads, services, response codes, flags): paths,
authorities and ids never become labels.

Each label set costs ~47 lines (~40 KB) of exposition (a counter and three histograms with
Istio's 25 labels): at the default cap, /metrics is ~40 MB and ~0.5 s of CPU to render. A
local mesh has tens to hundreds of label sets.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pilotfish.model.telemetry import DURATION_BUCKETS_MS, SIZE_BUCKETS_BYTES
from pilotfish.telemetry.prometheus import Histogram, MetricFamily, Sample
from pilotfish.telemetry.records import Peer, RequestRecord

log = logging.getLogger("pilotfish.telemetry")

DEFAULT_MAX_SERIES = 1000
IDLE_SECONDS = 600.0
DEFAULT_CLUSTER_ID = "Kubernetes"
"""Istio's default CLUSTER_ID, for ``source_cluster`` / ``destination_cluster``: queries and
dashboards written for a default Istio install match as they are."""

REQUESTS_TOTAL = "istio_requests_total"
REQUEST_DURATION = "istio_request_duration_milliseconds"
REQUEST_BYTES = "istio_request_bytes"
RESPONSE_BYTES = "istio_response_bytes"
SERIES_DROPPED = "pilotfish_telemetry_series_dropped_total"
SERIES = "pilotfish_telemetry_series"

ISTIO_LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)


@dataclass(slots=True)
class _Series:
    last_seen: float
    requests: int
    duration: Histogram
    request_bytes: Histogram
    response_bytes: Histogram


class IstioMetrics:
    def __init__(
        self,
        max_series: int = DEFAULT_MAX_SERIES,
        cluster_id: str = DEFAULT_CLUSTER_ID,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_series = max_series
        self._cluster = cluster_id
        self._clock = clock
        self._series: OrderedDict[tuple[str, ...], _Series] = OrderedDict()
        """Least recently counted first."""
        self.dropped = 0
        self.evicted = 0

    def add(self, records: Sequence[RequestRecord]) -> None:
        now = self._clock()
        for record in records:
            key = self._label_values(record)
            series = self._series.get(key)
            if series is not None:
                self._series.move_to_end(key)
            else:
                if len(self._series) >= self.max_series and not self._evict_idle(now):
                    self._drop(record)
                    continue
                series = _Series(
                    now,
                    0,
                    Histogram(DURATION_BUCKETS_MS),
                    Histogram(SIZE_BUCKETS_BYTES),
                    Histogram(SIZE_BUCKETS_BYTES),
                )
                self._series[key] = series
            series.last_seen = now
            series.requests += 1
            series.duration.observe(record.duration_ms)
            series.request_bytes.observe(record.request_bytes)
            series.response_bytes.observe(record.response_bytes)

    @property
    def series_count(self) -> int:
        return len(self._series)

    def families(self) -> list[MetricFamily]:
        labelled = [
            (tuple(zip(ISTIO_LABELS, key, strict=True)), s) for key, s in self._series.items()
        ]
        return [
            MetricFamily(
                REQUESTS_TOTAL,
                "Requests, as each proxy reported them (reporter source or destination).",
                "counter",
                [Sample(labels, s.requests) for labels, s in labelled],
            ),
            MetricFamily(
                REQUEST_DURATION,
                "Request duration in milliseconds, until the last byte of the response.",
                "histogram",
                [s.duration.sample(labels) for labels, s in labelled],
            ),
            MetricFamily(
                REQUEST_BYTES,
                "Request size in bytes, headers and body.",
                "histogram",
                [s.request_bytes.sample(labels) for labels, s in labelled],
            ),
            MetricFamily(
                RESPONSE_BYTES,
                "Response size in bytes, headers and body.",
                "histogram",
                [s.response_bytes.sample(labels) for labels, s in labelled],
            ),
            MetricFamily(
                SERIES_DROPPED,
                f"Requests left out of the istio_* metrics: their label set would have been a "
                f"new series beyond the cap of {self.max_series}, with none idle for "
                f"{IDLE_SECONDS:.0f} s.",
                "counter",
                [Sample((), self.dropped)],
            ),
            MetricFamily(
                SERIES,
                f"Label sets in each istio_* metric (at most {self.max_series}).",
                "gauge",
                [Sample((), len(self._series))],
            ),
        ]

    def _label_values(self, record: RequestRecord) -> tuple[str, ...]:
        return (
            record.reporter,
            *_peer_values(record.source),
            self._cluster,
            *_peer_values(record.destination, record),
            self._cluster,
            record.request_protocol,
            str(record.response_code),
            record.grpc_status,
            record.response_flags_label,
            record.connection_security_policy,
        )

    def _evict_idle(self, now: float) -> bool:
        """Evict the series idle for ``IDLE_SECONDS``; whether any was."""
        evicted = False
        while self._series:
            key, oldest = next(iter(self._series.items()))
            if now - oldest.last_seen < IDLE_SECONDS:
                break
            del self._series[key]
            self.evicted += 1
            evicted = True
        return evicted

    def _drop(self, record: RequestRecord) -> None:
        if self.dropped == 0:
            log.warning(
                "istio metrics hold %d label sets, their cap, none idle for %d s: requests "
                "with a new label set (this one: %s -> %s, code %d) are not counted in "
                "istio_* until a series is idle that long; %s counts them",
                self.max_series,
                IDLE_SECONDS,
                record.source.workload,
                record.destination_service,
                record.response_code,
                SERIES_DROPPED,
            )
        self.dropped += 1


def _peer_values(peer: Peer, record: RequestRecord | None = None) -> tuple[str, ...]:
    """A peer's labels in ``ISTIO_LABELS`` order; with ``record``, the destination's (whose
    service labels sit between its version and its canonical service)."""
    head = (peer.workload, peer.namespace, peer.principal, peer.app, peer.version)
    tail = (peer.canonical_service, peer.canonical_revision)
    if record is None:
        return head + tail
    service = (
        record.destination_service,
        record.destination_service_name,
        record.destination_service_namespace,
    )
    return head + service + tail
