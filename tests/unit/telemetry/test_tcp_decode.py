"""Envoy's TCP access-log entries become connection records with Istio's peer labels, and
their running byte totals become the steps the counters add."""

from __future__ import annotations

from dataclasses import replace

import pytest
from envoy.data.accesslog.v3 import accesslog_pb2

from als_entries import tcp_entry
from pilotfish.model.proxy import ProxyNode
from pilotfish.telemetry.nodes import NodeDirectory
from pilotfish.telemetry.records import Peer
from pilotfish.telemetry.tcp_decode import ConnectionTracker, decode_tcp_entry

CLIENT = ProxyNode(
    id="client-0",
    service="client",
    namespace="shop",
    labels={"app": "client", "version": "v1"},
    outbound_port=15001,
    inbound_port=15006,
    app_port=8000,
    service_account="client-sa",
    workload="client",
)
DB = ProxyNode(
    id="db-0",
    service="db",
    namespace="shop",
    labels={"app": "db", "version": "v15"},
    outbound_port=16001,
    inbound_port=16006,
    app_port=5432,
    service_account="db-sa",
    workload="db-primary",
)
DB_HOST = "db.shop.svc.cluster.local"
DB_CLUSTER = f"outbound|5432||{DB_HOST}"
CLIENT_SPIFFE = "spiffe://cluster.local/ns/shop/sa/client-sa"
DB_SPIFFE = "spiffe://cluster.local/ns/shop/sa/db-sa"


@pytest.fixture
def nodes() -> NodeDirectory:
    directory = NodeDirectory()
    directory.connected(CLIENT)
    directory.connected(DB)
    return directory


def test_the_source_side_names_the_service_by_cluster_and_the_workload_by_endpoint(
    nodes: NodeDirectory,
) -> None:
    entry = tcp_entry(cluster=DB_CLUSTER, upstream=("127.0.0.1", 16006), received=10, sent=20)
    record = decode_tcp_entry(entry, "source", CLIENT, nodes, ConnectionTracker())
    assert record.event == "closed" and record.closed and record.opened
    assert record.source.workload == "client" and record.source.app == "client"
    assert record.destination.workload == "db-primary"
    assert record.destination.version == "v15"
    assert (record.destination_service, record.destination_service_name) == (DB_HOST, "db")
    assert record.destination_service_namespace == "shop"
    assert record.connection_security_policy == "unknown"  # the source cannot see the upstream TLS
    assert (record.received_bytes, record.sent_bytes) == (10, 20)
    assert record.upstream_host == "127.0.0.1:16006"
    assert record.downstream_remote == "127.0.0.1:40404"
    assert record.duration_ms == 250.0
    assert record.to_json()["request_protocol"] == "tcp"


def test_a_connection_that_reached_no_endpoint_names_the_service_but_no_workload(
    nodes: NodeDirectory,
) -> None:
    entry = tcp_entry(
        cluster=DB_CLUSTER,
        upstream=("127.0.0.1", 1),
        flags=("upstream_connection_failure", "upstream_retry_limit_exceeded"),
    )
    record = decode_tcp_entry(entry, "source", CLIENT, nodes, ConnectionTracker())
    assert record.opened and record.closed
    assert record.response_flags == ("UF", "URX")
    assert record.response_flags_label == "UF,URX"
    assert record.destination == Peer()
    assert record.destination_service == DB_HOST


def test_over_mtls_the_destination_names_its_caller_by_the_verified_certificate(
    nodes: NodeDirectory,
) -> None:
    entry = tcp_entry(cluster="inbound|5432||", peer_uri=CLIENT_SPIFFE, local_uri=DB_SPIFFE)
    record = decode_tcp_entry(entry, "destination", DB, nodes, ConnectionTracker())
    assert record.connection_security_policy == "mutual_tls"
    assert record.source.workload == "client" and record.source.version == "v1"
    assert record.source.principal == CLIENT_SPIFFE
    assert record.destination.workload == "db-primary"
    assert record.destination.principal == DB_SPIFFE
    assert record.destination_service == DB_HOST


def test_a_connected_report_before_the_inbound_handshake_is_done_is_left_for_the_next(
    nodes: NodeDirectory,
) -> None:
    tracker = ConnectionTracker()
    early = tcp_entry(event=accesslog_pb2.TcpUpstreamConnected, local_uri=DB_SPIFFE)
    assert decode_tcp_entry(early, "destination", DB, nodes, tracker) is None
    later = tcp_entry(received=10, peer_uri=CLIENT_SPIFFE, local_uri=DB_SPIFFE)
    record = decode_tcp_entry(later, "destination", DB, nodes, tracker)
    assert record is not None and record.opened and record.closed
    assert record.source.workload == "client"
    # Once the caller's certificate is in, the connected report counts.
    done = tcp_entry(
        event=accesslog_pb2.TcpUpstreamConnected,
        connection="b",
        peer_uri=CLIENT_SPIFFE,
        local_uri=DB_SPIFFE,
    )
    assert decode_tcp_entry(done, "destination", DB, nodes, tracker) is not None
    # A plaintext inbound has no handshake to wait for.
    plain = tcp_entry(event=accesslog_pb2.TcpUpstreamConnected, connection="c")
    assert decode_tcp_entry(plain, "destination", DB, nodes, tracker) is not None


def test_an_identity_held_by_two_workloads_names_only_its_principal_and_namespace(
    nodes: NodeDirectory,
) -> None:
    nodes.connected(replace(CLIENT, id="batch-0", workload="batch", labels={"app": "batch"}))
    entry = tcp_entry(peer_uri=CLIENT_SPIFFE, local_uri=DB_SPIFFE)
    record = decode_tcp_entry(entry, "destination", DB, nodes, ConnectionTracker())
    assert record.source == Peer(principal=CLIENT_SPIFFE, namespace="shop")


def test_replicas_of_one_workload_holding_the_identity_name_that_workload(
    nodes: NodeDirectory,
) -> None:
    nodes.connected(replace(CLIENT, id="client-1", inbound_port=15007))
    entry = tcp_entry(peer_uri=CLIENT_SPIFFE, local_uri=DB_SPIFFE)
    record = decode_tcp_entry(entry, "destination", DB, nodes, ConnectionTracker())
    assert record.source.workload == "client"


def test_without_mtls_nothing_names_the_caller(nodes: NodeDirectory) -> None:
    record = decode_tcp_entry(tcp_entry(), "destination", DB, nodes, ConnectionTracker())
    assert record.source == Peer()
    assert record.connection_security_policy == "none"
    assert record.destination.workload == "db-primary"


def test_running_totals_become_steps_and_the_first_report_opens_the_connection(
    nodes: NodeDirectory,
) -> None:
    tracker = ConnectionTracker()
    reports = [
        tcp_entry(event=accesslog_pb2.TcpUpstreamConnected),
        tcp_entry(event=accesslog_pb2.TcpPeriodic, received=1000, sent=400),
        tcp_entry(event=accesslog_pb2.TcpPeriodic, received=3000, sent=400),
        tcp_entry(received=3500, sent=900),
    ]
    records = [decode_tcp_entry(e, "destination", DB, nodes, tracker) for e in reports]
    assert [r.event for r in records] == ["connected", "periodic", "periodic", "closed"]
    assert [r.opened for r in records] == [True, False, False, False]
    assert [r.received_delta for r in records] == [0, 1000, 2000, 500]
    assert [r.sent_delta for r in records] == [0, 400, 0, 500]
    assert tracker.open_connections == 0  # a closed connection is forgotten


def test_connections_are_told_apart_by_proxy_and_envoys_stream_id(nodes: NodeDirectory) -> None:
    tracker = ConnectionTracker()
    first = tcp_entry(event=accesslog_pb2.TcpPeriodic, connection="a", received=100)
    other = tcp_entry(event=accesslog_pb2.TcpPeriodic, connection="b", received=100)
    assert decode_tcp_entry(first, "destination", DB, nodes, tracker).received_delta == 100
    assert decode_tcp_entry(other, "destination", DB, nodes, tracker).received_delta == 100
    # The same id at the other reporter is that proxy's own connection.
    assert decode_tcp_entry(first, "source", CLIENT, nodes, tracker).received_delta == 100
    assert decode_tcp_entry(first, "destination", DB, nodes, tracker).received_delta == 0
    assert tracker.open_connections == 3


def test_the_tracker_is_bounded_and_forgets_the_connection_reported_longest_ago() -> None:
    tracker = ConnectionTracker(max_open=2)
    tracker.report("p", "a", 10, 0, closed=False)
    tracker.report("p", "b", 10, 0, closed=False)
    tracker.report("p", "a", 20, 0, closed=False)  # "a" is now the freshest
    tracker.report("p", "c", 10, 0, closed=False)
    assert tracker.forgotten == 1 and tracker.open_connections == 2
    assert tracker.report("p", "a", 30, 0, closed=True) == (False, 10, 0)
    # "b" was forgotten: its next report counts as a new connection, from zero.
    assert tracker.report("p", "b", 15, 0, closed=True) == (True, 15, 0)


def test_totals_never_step_backwards() -> None:
    tracker = ConnectionTracker()
    tracker.report("p", "a", 100, 100, closed=False)
    assert tracker.report("p", "a", 50, 150, closed=False) == (False, 0, 50)
    assert tracker.report("p", "a", 120, 150, closed=True) == (False, 20, 0)


def test_an_entry_without_a_type_or_id_is_one_whole_connection(nodes: NodeDirectory) -> None:
    entry = tcp_entry(connection="", received=5)
    entry.common_properties.ClearField("access_log_type")
    record = decode_tcp_entry(entry, "destination", DB, nodes, ConnectionTracker())
    assert record.event == "closed" and record.opened
    assert record.connection_id == "1700000000000000000|127.0.0.1:40404|127.0.0.1:15006"
