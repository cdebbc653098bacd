"""The control plane's xDS metrics from the stream callbacks, on a clock of the test's own."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from test_ca_runtime import API, WEB, make_ca
from test_mesh_controller import config
from tests.request_records import connection

from als_entries import http_entry
from pilotfish.ca.api import CertificateRefused
from pilotfish.ca.csr import new_key_and_csr
from pilotfish.controller.access_log_service import AccessLogService
from pilotfish.controller.control_plane_metrics import (
    PUSH_TIME,
    XDS_TIME_BUCKETS,
    XdsMetrics,
    control_plane_families,
    live_view_families,
)
from pilotfish.controller.mesh_controller import MeshController
from pilotfish.model.diagnostics import Diagnostic
from pilotfish.model.proxy import ProxyNode
from pilotfish.snapshot import type_urls
from pilotfish.telemetry.als_decode import decode_entry
from pilotfish.telemetry.hub import TelemetryHub
from pilotfish.telemetry.live import LiveWindows
from pilotfish.telemetry.nodes import NodeDirectory
from pilotfish.telemetry.prometheus import HistogramSample, MetricFamily, Sample, render
from pilotfish.telemetry.tap import ProxyLogs, TapFeed, TapFilter
from pilotfish.xds import NackReceived, RequestReceived, SendResponse, StreamInfo

CDS = type_urls.CLUSTER
EDS = type_urls.ENDPOINT


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sent(type_url: str, nonce: str) -> SendResponse:
    return SendResponse(type_url, "v" + nonce, nonce, ())


def family(metrics: XdsMetrics, name: str) -> MetricFamily:
    return next(f for f in metrics.families() if f.name == name)


def histogram(metrics: XdsMetrics, name: str, **labels: str) -> HistogramSample:
    for sample in family(metrics, name).samples:
        if isinstance(sample, HistogramSample) and dict(sample.labels) == labels:
            return sample
    raise AssertionError(f"no {name} series {labels}")


def bucket_of(seconds: float) -> int:
    return next(i for i, bound in enumerate(XDS_TIME_BUCKETS) if seconds <= bound)


def stream(stream_id: int, kind: str = "sidecar", stream_kind: str = "sotw") -> StreamInfo:
    node = ProxyNode(id=f"p{stream_id}", kind=kind)  # type: ignore[arg-type]
    return StreamInfo(stream_id, node, stream_kind, list)  # type: ignore[arg-type]


def test_connected_proxies_by_kind_and_stream_kind() -> None:
    metrics = XdsMetrics(lambda _: None)
    streams = [stream(1), stream(2), stream(3, "gateway", "delta")]
    for s in streams:
        metrics.stream_opened(s)
    metrics.stream_closed(streams[1])
    samples = family(metrics, "pilotfish_xds_connected_proxies").samples
    assert [(dict(s.labels), s.value) for s in samples if isinstance(s, Sample)] == [
        ({"kind": "gateway", "stream": "delta"}, 1),
        ({"kind": "sidecar", "stream": "sotw"}, 1),
    ]


def test_push_and_convergence_time_from_the_publish_of_a_generation() -> None:
    clock = Clock()
    published = {2: 100.0}
    metrics = XdsMetrics(published.get, clock)
    s = stream(1)
    metrics.stream_opened(s)
    clock.now = 100.004
    metrics.response_sent(s, sent(CDS, "5"))
    clock.now = 100.02
    metrics.response_sent(s, sent(EDS, "6"))
    metrics.snapshot_applied(s, 2)
    cds = histogram(metrics, "pilotfish_xds_push_time_seconds", type="CDS")
    eds = histogram(metrics, "pilotfish_xds_push_time_seconds", type="EDS")
    assert cds.counts[bucket_of(0.004)] == 1 and sum(cds.counts) == 1
    assert eds.counts[bucket_of(0.02)] == 1 and sum(eds.counts) == 1
    assert histogram(metrics, "pilotfish_xds_convergence_time_seconds").counts == (0,) * (
        len(XDS_TIME_BUCKETS) + 1
    )
    clock.now = 100.03
    metrics.ack_received(s, sent(CDS, "5"))
    assert sum(histogram(metrics, "pilotfish_xds_convergence_time_seconds").counts) == 0
    clock.now = 100.3
    metrics.ack_received(s, sent(EDS, "6"))
    convergence = histogram(metrics, "pilotfish_xds_convergence_time_seconds")
    assert convergence.counts[bucket_of(0.3)] == 1 and sum(convergence.counts) == 1
    assert abs(convergence.total - 0.3) < 1e-9
    pushes = family(metrics, "pilotfish_xds_pushes_total").samples
    assert [(dict(p.labels), p.value) for p in pushes if isinstance(p, Sample)] == [
        ({"type": "CDS"}, 1),
        ({"type": "EDS"}, 1),
    ]


def test_a_stream_that_connects_after_the_publish_was_not_pushed_to() -> None:
    clock = Clock()
    published = {1: 50.0}
    metrics = XdsMetrics(published.get, clock)
    s = stream(1)
    metrics.stream_opened(s)  # at 100
    metrics.request_received(s, RequestReceived(CDS))
    metrics.response_sent(s, sent(CDS, "1"))
    metrics.snapshot_applied(s, 1)
    metrics.ack_received(s, sent(CDS, "1"))
    assert family(metrics, PUSH_TIME).samples == []
    assert sum(histogram(metrics, "pilotfish_xds_convergence_time_seconds").counts) == 0


def test_replies_to_requests_before_the_publish_are_no_push() -> None:
    clock = Clock()
    published = {3: 200.0}
    metrics = XdsMetrics(published.get, clock)
    s = stream(1)
    metrics.stream_opened(s)
    metrics.request_received(s, RequestReceived(CDS))
    metrics.response_sent(s, sent(CDS, "1"))  # at 100: a reply, before generation 3
    clock.now = 200.01
    metrics.response_sent(s, sent(EDS, "2"))
    metrics.snapshot_applied(s, 3)
    assert sum(histogram(metrics, "pilotfish_xds_push_time_seconds", type="EDS").counts) == 1
    push_types = {dict(s.labels)["type"] for s in family(metrics, PUSH_TIME).samples}
    assert push_types == {"EDS"}


def test_an_unchanged_snapshot_and_a_nack_give_no_convergence_sample() -> None:
    clock = Clock()
    published = {1: 100.0, 2: 100.0}
    metrics = XdsMetrics(published.get, clock)
    s = stream(1)
    metrics.stream_opened(s)
    metrics.snapshot_applied(s, 1)  # nothing sent: this stream's config did not change
    clock.now = 100.01
    metrics.response_sent(s, sent(CDS, "1"))
    metrics.snapshot_applied(s, 2)
    metrics.nack_received(s, sent(CDS, "1"), NackReceived(CDS, None, "bad cluster"))
    metrics.ack_received(s, sent(CDS, "1"))
    assert sum(histogram(metrics, "pilotfish_xds_convergence_time_seconds").counts) == 0
    nacks = family(metrics, "pilotfish_xds_nacks_total").samples
    assert [(dict(n.labels), n.value) for n in nacks if isinstance(n, Sample)] == [
        ({"type": "CDS"}, 1)
    ]


def test_exposition() -> None:
    metrics = XdsMetrics(lambda _: None)
    metrics.stream_opened(stream(1))
    text = render(metrics.families())
    assert 'pilotfish_xds_connected_proxies{kind="sidecar",stream="sotw"} 1\n' in text
    assert "# TYPE pilotfish_xds_convergence_time_seconds histogram\n" in text


def value(families: list[MetricFamily], name: str) -> float:
    (sample,) = next(f for f in families if f.name == name).samples
    assert isinstance(sample, Sample)
    return sample.value


async def test_config_rejections_csrs_and_records_in_the_control_planes_families(
    tmp_path: Path,
) -> None:
    controller = MeshController()
    controller.apply_config(config(), ())
    controller.publish_now()
    assert controller.published_at(controller.generation) is not None
    rejection = Diagnostic("mesh.yaml", 3, 1, "spec", "no")
    controller.apply_config(None, (rejection,))
    ca, _ = make_ca(tmp_path)
    ca.sign(new_key_and_csr(WEB)[1], ca.credential(WEB), 3600, "web-0")
    with pytest.raises(CertificateRefused):
        ca.sign(new_key_and_csr(API)[1], ca.credential(WEB), 3600, "web-0")
    hub = TelemetryHub()
    record = decode_entry(http_entry(), "source", ProxyNode(id="web-0"), NodeDirectory())
    hub.ingest([record, record])
    access_logs = AccessLogService(hub, NodeDirectory())
    families = control_plane_families(controller, ca, hub, access_logs)
    assert value(families, "pilotfish_config_rejections_total") == 1
    assert value(families, "pilotfish_config_rejected") == 1
    assert value(families, "pilotfish_config_generation") == controller.generation
    assert value(families, "pilotfish_ca_certificates_signed_total") == 1
    assert value(families, "pilotfish_ca_certificates_refused_total") == 1
    assert value(families, "pilotfish_telemetry_records_total") == 2
    assert value(families, "pilotfish_als_streams_open") == 0
    access_logs.connections.report("web-0", "a", 10, 0, closed=False)
    hub.ingest_connections([connection()])
    families = control_plane_families(controller, ca, hub, access_logs)
    assert value(families, "pilotfish_telemetry_connection_records_total") == 1
    assert value(families, "pilotfish_telemetry_tcp_connections_tracked") == 1
    assert value(families, "pilotfish_telemetry_tcp_connections_forgotten_total") == 0
    controller.apply_config(config(), ())
    families = control_plane_families(controller, None, hub, access_logs)
    assert value(families, "pilotfish_config_rejected") == 0
    assert value(families, "pilotfish_config_rejections_total") == 1


def test_what_the_live_views_left_out_is_on_metrics() -> None:
    record = decode_entry(http_entry(), "source", ProxyNode(id="web-0"), NodeDirectory())
    live = LiveWindows(clock=lambda: record.start_time, max_keys=1)
    other = replace(record, destination_service="other.default.svc.cluster.local")
    live.add([record, other])
    tap = TapFeed(max_queued=1)
    closed = tap.subscribe(TapFilter())
    tap.add([record, record, record])
    tap.unsubscribe(closed)
    tap.add([record])  # nobody listens: nothing dropped
    open_tap = tap.subscribe(TapFilter())
    tap.add([record, record])
    logs = ProxyLogs(max_proxies=1)
    logs.add([record, replace(record, proxy="web-1")])
    families = live_view_families(live, tap, logs)
    assert value(families, "pilotfish_live_records_dropped_total") == live.dropped_records > 0
    keys = next(f for f in families if f.name == "pilotfish_live_keys").samples
    assert {dict(s.labels)["family"]: s.value for s in keys if isinstance(s, Sample)} == {
        "services": 1,
        "workloads": 0,
        "edges": 1,
        "series": 1,
    }
    assert value(families, "pilotfish_tap_records_dropped_total") == 2 + 1
    assert open_tap.dropped == 1
    assert value(families, "pilotfish_logs_records_dropped_total") == 1
    text = render(families)
    assert "# TYPE pilotfish_live_keys gauge" in text
