from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2

# Imported for their side effect: they register the descriptors that the bootstrap's typed
# Any fields name, so json_format can resolve them.
from envoy.extensions.bootstrap.internal_listener.v3 import (  # noqa: F401
    internal_listener_pb2,
)
from envoy.extensions.resource_monitors.downstream_connections.v3 import (  # noqa: F401
    downstream_connections_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from pilotfish.agent.bootstrap import XDS_CLUSTER_NAME, build_bootstrap
from pilotfish.model.identity import SDS_CLUSTER_NAME
from pilotfish.model.keepalive import XdsKeepalive
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.telemetry import TELEMETRY_CLUSTER

SIDECAR = ProxyNode(
    id="sidecar~reviews-v1-0",
    service="reviews",
    namespace="shop",
    labels={"app": "reviews", "version": "v1"},
    outbound_port=15001,
    inbound_port=15006,
    app_port=9080,
    app_protocol="HTTP2",
)
GATEWAY = ProxyNode(id="gateway-0", kind="gateway", labels={"istio": "ingressgateway"})


def parse(bootstrap: dict[str, Any]) -> bootstrap_pb2.Bootstrap:
    # Through JSON text first: what Envoy reads is the file, not the dict.
    message = bootstrap_pb2.Bootstrap()
    json_format.Parse(json.dumps(bootstrap), message)
    return message


@pytest.mark.parametrize("node", [SIDECAR, GATEWAY], ids=["sidecar", "gateway"])
@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
def test_bootstrap_parses_as_envoy_bootstrap(node: ProxyNode, delta: bool) -> None:
    bootstrap = build_bootstrap(
        node, xds_address=("127.0.0.1", 18000), admin_port=19000, delta=delta
    )
    message = parse(bootstrap)
    assert message.node.id == node.id
    assert message.admin.address.socket_address.port_value == 19000
    assert message.admin.address.socket_address.address == "127.0.0.1"


def test_delta_and_sotw_choose_the_ads_api_type() -> None:
    delta = parse(build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 1), admin_port=0))
    sotw = parse(build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 1), admin_port=0, delta=False))
    api_type = config_source_pb2.ApiConfigSource.ApiType
    assert delta.dynamic_resources.ads_config.api_type == api_type.Value("DELTA_GRPC")
    assert sotw.dynamic_resources.ads_config.api_type == api_type.Value("GRPC")


def test_clusters_and_listeners_come_over_ads() -> None:
    message = parse(build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 1), admin_port=0))
    dynamic = message.dynamic_resources
    assert dynamic.cds_config.HasField("ads")
    assert dynamic.lds_config.HasField("ads")
    assert dynamic.ads_config.set_node_on_first_message_only
    (service,) = dynamic.ads_config.grpc_services
    assert service.envoy_grpc.cluster_name == XDS_CLUSTER_NAME


def test_xds_reconnect_backoff_is_capped_at_one_second() -> None:
    message = parse(build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 1), admin_port=0))
    (service,) = message.dynamic_resources.ads_config.grpc_services
    backoff = service.envoy_grpc.retry_policy.retry_back_off
    assert backoff.max_interval.ToTimedelta().total_seconds() <= 1.0
    assert 0 < backoff.base_interval.ToTimedelta().total_seconds() <= 1.0


def test_xds_cluster_speaks_http2_to_the_control_plane() -> None:
    bootstrap = build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 18000), admin_port=0)
    message = parse(bootstrap)
    (cluster,) = message.static_resources.clusters
    assert cluster.name == XDS_CLUSTER_NAME
    options = http_protocol_options_pb2.HttpProtocolOptions()
    packed = cluster.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert packed.Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")
    assert cluster.upstream_connection_options.tcp_keepalive.keepalive_time.value > 0
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == (
        "127.0.0.1",
        18000,
    )


def test_sds_socket_adds_an_http2_cluster_to_that_unix_socket() -> None:
    without = parse(build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 1), admin_port=0))
    assert [c.name for c in without.static_resources.clusters] == [XDS_CLUSTER_NAME]
    bootstrap = build_bootstrap(
        SIDECAR, xds_address=("127.0.0.1", 1), admin_port=0, sds_socket=Path("/run/a/sds.sock")
    )
    clusters = {c.name: c for c in parse(bootstrap).static_resources.clusters}
    assert set(clusters) == {XDS_CLUSTER_NAME, SDS_CLUSTER_NAME}
    sds = clusters[SDS_CLUSTER_NAME]
    address = sds.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert address.pipe.path == "/run/a/sds.sock"
    options = http_protocol_options_pb2.HttpProtocolOptions()
    assert sds.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")


def test_an_ip_xds_address_is_static_and_a_name_is_resolved() -> None:
    by_ip = build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 1), admin_port=0)
    by_name = build_bootstrap(SIDECAR, xds_address=("localhost", 1), admin_port=0)
    assert by_ip["static_resources"]["clusters"][0]["type"] == "STATIC"
    assert by_name["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"


def test_node_cluster_is_the_canonical_service_and_namespace_as_istios() -> None:
    # Zipkin names the spans' service after it.
    assert (
        parse(build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 1), admin_port=0)).node.cluster
        == "reviews.shop"
    )
    gateway = replace(GATEWAY, labels={"app": "pilotfish-ingressgateway"})
    assert (
        parse(build_bootstrap(gateway, xds_address=("127.0.0.1", 1), admin_port=0)).node.cluster
        == "pilotfish-ingressgateway.default"
    )


def test_a_telemetry_address_adds_an_http1_cluster_there_and_says_so_in_the_metadata() -> None:
    without = parse(build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 1), admin_port=0))
    assert TELEMETRY_CLUSTER not in {c.name for c in without.static_resources.clusters}
    assert not ProxyNode.from_metadata(
        "n", json_format.MessageToDict(without.node.metadata)
    ).telemetry

    bootstrap = build_bootstrap(
        SIDECAR, xds_address=("127.0.0.1", 1), admin_port=0, telemetry_address=("127.0.0.1", 9411)
    )
    message = parse(bootstrap)
    clusters = {c.name: c for c in message.static_resources.clusters}
    telemetry = clusters[TELEMETRY_CLUSTER]
    assert telemetry.type == cluster_pb2.Cluster.STATIC
    address = telemetry.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == (
        "127.0.0.1",
        9411,
    )
    # Envoy's default protocol, HTTP/1.1: the admin server speaks nothing else.
    assert not telemetry.typed_extension_protocol_options
    node = ProxyNode.from_metadata("n", json_format.MessageToDict(message.node.metadata))
    assert node.telemetry


def test_zipkin_spans_are_flushed_every_second() -> None:
    message = parse(build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 1), admin_port=0))
    (static, _admin) = message.layered_runtime.layers
    layer = json_format.MessageToDict(static.static_layer)
    assert layer["tracing.zipkin.flush_interval_ms"] == 1000


@pytest.mark.parametrize("node", [SIDECAR, GATEWAY], ids=["sidecar", "gateway"])
def test_metadata_round_trips_through_the_node_proto(node: ProxyNode) -> None:
    message = parse(build_bootstrap(node, xds_address=("127.0.0.1", 1), admin_port=0))
    metadata = json_format.MessageToDict(message.node.metadata)
    assert ProxyNode.from_metadata(message.node.id, metadata) == node


def test_bootstrap_is_json_serialisable_and_deterministic() -> None:
    first = build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 1), admin_port=2)
    second = build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 1), admin_port=2)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def keepalive_of(message: bootstrap_pb2.Bootstrap) -> tuple[float, float]:
    (cluster,) = message.static_resources.clusters
    options = http_protocol_options_pb2.HttpProtocolOptions()
    assert cluster.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].Unpack(options)
    keepalive = options.explicit_http_config.http2_protocol_options.connection_keepalive
    return (
        keepalive.interval.ToTimedelta().total_seconds(),
        keepalive.timeout.ToTimedelta().total_seconds(),
    )


def test_envoy_pings_the_control_plane_as_the_keepalive_policy_says() -> None:
    default = parse(build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 1), admin_port=0))
    assert keepalive_of(default) == (10.0, 5.0)
    policy = XdsKeepalive(proxy_ping_interval=1.25, proxy_ping_timeout=0.5)
    short = build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 1), admin_port=0, keepalive=policy)
    assert keepalive_of(parse(short)) == (1.25, 0.5)


def test_the_locality_is_envoys_node_locality() -> None:
    node = replace(SIDECAR, locality="us-east/zone-a/rack-1")
    message = parse(build_bootstrap(node, xds_address=("127.0.0.1", 1), admin_port=0))
    locality = message.node.locality
    assert (locality.region, locality.zone, locality.sub_zone) == ("us-east", "zone-a", "rack-1")
    assert message.node.metadata["PILOTFISH_LOCALITY"] == "us-east/zone-a/rack-1"
    without = parse(build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 1), admin_port=0))
    assert not without.node.HasField("locality")


def test_a_fixed_admin_port_is_told_to_the_control_plane() -> None:
    bootstrap = parse(build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 1), admin_port=19000))
    node = ProxyNode.from_metadata(
        bootstrap.node.id, json_format.MessageToDict(bootstrap.node.metadata)
    )
    assert node.admin_address == "127.0.0.1:19000"


def test_an_admin_port_envoy_picks_is_not_told() -> None:
    # 0 is Envoy's choice, known only after it started: no address is better than a wrong one.
    bootstrap = parse(build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 1), admin_port=0))
    node = ProxyNode.from_metadata(
        bootstrap.node.id, json_format.MessageToDict(bootstrap.node.metadata)
    )
    assert node.admin_address is None


def test_the_outlier_event_log_is_the_one_the_node_names() -> None:
    node = replace(SIDECAR, outlier_log="/run/pf/reviews-0/outlier-events.log")
    bootstrap = parse(build_bootstrap(node, xds_address=("127.0.0.1", 1), admin_port=19000))
    assert (
        bootstrap.cluster_manager.outlier_detection.event_log_path
        == "/run/pf/reviews-0/outlier-events.log"
    )
    metadata = json_format.MessageToDict(bootstrap.node.metadata)
    assert ProxyNode.from_metadata("x", metadata).outlier_log == node.outlier_log
    without = parse(build_bootstrap(SIDECAR, xds_address=("127.0.0.1", 1), admin_port=19000))
    assert not without.HasField("cluster_manager")
