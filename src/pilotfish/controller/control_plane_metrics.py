"""The control plane's own metrics (``pilotfish_*``), next to Istio's on ``/metrics``.

``XdsMetrics`` listens to the xDS streams (connected proxies, responses, NACKs, push and
convergence time); ``control_plane_families`` adds what the controller, the CA, the telemetry
hub and the access-log service count themselves.

Push time is from the publish of a generation to each response a stream sent for it;
convergence time from that publish to the stream's ACK of the last of those responses (a
stream whose snapshot did not change, that NACKed, or that connected after the publish has
no sample for it). A stream tells
which generation it took only after sending its responses: the responses sent since the
stream's previous event are that generation's, those sent before the publish excepted.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from pilotfish.controller.access_log_service import AccessLogService
from pilotfish.controller.certificates import MeshCertificateAuthority
from pilotfish.controller.mesh_controller import MeshController
from pilotfish.model.proxy import ProxyKind
from pilotfish.snapshot import type_urls
from pilotfish.telemetry.hub import TelemetryHub
from pilotfish.telemetry.live import LiveWindows
from pilotfish.telemetry.prometheus import Histogram, MetricFamily, Sample
from pilotfish.telemetry.tap import ProxyLogs, TapFeed
from pilotfish.xds.callbacks import StreamInfo, StreamKind, XdsCallbacks
from pilotfish.xds.protocol import (
    DeltaRequestReceived,
    NackReceived,
    RequestReceived,
    SendResponse,
)

# Seconds; a local control plane pushes in milliseconds, Istio's own buckets start at 10 ms.
XDS_TIME_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
)  # fmt: skip

CONNECTED_PROXIES = "pilotfish_xds_connected_proxies"
PUSHES = "pilotfish_xds_pushes_total"
PUSH_TIME = "pilotfish_xds_push_time_seconds"
CONVERGENCE_TIME = "pilotfish_xds_convergence_time_seconds"
NACKS = "pilotfish_xds_nacks_total"
CONFIG_GENERATION = "pilotfish_config_generation"
CONFIG_REJECTIONS = "pilotfish_config_rejections_total"
CONFIG_REJECTED = "pilotfish_config_rejected"
CERTIFICATES_SIGNED = "pilotfish_ca_certificates_signed_total"
CERTIFICATES_REFUSED = "pilotfish_ca_certificates_refused_total"
RECORDS_INGESTED = "pilotfish_telemetry_records_total"
CONNECTION_RECORDS = "pilotfish_telemetry_connection_records_total"
TCP_TRACKED = "pilotfish_telemetry_tcp_connections_tracked"
TCP_FORGOTTEN = "pilotfish_telemetry_tcp_connections_forgotten_total"
ALS_STREAMS = "pilotfish_als_streams_open"
ALS_REJECTED = "pilotfish_als_entries_rejected_total"
LIVE_DROPPED = "pilotfish_live_records_dropped_total"
LIVE_KEYS = "pilotfish_live_keys"
LOGS_DROPPED = "pilotfish_logs_records_dropped_total"
TAP_DROPPED = "pilotfish_tap_records_dropped_total"


@dataclass
class _Stream:
    opened: float
    generation: int | None = None
    # Responses since the stream's last other event: (type url, nonce, when sent).
    batch: list[tuple[str, str, float]] = field(default_factory=list)
    # Of the newest generation that changed the stream's config: its publish time and the
    # responses still to be ACKed.
    published: float = 0.0
    unacked: set[tuple[str, str]] = field(default_factory=set)


class XdsMetrics(XdsCallbacks):
    def __init__(
        self,
        published_at: Callable[[int], float | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``published_at(generation)``: when the source published it, on ``clock``'s time
        (``MeshController.published_at``)."""
        self._published_at = published_at
        self._clock = clock
        self._streams: dict[StreamInfo, _Stream] = {}
        self.pushes: defaultdict[str, int] = defaultdict(int)
        self.nacks: defaultdict[str, int] = defaultdict(int)
        self.push_time: dict[str, Histogram] = {}
        self.convergence_time = Histogram(XDS_TIME_BUCKETS)

    # --- callbacks -----------------------------------------------------------------------

    def stream_opened(self, stream: StreamInfo) -> None:
        self._streams[stream] = _Stream(self._clock())

    def stream_closed(self, stream: StreamInfo) -> None:
        self._streams.pop(stream, None)

    def request_received(
        self, stream: StreamInfo, request: RequestReceived | DeltaRequestReceived
    ) -> None:
        state = self._streams.get(stream)
        if state is not None:
            state.batch.clear()

    def response_sent(self, stream: StreamInfo, response: SendResponse) -> None:
        short = type_urls.short_name(response.type_url)
        self.pushes[short] += 1
        state = self._streams.get(stream)
        if state is not None:
            state.batch.append((response.type_url, response.nonce, self._clock()))

    def snapshot_applied(self, stream: StreamInfo, generation: int) -> None:
        state = self._streams.get(stream)
        if state is None:
            return
        batch, state.batch = state.batch, []
        if generation == state.generation:
            return
        state.generation = generation
        published = self._published_at(generation)
        # A stream opened after the publish was not pushed to: it came and asked.
        if published is None or published < state.opened:
            return
        pushed = [(t, nonce, sent) for t, nonce, sent in batch if sent >= published]
        if not pushed:
            return
        for type_url, _, sent in pushed:
            short = type_urls.short_name(type_url)
            histogram = self.push_time.get(short)
            if histogram is None:
                histogram = self.push_time[short] = Histogram(XDS_TIME_BUCKETS)
            histogram.observe(sent - published)
        state.published = published
        state.unacked = {(t, nonce) for t, nonce, _ in pushed}

    def ack_received(self, stream: StreamInfo, acked: SendResponse) -> None:
        state = self._streams.get(stream)
        if state is None or not state.unacked:
            return
        state.unacked.discard((acked.type_url, acked.nonce))
        if not state.unacked:
            self.convergence_time.observe(self._clock() - state.published)

    def nack_received(self, stream: StreamInfo, rejected: SendResponse, nack: NackReceived) -> None:
        self.nacks[type_urls.short_name(rejected.type_url)] += 1
        state = self._streams.get(stream)
        if state is not None:
            state.unacked.clear()  # this generation never converges on this stream

    # --- exposition ----------------------------------------------------------------------

    def families(self) -> list[MetricFamily]:
        connected: defaultdict[tuple[ProxyKind, StreamKind], int] = defaultdict(int)
        for stream in self._streams:
            connected[(stream.node.kind, stream.kind)] += 1
        return [
            MetricFamily(
                CONNECTED_PROXIES,
                "Proxies with an open xDS stream, by proxy kind and stream kind.",
                "gauge",
                [
                    Sample((("kind", kind), ("stream", stream_kind)), count)
                    for (kind, stream_kind), count in sorted(connected.items())
                ],
            ),
            MetricFamily(
                PUSHES,
                "xDS responses sent, by type.",
                "counter",
                [Sample((("type", t),), n) for t, n in sorted(self.pushes.items())],
            ),
            MetricFamily(
                PUSH_TIME,
                "Seconds from the publish of a config generation to each response sent for it.",
                "histogram",
                [h.sample((("type", t),)) for t, h in sorted(self.push_time.items())],
            ),
            MetricFamily(
                CONVERGENCE_TIME,
                "Seconds from the publish of a config generation to a proxy's ACK of all of it.",
                "histogram",
                [self.convergence_time.sample(())],
            ),
            MetricFamily(
                NACKS,
                "xDS responses the proxies rejected, by type.",
                "counter",
                [Sample((("type", t),), n) for t, n in sorted(self.nacks.items())],
            ),
        ]


def control_plane_families(
    controller: MeshController,
    certificates: MeshCertificateAuthority | None,
    hub: TelemetryHub,
    access_logs: AccessLogService,
) -> list[MetricFamily]:
    status = controller.status
    rejected = status.rejected_at is not None and (
        status.applied_at is None or status.rejected_at > status.applied_at
    )
    signed = certificates.signed_total if certificates is not None else 0
    refused = certificates.refused_total if certificates is not None else 0
    return [
        MetricFamily(
            CONFIG_GENERATION,
            "The config generation published last.",
            "gauge",
            [Sample((), controller.generation)],
        ),
        MetricFamily(
            CONFIG_REJECTIONS,
            "Loads of the config folder rejected (the last good config kept serving).",
            "counter",
            [Sample((), controller.rejections)],
        ),
        MetricFamily(
            CONFIG_REJECTED,
            "1 while the folder's current content is rejected, else 0.",
            "gauge",
            [Sample((), 1 if rejected else 0)],
        ),
        MetricFamily(
            CERTIFICATES_SIGNED,
            "Workload certificates the CA signed.",
            "counter",
            [Sample((), signed)],
        ),
        MetricFamily(
            CERTIFICATES_REFUSED,
            "Certificate requests the CA refused.",
            "counter",
            [Sample((), refused)],
        ),
        MetricFamily(
            RECORDS_INGESTED,
            "Request records taken in from the proxies' access-log streams.",
            "counter",
            [Sample((), hub.records_ingested)],
        ),
        MetricFamily(
            CONNECTION_RECORDS,
            "TCP connection reports taken in from the proxies' access-log streams.",
            "counter",
            [Sample((), hub.connection_records_ingested)],
        ),
        MetricFamily(
            TCP_TRACKED,
            "Open TCP connections whose last reported byte counts are kept (their reports "
            "carry running totals).",
            "gauge",
            [Sample((), access_logs.connections.open_connections)],
        ),
        MetricFamily(
            TCP_FORGOTTEN,
            f"Open TCP connections forgotten beyond the cap of "
            f"{access_logs.connections.max_open}: each counts opened again, and its bytes "
            f"from zero, at its next report.",
            "counter",
            [Sample((), access_logs.connections.forgotten)],
        ),
        MetricFamily(
            ALS_STREAMS,
            "Open access-log streams (one per proxy and log name).",
            "gauge",
            [Sample((), access_logs.streams_open)],
        ),
        MetricFamily(
            ALS_REJECTED,
            "Access-log entries not turned into records (unknown log name, unreadable entry).",
            "counter",
            [Sample((), access_logs.entries_rejected)],
        ),
    ]


def live_view_families(live: LiveWindows, tap: TapFeed, logs: ProxyLogs) -> list[MetricFamily]:
    """What the live views (stat, graph, series, tap, logs) left out because of their caps."""
    return [
        MetricFamily(
            LIVE_DROPPED,
            f"Records left out of stat, graph and series: their service, workload or edge "
            f"would have been a new key beyond the cap of {live.max_keys} (counted once per "
            f"view family that left it out).",
            "counter",
            [Sample((), live.dropped_records)],
        ),
        MetricFamily(
            LIVE_KEYS,
            "Keys (services, workloads, edges, series) the live views hold, by family.",
            "gauge",
            [Sample((("family", name),), n) for name, n in live.key_count().items()],
        ),
        MetricFamily(
            LOGS_DROPPED,
            f"Access-log records forgotten with their proxy, to keep at most "
            f"{logs.max_proxies} proxies' logs.",
            "counter",
            [Sample((), logs.dropped)],
        ),
        MetricFamily(
            TAP_DROPPED,
            "Records a tap's filter matched but not sent: its queue was full.",
            "counter",
            [Sample((), tap.dropped)],
        ),
    ]
