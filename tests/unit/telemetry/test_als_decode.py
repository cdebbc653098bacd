"""Envoy's HTTP access-log entries become request records with Istio's peer labels."""

from __future__ import annotations

from dataclasses import replace

import pytest
from envoy.data.accesslog.v3 import accesslog_pb2

from als_entries import http_entry
from pilotfish.model.proxy import ProxyNode
from pilotfish.telemetry.als_decode import (
    MAX_FIELD_CHARS,
    RESPONSE_FLAG_FIELDS,
    PeerCache,
    decode_entry,
    response_flags,
    service_name_and_namespace,
    split_outbound_cluster,
    trace_id,
)
from pilotfish.telemetry.nodes import NodeDirectory

FRONTEND = ProxyNode(
    id="frontend-0",
    service="frontend",
    namespace="shop",
    labels={"app": "frontend", "version": "v1"},
    outbound_port=15001,
    inbound_port=15006,
    app_port=8000,
    service_account="frontend-sa",
    workload="frontend",
)
BACKEND = ProxyNode(
    id="backend-1",
    service="backend",
    namespace="shop",
    labels={"app": "backend", "version": "v2"},
    outbound_port=16001,
    inbound_port=16006,
    app_port=9000,
    service_account="backend-sa",
    workload="backend-v2",
)
BACKEND_HOST = "backend.shop.svc.cluster.local"
FRONTEND_SPIFFE = "spiffe://cluster.local/ns/shop/sa/frontend-sa"
BACKEND_SPIFFE = "spiffe://cluster.local/ns/shop/sa/backend-sa"


@pytest.fixture
def nodes() -> NodeDirectory:
    directory = NodeDirectory()
    directory.connected(FRONTEND)
    directory.connected(BACKEND)
    return directory


def test_destination_side_names_its_caller_from_the_peer_metadata_and_certificate(
    nodes: NodeDirectory,
) -> None:
    entry = http_entry(peer_id=FRONTEND.id, peer_uri=FRONTEND_SPIFFE, local_uri=BACKEND_SPIFFE)
    record = decode_entry(entry, "destination", BACKEND, nodes)
    assert record.reporter == "destination"
    assert record.proxy == "backend-1"
    assert record.source.workload == "frontend"
    assert record.source.app == "frontend"
    assert record.source.version == "v1"
    assert record.source.namespace == "shop"
    assert record.source.principal == FRONTEND_SPIFFE
    assert record.destination.workload == "backend-v2"
    assert record.destination.version == "v2"
    assert record.destination.canonical_service == "backend"
    assert record.destination.principal == BACKEND_SPIFFE
    assert record.destination_service == BACKEND_HOST
    assert record.destination_service_name == "backend"
    assert record.destination_service_namespace == "shop"
    assert record.connection_security_policy == "mutual_tls"


def test_destination_side_in_plaintext_trusts_the_header(nodes: NodeDirectory) -> None:
    record = decode_entry(http_entry(peer_id=FRONTEND.id), "destination", BACKEND, nodes)
    assert record.source.workload == "frontend"
    assert record.source.principal == "unknown"
    assert record.connection_security_policy == "none"


def test_a_peer_header_that_the_certificate_contradicts_is_not_believed(
    nodes: NodeDirectory,
) -> None:
    other = "spiffe://cluster.local/ns/attic/sa/intruder"
    entry = http_entry(peer_id=FRONTEND.id, peer_uri=other)
    record = decode_entry(entry, "destination", BACKEND, nodes)
    assert record.source.workload == "unknown"
    assert record.source.principal == other
    assert record.source.namespace == "attic"


def test_an_unknown_caller_is_unknown(nodes: NodeDirectory) -> None:
    record = decode_entry(http_entry(peer_id="nobody"), "destination", BACKEND, nodes)
    assert record.source.workload == "unknown"
    assert record.source.namespace == "unknown"


def test_source_side_names_the_destination_from_cluster_and_endpoint(
    nodes: NodeDirectory,
) -> None:
    entry = http_entry(
        cluster=f"outbound|8080|v2|{BACKEND_HOST}", upstream=("127.0.0.1", BACKEND.inbound_port)
    )
    record = decode_entry(entry, "source", FRONTEND, nodes)
    assert record.reporter == "source"
    assert record.source.workload == "frontend"
    assert record.source.principal == "unknown"
    assert record.destination.workload == "backend-v2"
    assert record.destination.app == "backend"
    assert record.destination_service == BACKEND_HOST
    assert record.destination_service_name == "backend"
    assert record.destination_service_namespace == "shop"
    assert record.connection_security_policy == "unknown"
    assert record.upstream_host == f"127.0.0.1:{BACKEND.inbound_port}"
    assert record.upstream_cluster == f"outbound|8080|v2|{BACKEND_HOST}"


def test_source_side_to_an_outside_host(nodes: NodeDirectory) -> None:
    entry = http_entry(cluster="outbound|443||api.example.com", upstream=("93.184.216.34", 443))
    record = decode_entry(entry, "source", FRONTEND, nodes)
    assert record.destination_service == "api.example.com"
    assert record.destination_service_name == "api.example.com"
    assert record.destination_service_namespace == "unknown"
    assert record.destination.workload == "unknown"


def test_without_a_cluster_the_service_is_the_host_header(nodes: NodeDirectory) -> None:
    """Envoy names no cluster when it picked no host (UH, NR...)."""
    entry = http_entry(code=503, flags=["no_healthy_upstream"])
    entry.request.authority = "backend:8080"
    record = decode_entry(entry, "source", FRONTEND, nodes)
    assert record.destination_service == BACKEND_HOST  # the caller's namespace, as its app meant
    assert record.destination_service_name == "backend"
    assert record.destination_service_namespace == "shop"
    assert record.destination.workload == "unknown"
    assert record.response_flags == ("UH",)
    assert record.response_flags_label == "UH"
    gateway = ProxyNode(id="gw", kind="gateway", workload="pilotfish-ingressgateway")
    entry.request.authority = f"{BACKEND_HOST}:8080"
    assert decode_entry(entry, "source", gateway, nodes).destination_service == BACKEND_HOST
    entry.request.authority = ""
    assert decode_entry(entry, "source", FRONTEND, nodes).destination_service == "unknown"


def test_a_host_no_proxy_serves_is_unknown(nodes: NodeDirectory) -> None:
    """Else an outside client sending random Hosts to the gateway makes a service each."""
    entry = http_entry(code=404, flags=["no_route_found"])
    gateway = ProxyNode(id="gw", kind="gateway", workload="pilotfish-ingressgateway")
    for host in ("127.0.0.1:8443", "x1.example.com", "backend"):
        entry.request.authority = host
        record = decode_entry(entry, "source", gateway, nodes)
        assert record.destination_service == "unknown"
        assert record.destination_service_name == "unknown"
        assert record.authority == host
    entry.request.authority = "nothere:8080"
    assert decode_entry(entry, "source", FRONTEND, nodes).destination_service == "unknown"


def test_long_strings_are_cut(nodes: NodeDirectory) -> None:
    entry = http_entry(code=503, flags=["upstream_connection_failure"])
    long = "a" * 5000
    entry.request.path = "/" + long
    entry.request.authority = long
    entry.request.request_id = long
    entry.response.response_code_details = long
    entry.common_properties.upstream_transport_failure_reason = long
    record = decode_entry(entry, "source", FRONTEND, nodes)
    cut_fields = (
        record.path,
        record.authority,
        record.request_id,
        record.response_code_details,
        record.upstream_failure,
    )
    for value in cut_fields:
        assert len(value) == MAX_FIELD_CHARS
        assert value.endswith("...")
    assert record.path.startswith("/aaa")
    entry.request.path = "/" + "b" * (MAX_FIELD_CHARS - 1)
    assert decode_entry(entry, "source", FRONTEND, nodes).path == entry.request.path


def test_request_fields(nodes: NodeDirectory) -> None:
    entry = http_entry(
        duration_ms=12.5,
        request_headers={"traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"},
    )
    record = decode_entry(entry, "destination", BACKEND, nodes)
    assert record.method == "GET"
    assert record.path == "/hello"
    assert record.authority == "backend:8080"
    assert record.request_id == "4a1f-req"
    assert record.response_code == 200
    assert record.response_code_details == "via_upstream"
    assert record.duration_ms == pytest.approx(12.5)
    assert record.request_bytes == 120
    assert record.response_bytes == 1080
    assert record.start_time == 1_700_000_000
    assert record.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert record.request_protocol == "http"
    assert record.grpc_status == ""
    assert record.response_flags == ()
    assert record.ok


def test_no_response_sent_is_code_zero(nodes: NodeDirectory) -> None:
    record = decode_entry(http_entry(code=None), "source", FRONTEND, nodes)
    assert record.response_code == 0
    assert not record.ok


def test_grpc_status_from_trailers_else_headers(nodes: NodeDirectory) -> None:
    grpc_request = {"content-type": "application/grpc+proto"}
    in_trailers = http_entry(request_headers=grpc_request, response_trailers={"grpc-status": "14"})
    record = decode_entry(in_trailers, "source", FRONTEND, nodes)
    assert record.request_protocol == "grpc"
    assert record.grpc_status == "14"
    assert not record.ok
    trailers_only = http_entry(request_headers=grpc_request, response_headers={"grpc-status": "5"})
    assert decode_entry(trailers_only, "source", FRONTEND, nodes).grpc_status == "5"


def test_grpc_status_only_for_grpc_requests(nodes: NodeDirectory) -> None:
    """As Istio: an HTTP request's grpc-status header says nothing of the request."""
    entry = http_entry(
        response_headers={"grpc-status": "14"}, response_trailers={"grpc-status": "2"}
    )
    record = decode_entry(entry, "source", FRONTEND, nodes)
    assert record.request_protocol == "http"
    assert record.grpc_status == ""
    assert record.ok


def test_duration_falls_back_to_the_stream_duration(nodes: NodeDirectory) -> None:
    entry = http_entry(duration_ms=3.0)
    entry.common_properties.ClearField("time_to_last_downstream_tx_byte")
    record = decode_entry(entry, "source", FRONTEND, nodes)
    assert record.duration_ms == pytest.approx(3.001)


def test_trace_id_from_b3_when_there_is_no_traceparent() -> None:
    assert trace_id({"x-b3-traceid": "80F198EE56343BA864FE8B2A57D3EFF7"}) == (
        "80f198ee56343ba864fe8b2a57d3eff7"
    )
    assert trace_id({"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}) == ""
    assert trace_id({}) == ""


def test_response_flags_in_envoys_order() -> None:
    flags = accesslog_pb2.ResponseFlags(
        upstream_retry_limit_exceeded=True, upstream_connection_failure=True
    )
    assert response_flags(flags) == ("UF", "URX")
    flags.unauthorized_details.reason = accesslog_pb2.ResponseFlags.Unauthorized.EXTERNAL_SERVICE
    assert response_flags(flags) == ("UF", "UAEX", "URX")


def test_every_response_flag_field_is_mapped() -> None:
    """A field added to the proto (as Envoy adds flags) must get its short code here."""
    by_number = sorted(accesslog_pb2.ResponseFlags.DESCRIPTOR.fields, key=lambda f: f.number)
    # Decoding relies on the field numbers being in Envoy's order.
    assert [f.name for f in by_number] == [name for name, _ in RESPONSE_FLAG_FIELDS]
    fields = {f.name for f in by_number}
    every = accesslog_pb2.ResponseFlags(
        **{name: True for name in fields if name != "unauthorized_details"}
    )
    assert len(response_flags(every)) == len(fields) - 1


def test_a_node_back_with_other_labels_gets_new_peer_labels(nodes: NodeDirectory) -> None:
    peers = PeerCache()
    entry = http_entry(peer_id=FRONTEND.id)
    first = decode_entry(entry, "destination", BACKEND, nodes, peers)
    assert decode_entry(entry, "destination", BACKEND, nodes, peers).source is first.source
    nodes.connected(replace(FRONTEND, labels={"app": "frontend", "version": "v9"}))
    again = decode_entry(entry, "destination", BACKEND, nodes, peers)
    assert again.source.version == "v9"


def test_cluster_and_host_names() -> None:
    assert split_outbound_cluster("outbound|8080|v1|web.default.svc.cluster.local") == (
        8080,
        "v1",
        "web.default.svc.cluster.local",
    )
    assert split_outbound_cluster("inbound|8000||") is None
    assert split_outbound_cluster("outbound|x||web") is None
    assert service_name_and_namespace("web.shop.svc.cluster.local") == ("web", "shop")
    assert service_name_and_namespace("httpbin.org") == ("httpbin.org", "unknown")


def test_the_http_version_is_envoys_protocol_words(nodes: NodeDirectory) -> None:
    entry = http_entry(cluster=f"outbound|8080||{BACKEND_HOST}")
    assert decode_entry(entry, "source", FRONTEND, nodes).http_version == "HTTP/1.1"
    entry.protocol_version = accesslog_pb2.HTTPAccessLogEntry.HTTP2
    assert decode_entry(entry, "source", FRONTEND, nodes).http_version == "HTTP/2"
    entry.protocol_version = accesslog_pb2.HTTPAccessLogEntry.PROTOCOL_UNSPECIFIED
    assert decode_entry(entry, "source", FRONTEND, nodes).http_version == ""
