"""Istio's standard metrics: the HTTP ones counted from request records (a ``RecordSink``),
the TCP ones from connection records (``IstioTcpMetrics``, a ``ConnectionSink``).

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

The TCP metrics (``istio_tcp_connections_opened_total``, ``..._closed_total``,
``istio_tcp_sent_bytes_total``, ``istio_tcp_received_bytes_total``) have Istio's TCP labels
(``ISTIO_TCP_LABELS``: the HTTP ones without ``response_code`` and ``grpc_response_status``,
``request_protocol`` ``tcp``), and a table of their own with the same cap and eviction
(``pilotfish_telemetry_tcp_series_dropped_total`` counts the reports left out).

Each label set costs ~47 lines (~40 KB) of exposition (a counter and three histograms with
Istio's 25 labels): at the default cap, /metrics is ~40 MB and ~0.5 s of CPU to render. A
local mesh has tens to hundreds of label sets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pilotfish.model.telemetry import DURATION_BUCKETS_MS, SIZE_BUCKETS_BYTES
from pilotfish.telemetry.prometheus import Histogram, MetricFamily, Sample
from pilotfish.telemetry.records import ConnectionRecord, Peer, RequestRecord
from pilotfish.telemetry.series_table import DEFAULT_MAX_SERIES, IDLE_SECONDS, SeriesTable

log = logging.getLogger("pilotfish.telemetry")

DEFAULT_CLUSTER_ID = "Kubernetes"
"""Istio's default CLUSTER_ID, for ``source_cluster`` / ``destination_cluster``: queries and
dashboards written for a default Istio install match as they are."""

REQUESTS_TOTAL = "istio_requests_total"
REQUEST_DURATION = "istio_request_duration_milliseconds"
REQUEST_BYTES = "istio_request_bytes"
RESPONSE_BYTES = "istio_response_bytes"
SERIES_DROPPED = "pilotfish_telemetry_series_dropped_total"
SERIES = "pilotfish_telemetry_series"
TCP_OPENED = "istio_tcp_connections_opened_total"
TCP_CLOSED = "istio_tcp_connections_closed_total"
TCP_SENT = "istio_tcp_sent_bytes_total"
TCP_RECEIVED = "istio_tcp_received_bytes_total"
TCP_SERIES_DROPPED = "pilotfish_telemetry_tcp_series_dropped_total"
TCP_SERIES = "pilotfish_telemetry_tcp_series"

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
_REQUEST_ONLY = ("response_code", "grpc_response_status")
ISTIO_TCP_LABELS: tuple[str, ...] = tuple(
    label for label in ISTIO_LABELS if label not in _REQUEST_ONLY
)


@dataclass(slots=True)
class _Series:
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
        self._series: SeriesTable[_Series] = SeriesTable(max_series)
        self.dropped = 0

    @property
    def evicted(self) -> int:
        return self._series.evicted

    def add(self, records: Sequence[RequestRecord]) -> None:
        now = self._clock()
        for record in records:
            series = self._series.get(self._label_values(record), now, _new_series)
            if series is None:
                self._drop(record)
                continue
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
            *_cap_families(
                (SERIES_DROPPED, SERIES),
                "istio_*",
                "Requests",
                self.max_series,
                self.dropped,
                len(self._series),
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


def _new_series() -> _Series:
    return _Series(
        0,
        Histogram(DURATION_BUCKETS_MS),
        Histogram(SIZE_BUCKETS_BYTES),
        Histogram(SIZE_BUCKETS_BYTES),
    )


@dataclass(slots=True)
class _TcpSeries:
    opened: int = 0
    closed: int = 0
    sent: int = 0
    received: int = 0


class IstioTcpMetrics:
    """Istio's TCP metrics from connection records: a connection counts opened at its first
    report and closed at its last; its bytes as they are reported (every few seconds while it
    is open), so a long connection's counters grow before it ends."""

    def __init__(
        self,
        max_series: int = DEFAULT_MAX_SERIES,
        cluster_id: str = DEFAULT_CLUSTER_ID,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_series = max_series
        self._cluster = cluster_id
        self._clock = clock
        self._series: SeriesTable[_TcpSeries] = SeriesTable(max_series)
        self.dropped = 0

    @property
    def evicted(self) -> int:
        return self._series.evicted

    @property
    def series_count(self) -> int:
        return len(self._series)

    def add_connections(self, records: Sequence[ConnectionRecord]) -> None:
        now = self._clock()
        for record in records:
            series = self._series.get(self._label_values(record), now, _TcpSeries)
            if series is None:
                self._drop(record)
                continue
            series.opened += record.opened
            series.closed += record.closed
            series.received += record.received_delta
            series.sent += record.sent_delta

    def families(self) -> list[MetricFamily]:
        labelled = [
            (tuple(zip(ISTIO_TCP_LABELS, key, strict=True)), s) for key, s in self._series.items()
        ]
        return [
            MetricFamily(
                TCP_OPENED,
                "TCP connections opened, as each proxy reported them.",
                "counter",
                [Sample(labels, s.opened) for labels, s in labelled],
            ),
            MetricFamily(
                TCP_CLOSED,
                "TCP connections closed, as each proxy reported them.",
                "counter",
                [Sample(labels, s.closed) for labels, s in labelled],
            ),
            MetricFamily(
                TCP_SENT,
                "Bytes sent to the client of a TCP connection (the response direction).",
                "counter",
                [Sample(labels, s.sent) for labels, s in labelled],
            ),
            MetricFamily(
                TCP_RECEIVED,
                "Bytes received from the client of a TCP connection (the request direction).",
                "counter",
                [Sample(labels, s.received) for labels, s in labelled],
            ),
            *_cap_families(
                (TCP_SERIES_DROPPED, TCP_SERIES),
                "istio_tcp_*",
                "TCP connection reports",
                self.max_series,
                self.dropped,
                len(self._series),
            ),
        ]

    def _label_values(self, record: ConnectionRecord) -> tuple[str, ...]:
        return (
            record.reporter,
            *_peer_values(record.source),
            self._cluster,
            *_peer_values(record.destination, record),
            self._cluster,
            "tcp",
            record.response_flags_label,
            record.connection_security_policy,
        )

    def _drop(self, record: ConnectionRecord) -> None:
        if self.dropped == 0:
            log.warning(
                "istio_tcp metrics hold %d label sets, their cap, none idle for %d s: "
                "connection reports with a new label set (this one: %s -> %s) are not counted "
                "in istio_tcp_* until a series is idle that long; %s counts them",
                self.max_series,
                IDLE_SECONDS,
                record.source.workload,
                record.destination_service,
                TCP_SERIES_DROPPED,
            )
        self.dropped += 1


def _cap_families(
    names: tuple[str, str], metrics: str, what: str, max_series: int, dropped: int, series: int
) -> list[MetricFamily]:
    """A capped table of ``metrics``: the ``what`` it left out, and the label sets it holds."""
    dropped_name, series_name = names
    return [
        MetricFamily(
            dropped_name,
            f"{what} left out of the {metrics} metrics: their label set would have been a new "
            f"series beyond the cap of {max_series}, with none idle for {IDLE_SECONDS:.0f} s.",
            "counter",
            [Sample((), dropped)],
        ),
        MetricFamily(
            series_name,
            f"Label sets in each {metrics} metric (at most {max_series}).",
            "gauge",
            [Sample((), series)],
        ),
    ]


def _peer_values(
    peer: Peer, record: RequestRecord | ConnectionRecord | None = None
) -> tuple[str, ...]:
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
