"""Istio's standard metrics from request records: names, labels, buckets, the series cap."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from tests.request_records import Clock

from pilotfish.model.telemetry import DURATION_BUCKETS_MS, SIZE_BUCKETS_BYTES
from pilotfish.telemetry.istio_metrics import ISTIO_LABELS, IstioMetrics
from pilotfish.telemetry.prometheus import HistogramSample, MetricFamily, Sample, render
from pilotfish.telemetry.records import Peer, RequestRecord

FRONTEND = Peer("frontend", "shop", "unknown", "frontend", "v1", "frontend", "v1")
BACKEND = Peer(
    "backend-v2",
    "shop",
    "spiffe://cluster.local/ns/shop/sa/backend",
    "backend",
    "v2",
    "backend",
    "v2",
)
RECORD = RequestRecord(
    start_time=0.0,
    reporter="destination",
    proxy="backend-1",
    source=replace(FRONTEND, principal="spiffe://cluster.local/ns/shop/sa/frontend"),
    destination=BACKEND,
    destination_service="backend.shop.svc.cluster.local",
    destination_service_name="backend",
    destination_service_namespace="shop",
    method="GET",
    path="/",
    authority="backend",
    request_protocol="http",
    response_code=200,
    grpc_status="",
    response_flags=(),
    response_code_details="via_upstream",
    upstream_failure="",
    duration_ms=7.0,
    request_bytes=120,
    response_bytes=1080,
    upstream_cluster="inbound|9000||",
    upstream_host="127.0.0.1:9000",
    route_name="default",
    request_id="r",
    trace_id="",
    connection_security_policy="mutual_tls",
)

ISTIO_DOCUMENTED_LABELS = {
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
}


def family(metrics: IstioMetrics, name: str) -> MetricFamily:
    return next(f for f in metrics.families() if f.name == name)


def test_labels_are_istios() -> None:
    assert set(ISTIO_LABELS) == ISTIO_DOCUMENTED_LABELS
    assert len(ISTIO_LABELS) == len(ISTIO_DOCUMENTED_LABELS)


def test_one_request_in_every_metric_with_istios_label_values() -> None:
    metrics = IstioMetrics()
    metrics.add([RECORD])
    (sample,) = family(metrics, "istio_requests_total").samples
    assert isinstance(sample, Sample)
    assert sample.value == 1
    assert dict(sample.labels) == {
        "reporter": "destination",
        "source_workload": "frontend",
        "source_workload_namespace": "shop",
        "source_principal": "spiffe://cluster.local/ns/shop/sa/frontend",
        "source_app": "frontend",
        "source_version": "v1",
        "source_canonical_service": "frontend",
        "source_canonical_revision": "v1",
        "source_cluster": "Kubernetes",
        "destination_workload": "backend-v2",
        "destination_workload_namespace": "shop",
        "destination_principal": "spiffe://cluster.local/ns/shop/sa/backend",
        "destination_app": "backend",
        "destination_version": "v2",
        "destination_service": "backend.shop.svc.cluster.local",
        "destination_service_name": "backend",
        "destination_service_namespace": "shop",
        "destination_canonical_service": "backend",
        "destination_canonical_revision": "v2",
        "destination_cluster": "Kubernetes",
        "request_protocol": "http",
        "response_code": "200",
        "grpc_response_status": "",
        "response_flags": "-",
        "connection_security_policy": "mutual_tls",
    }
    duration = family(metrics, "istio_request_duration_milliseconds").samples[0]
    assert isinstance(duration, HistogramSample)
    assert duration.bounds == DURATION_BUCKETS_MS
    assert duration.total == 7.0
    assert duration.counts[DURATION_BUCKETS_MS.index(10)] == 1  # 5 < 7 <= 10
    assert sum(duration.counts) == 1
    request_bytes = family(metrics, "istio_request_bytes").samples[0]
    response_bytes = family(metrics, "istio_response_bytes").samples[0]
    assert isinstance(request_bytes, HistogramSample)
    assert isinstance(response_bytes, HistogramSample)
    assert request_bytes.bounds == SIZE_BUCKETS_BYTES
    assert request_bytes.total == 120
    assert response_bytes.total == 1080
    assert response_bytes.counts[SIZE_BUCKETS_BYTES.index(10_000)] == 1


def test_same_labels_count_in_one_series_other_labels_in_another() -> None:
    metrics = IstioMetrics()
    failed = replace(RECORD, response_code=503, response_flags=("UF", "URX"))
    metrics.add([RECORD, RECORD, failed])
    samples = family(metrics, "istio_requests_total").samples
    by_code = {dict(s.labels)["response_code"]: s for s in samples}
    assert isinstance(by_code["200"], Sample) and by_code["200"].value == 2
    assert isinstance(by_code["503"], Sample) and by_code["503"].value == 1
    assert dict(by_code["503"].labels)["response_flags"] == "UF,URX"


def test_the_series_cap_drops_new_label_sets_counts_them_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = IstioMetrics(max_series=2)
    records = [replace(RECORD, response_code=code) for code in (200, 201, 202, 203)]
    with caplog.at_level(logging.WARNING, "pilotfish.telemetry"):
        metrics.add(records)
        metrics.add([RECORD])  # an existing series still counts
        metrics.add(records[2:])
    assert metrics.series_count == 2
    counts = {
        dict(s.labels)["response_code"]: s for s in family(metrics, "istio_requests_total").samples
    }
    assert set(counts) == {"200", "201"}
    first = counts["200"]
    assert isinstance(first, Sample) and first.value == 2
    assert metrics.dropped == 4
    (dropped,) = family(metrics, "pilotfish_telemetry_series_dropped_total").samples
    assert isinstance(dropped, Sample) and dropped.value == 4
    (series,) = family(metrics, "pilotfish_telemetry_series").samples
    assert isinstance(series, Sample) and series.value == 2
    warnings = [r for r in caplog.records if "cap" in r.getMessage()]
    assert len(warnings) == 1
    assert "not counted" in warnings[0].getMessage()


def test_at_the_cap_series_idle_for_ten_minutes_make_room() -> None:
    clock = Clock(0.0)
    metrics = IstioMetrics(max_series=2, clock=clock)
    codes = [replace(RECORD, response_code=code) for code in (200, 201, 202, 203)]
    metrics.add(codes[:2])
    clock.now = 300.0
    metrics.add([codes[0]])  # 200 is busy, 201 idle since 0
    clock.now = 599.0
    metrics.add([codes[2]])
    assert metrics.dropped == 1  # nothing idle long enough yet
    clock.now = 600.0
    metrics.add([codes[2]])
    assert metrics.dropped == 1
    assert metrics.evicted == 1
    assert metrics.series_count == 2
    counts = {
        dict(s.labels)["response_code"]: s for s in family(metrics, "istio_requests_total").samples
    }
    assert set(counts) == {"200", "202"}
    metrics.add([codes[3]])  # 200 was counted at 300: not idle for 10 minutes
    assert metrics.dropped == 2


def test_exposition_of_a_request() -> None:
    metrics = IstioMetrics()
    metrics.add([RECORD])
    text = render(metrics.families())
    assert "# TYPE istio_requests_total counter" in text
    assert "# TYPE istio_request_duration_milliseconds histogram" in text
    assert 'istio_request_duration_milliseconds_bucket{reporter="destination",' in text
    assert ',le="+Inf"} 1\n' in text
    assert "\npilotfish_telemetry_series_dropped_total 0\n" in text
