"""Istio's TCP metrics from connection records: names, Istio's TCP labels, the series cap."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from tests.request_records import Clock

from pilotfish.telemetry.istio_metrics import ISTIO_LABELS, ISTIO_TCP_LABELS, IstioTcpMetrics
from pilotfish.telemetry.prometheus import MetricFamily, Sample, render
from pilotfish.telemetry.records import ConnectionRecord, Peer

CLIENT = Peer("client", "shop", "spiffe://cluster.local/ns/shop/sa/client", "client", "v1")
DB = Peer("db-primary", "shop", "spiffe://cluster.local/ns/shop/sa/db", "db", "v15", "db", "v15")
CONNECTED = ConnectionRecord(
    start_time=0.0,
    event="connected",
    opened=True,
    reporter="destination",
    proxy="db-0",
    source=CLIENT,
    destination=DB,
    destination_service="db.shop.svc.cluster.local",
    destination_service_name="db",
    destination_service_namespace="shop",
    received_bytes=0,
    sent_bytes=0,
    received_delta=0,
    sent_delta=0,
    duration_ms=0.0,
    response_flags=(),
    upstream_cluster="inbound|5432||",
    upstream_host="127.0.0.1:5432",
    upstream_failure="",
    termination_details="",
    connection_security_policy="mutual_tls",
    downstream_remote="127.0.0.1:40404",
    downstream_local="127.0.0.1:16006",
    connection_id="a",
)
PERIODIC = replace(
    CONNECTED, event="periodic", opened=False, received_bytes=700, received_delta=700
)
CLOSED = replace(
    CONNECTED,
    event="closed",
    opened=False,
    received_bytes=1000,
    sent_bytes=4000,
    received_delta=300,
    sent_delta=4000,
)
TCP_METRICS = (
    "istio_tcp_connections_opened_total",
    "istio_tcp_connections_closed_total",
    "istio_tcp_sent_bytes_total",
    "istio_tcp_received_bytes_total",
)


def value(metrics: IstioTcpMetrics, name: str, **labels: str) -> float:
    found: MetricFamily = next(f for f in metrics.families() if f.name == name)
    total = 0.0
    for sample in found.samples:
        assert isinstance(sample, Sample)
        if all(dict(sample.labels)[k] == v for k, v in labels.items()):
            total += sample.value
    return total


def test_tcp_labels_are_the_http_ones_without_the_request_only_ones() -> None:
    assert set(ISTIO_LABELS) - set(ISTIO_TCP_LABELS) == {"response_code", "grpc_response_status"}
    assert [label for label in ISTIO_LABELS if label in ISTIO_TCP_LABELS] == list(ISTIO_TCP_LABELS)


def test_a_connection_counts_opened_once_closed_once_and_its_bytes_as_reported() -> None:
    metrics = IstioTcpMetrics()
    metrics.add_connections([CONNECTED, PERIODIC])
    assert value(metrics, "istio_tcp_connections_opened_total") == 1
    assert value(metrics, "istio_tcp_connections_closed_total") == 0
    assert value(metrics, "istio_tcp_received_bytes_total") == 700  # before it ends
    metrics.add_connections([CLOSED])
    assert value(metrics, "istio_tcp_connections_opened_total") == 1
    assert value(metrics, "istio_tcp_connections_closed_total") == 1
    assert value(metrics, "istio_tcp_received_bytes_total") == 1000
    assert value(metrics, "istio_tcp_sent_bytes_total") == 4000
    found = next(f for f in metrics.families() if f.name == "istio_tcp_sent_bytes_total")
    (sample,) = found.samples
    assert dict(sample.labels) == {
        "reporter": "destination",
        "source_workload": "client",
        "source_workload_namespace": "shop",
        "source_principal": "spiffe://cluster.local/ns/shop/sa/client",
        "source_app": "client",
        "source_version": "v1",
        "source_canonical_service": "unknown",
        "source_canonical_revision": "unknown",
        "source_cluster": "Kubernetes",
        "destination_workload": "db-primary",
        "destination_workload_namespace": "shop",
        "destination_principal": "spiffe://cluster.local/ns/shop/sa/db",
        "destination_app": "db",
        "destination_version": "v15",
        "destination_service": "db.shop.svc.cluster.local",
        "destination_service_name": "db",
        "destination_service_namespace": "shop",
        "destination_canonical_service": "db",
        "destination_canonical_revision": "v15",
        "destination_cluster": "Kubernetes",
        "request_protocol": "tcp",
        "response_flags": "-",
        "connection_security_policy": "mutual_tls",
    }


def test_a_failed_connection_is_its_own_series_by_its_flags() -> None:
    metrics = IstioTcpMetrics()
    failed = replace(CLOSED, opened=True, response_flags=("UF", "URX"), sent_delta=0)
    metrics.add_connections([CONNECTED, CLOSED, failed])
    assert value(metrics, "istio_tcp_connections_opened_total", response_flags="UF,URX") == 1
    assert value(metrics, "istio_tcp_connections_closed_total", response_flags="UF,URX") == 1
    assert value(metrics, "istio_tcp_connections_closed_total", response_flags="-") == 1
    assert metrics.series_count == 2


def test_the_series_cap_drops_new_label_sets_and_idle_ones_make_room(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(0.0)
    metrics = IstioTcpMetrics(max_series=1, clock=clock)
    other = replace(CONNECTED, reporter="source", connection_security_policy="unknown")
    with caplog.at_level(logging.WARNING, "pilotfish.telemetry"):
        metrics.add_connections([CONNECTED, other, other])
    assert metrics.dropped == 2 and metrics.series_count == 1
    assert value(metrics, "pilotfish_telemetry_tcp_series_dropped_total") == 2
    assert value(metrics, "pilotfish_telemetry_tcp_series") == 1
    (warning,) = [r for r in caplog.records if "istio_tcp" in r.getMessage()]
    assert "not counted" in warning.getMessage()
    clock.now = 600.0
    metrics.add_connections([other])
    assert metrics.evicted == 1 and metrics.dropped == 2
    assert value(metrics, "istio_tcp_connections_opened_total", reporter="source") == 1
    assert value(metrics, "istio_tcp_connections_opened_total", reporter="destination") == 0


def test_exposition_has_the_four_counters() -> None:
    metrics = IstioTcpMetrics()
    metrics.add_connections([CONNECTED, CLOSED])
    text = render(metrics.families())
    for name in TCP_METRICS:
        assert f"# TYPE {name} counter" in text
    assert 'istio_tcp_received_bytes_total{reporter="destination",' in text
    assert ',request_protocol="tcp",response_flags="-",' in text
    assert "\npilotfish_telemetry_tcp_series_dropped_total 0\n" in text
