"""Telemetry on every HTTP connection manager: access logs, the peer header, tracing, and
bodies that explain the replies a proxy makes itself."""

from __future__ import annotations

from dataclasses import replace

import pytest
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.trace.v3 import zipkin_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.header_to_metadata.v3 import header_to_metadata_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import MeshSettings
from pilotfish.model.services import MeshView
from pilotfish.model.telemetry import RESPONSE_FLAG_WORDS, TelemetrySettings
from pilotfish.snapshot import SnapshotCache, type_urls
from pilotfish.translate import GENERATORS, MeshTranslator, TranslationContext
from pilotfish.translate.telemetry import ISTIO_TEXT_FORMAT, LOCAL_REPLY_FLAGS


def with_telemetry(view: MeshView, **settings: object) -> MeshView:
    mesh = replace(view.config.mesh, telemetry=TelemetrySettings(**settings))  # type: ignore[arg-type]
    return replace(view, config=replace(view.config, mesh=mesh))


def managers(view: MeshView, node: ProxyNode) -> dict[str, list[hcm_pb2.HttpConnectionManager]]:
    """Every HTTP connection manager of the node's listeners, by listener name."""
    found: dict[str, list[hcm_pb2.HttpConnectionManager]] = {}
    for listener in MeshTranslator(view).resources_for(node).listeners:
        for chain in listener.filter_chains:
            manager = hcm_pb2.HttpConnectionManager()
            chain.filters[0].typed_config.Unpack(manager)
            found.setdefault(listener.name, []).append(manager)
    return found


def listeners(view: MeshView, node: ProxyNode) -> dict[str, listener_pb2.Listener]:
    return {item.name: item for item in MeshTranslator(view).resources_for(node).listeners}


@pytest.fixture
def every_manager(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode, gateway_view: MeshView
) -> list[tuple[str, hcm_pb2.HttpConnectionManager]]:
    gateway = ProxyNode(id="ingress-0", kind="gateway", labels={"istio": "ingressgateway"})
    found = [
        (name, manager)
        for name, items in managers(quickstart_view, frontend_sidecar).items()
        for manager in items
    ]
    found += [
        (name, manager)
        for name, items in managers(gateway_view, gateway).items()
        for manager in items
    ]
    assert {name for name, _ in found} == {
        "outbound",
        "outbound_tunnel",
        "inbound",
        "gateway_8000",
        "gateway_8001",
    }
    return found


def test_every_manager_streams_its_log_to_the_control_plane_as_its_reporter(
    every_manager: list[tuple[str, hcm_pb2.HttpConnectionManager]],
) -> None:
    for name, manager in every_manager:
        (log,) = manager.access_log
        assert log.name == "envoy.access_loggers.http_grpc"
        config = als_pb2.HttpGrpcAccessLogConfig()
        assert log.typed_config.Unpack(config)
        common = config.common_config
        expected = {
            "outbound": "pilotfish.outbound",
            "outbound_tunnel": "pilotfish.outbound",
            "inbound": "pilotfish.inbound",
        }
        assert common.log_name == expected.get(name, "pilotfish.gateway")
        assert common.grpc_service.envoy_grpc.cluster_name == "xds-grpc"
        assert common.transport_api_version == config_source_pb2.V3
        assert common.buffer_flush_interval.ToTimedelta().total_seconds() == 1.0
        assert common.buffer_size_bytes.value == 256 * 1024
        assert list(config.additional_request_headers_to_log) == [
            "traceparent",
            "x-b3-traceid",
            "content-type",
        ]
        assert list(config.additional_response_trailers_to_log) == ["grpc-status"]


def file_log(manager: hcm_pb2.HttpConnectionManager) -> file_pb2.FileAccessLog:
    (log,) = [item for item in manager.access_log if item.name == "envoy.access_loggers.file"]
    config = file_pb2.FileAccessLog()
    assert log.typed_config.Unpack(config)
    return config


def test_an_access_log_file_gets_istios_text_format_with_the_failure_fields(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    assert all(
        len(m.access_log) == 1
        for ms in managers(quickstart_view, frontend_sidecar).values()
        for m in ms
    )
    view = with_telemetry(quickstart_view, access_log_file="/dev/stdout")
    for items in managers(view, frontend_sidecar).values():
        for manager in items:
            config = file_log(manager)
            assert config.path == "/dev/stdout"
            text = config.log_format.text_format_source.inline_string
            assert text == ISTIO_TEXT_FORMAT
            for operator in (
                "%RESPONSE_FLAGS%",
                "%RESPONSE_CODE_DETAILS%",
                "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
            ):
                assert operator in text
            assert text.endswith("\n")


def test_a_users_format_gets_its_newline_and_json_gets_istios_keys(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    view = with_telemetry(
        quickstart_view, access_log_file="/tmp/a.log", access_log_format="%RESPONSE_CODE%"
    )
    (outbound,) = managers(view, frontend_sidecar)["outbound"]
    assert file_log(outbound).log_format.text_format_source.inline_string == "%RESPONSE_CODE%\n"

    view = with_telemetry(quickstart_view, access_log_file="/tmp/a.log", access_log_encoding="JSON")
    (outbound,) = managers(view, frontend_sidecar)["outbound"]
    keys = json_format.MessageToDict(file_log(outbound).log_format.json_format)
    assert keys["response_flags"] == "%RESPONSE_FLAGS%"
    assert keys["response_code_details"] == "%RESPONSE_CODE_DETAILS%"
    assert keys["upstream_transport_failure_reason"] == "%UPSTREAM_TRANSPORT_FAILURE_REASON%"
    assert keys["upstream_cluster"] == "%UPSTREAM_CLUSTER_RAW%"
    assert len(keys) == 24


def test_outbound_and_gateway_set_the_peer_header_first_and_inbound_moves_it_away(
    every_manager: list[tuple[str, hcm_pb2.HttpConnectionManager]],
) -> None:
    for name, manager in every_manager:
        first = manager.http_filters[0]
        if name == "inbound":
            assert first.name == "envoy.filters.http.header_to_metadata"
            config = header_to_metadata_pb2.Config()
            assert first.typed_config.Unpack(config)
            (rule,) = config.request_rules
            assert rule.header == "x-pilotfish-peer"
            assert rule.remove
            pair = rule.on_header_present
            assert (pair.metadata_namespace, pair.key) == ("pilotfish.peer", "id")
            continue
        assert first.name == "envoy.filters.http.header_mutation"
        mutation = header_mutation_pb2.HeaderMutation()
        assert first.typed_config.Unpack(mutation)
        (request,) = mutation.mutations.request_mutations
        assert request.append.header.key == "x-pilotfish-peer"
        outbound = name in ("outbound", "outbound_tunnel")
        assert request.append.header.value == ("frontend-0" if outbound else "ingress-0")
        # Replaces whatever the app sent.
        assert request.append.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def test_tracing_only_when_the_node_can_reach_the_telemetry_cluster(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    for items in managers(quickstart_view, frontend_sidecar).values():
        assert not any(m.HasField("tracing") for m in items)
    node = replace(frontend_sidecar, telemetry=True)
    view = with_telemetry(quickstart_view, tracing_sampling=12.5, tags={"team": "shop"})
    for items in managers(view, node).values():
        for manager in items:
            tracing = manager.tracing
            assert tracing.random_sampling.value == 12.5
            assert tracing.provider.name == "envoy.tracers.zipkin"
            zipkin = zipkin_pb2.ZipkinConfig()
            assert tracing.provider.typed_config.Unpack(zipkin)
            assert zipkin.collector_cluster == "pilotfish-telemetry"
            assert zipkin.collector_endpoint == "/api/v2/spans"
            assert zipkin.collector_endpoint_version == zipkin_pb2.ZipkinConfig.HTTP_PROTO
            assert zipkin.trace_id_128bit
            assert (
                zipkin.trace_context_option == zipkin_pb2.ZipkinConfig.USE_B3_WITH_W3C_PROPAGATION
            )
            (tag,) = tracing.custom_tags
            assert (tag.tag, tag.literal.value) == ("team", "shop")


def test_tracing_and_request_records_can_each_be_switched_off(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    node = replace(frontend_sidecar, telemetry=True)
    untraced = with_telemetry(quickstart_view, enable_tracing=False, access_log_file="/dev/stdout")
    for items in managers(untraced, node).values():
        for manager in items:
            assert not manager.HasField("tracing")
            assert [log.name for log in manager.access_log] == [
                "envoy.access_loggers.http_grpc",
                "envoy.access_loggers.file",
            ]
    unrecorded = with_telemetry(quickstart_view, request_telemetry=False)
    for items in managers(unrecorded, node).values():
        for manager in items:
            assert manager.HasField("tracing")
            assert list(manager.access_log) == []


def test_listeners_say_their_direction_so_spans_are_client_or_server_ones(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode, gateway_view: MeshView
) -> None:
    sidecar = listeners(quickstart_view, frontend_sidecar)
    assert sidecar["outbound"].traffic_direction == base_pb2.OUTBOUND
    assert sidecar["inbound"].traffic_direction == base_pb2.INBOUND
    gateway = ProxyNode(id="ingress-0", kind="gateway", labels={"istio": "ingressgateway"})
    for listener in listeners(gateway_view, gateway).values():
        assert listener.traffic_direction == base_pb2.OUTBOUND


def bodies(manager: hcm_pb2.HttpConnectionManager) -> list[str]:
    return [
        m.body_format_override.text_format_source.inline_string
        for m in manager.local_reply_config.mappers
    ]


def test_every_reply_the_proxy_makes_itself_names_the_proxy_the_cause_and_the_cluster(
    every_manager: list[tuple[str, hcm_pb2.HttpConnectionManager]],
) -> None:
    for name, manager in every_manager:
        proxy = "ingress-0" if name.startswith("gateway") else "frontend-0"
        mappers = list(manager.local_reply_config.mappers)
        texts = bodies(manager)
        if name == "outbound":
            # Then the refused CONNECT's (test_translate_connect).
            mappers, texts = mappers[:-1], texts[:-1]
        flags = [list(m.filter.response_flag_filter.flags) for m in mappers]
        assert flags == [[flag] for flag in LOCAL_REPLY_FLAGS] + [[]]
        for mapper, text in zip(mappers, texts, strict=True):
            assert text.startswith(f"pilotfish: {proxy} answered %RESPONSE_CODE%: ")
            assert "cluster %UPSTREAM_CLUSTER%, route %ROUTE_NAME%" in text
            assert "details %RESPONSE_CODE_DETAILS%" in text
            assert "%UPSTREAM_TRANSPORT_FAILURE_REASON% [%RESPONSE_FLAGS%]\n" in text
            assert not mapper.HasField("status_code")  # Envoy's own code stays
            (header,) = mapper.headers_to_add
            assert (header.header.key, header.header.value) == ("x-pilotfish-proxy", proxy)
        uf = bodies(manager)[LOCAL_REPLY_FLAGS.index("UF")]
        assert RESPONSE_FLAG_WORDS["UF"] in uf


def test_the_policies_refusals_keep_their_bodies_first_and_get_the_proxy_header(
    authorization_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    inbound = managers(authorization_view, frontend_sidecar)["inbound"][0]
    texts = bodies(inbound)
    first_ours = next(i for i, text in enumerate(texts) if text.startswith("pilotfish:"))
    assert first_ours > 0
    assert texts[0].startswith("JWT rejected by frontend-0")
    assert all(not text.startswith("pilotfish:") for text in texts[:first_ours])
    for mapper in inbound.local_reply_config.mappers:
        assert [h.header.key for h in mapper.headers_to_add] == ["x-pilotfish-proxy"]


def test_a_change_of_telemetry_settings_reaches_the_outbound_listener(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    cache = SnapshotCache(GENERATORS, TranslationContext)
    cache.publish(quickstart_view)
    before = cache.snapshot_for(frontend_sidecar)
    view = with_telemetry(quickstart_view, access_log_file="/dev/stdout")
    cache.publish(view)
    after = cache.snapshot_for(frontend_sidecar)
    assert before is not None and after is not None
    assert "outbound" in after.changed_names(before, type_urls.LISTENER)


def test_the_defaults_are_a_mesh_settings_default() -> None:
    assert MeshSettings().telemetry == TelemetrySettings()


def test_a_percent_sign_in_a_node_id_stays_itself_in_headers_and_bodies(
    quickstart_view: MeshView, frontend_sidecar: ProxyNode
) -> None:
    node = replace(frontend_sidecar, id="web%0")
    (outbound,) = managers(quickstart_view, node)["outbound"]
    mutation = header_mutation_pb2.HeaderMutation()
    assert outbound.http_filters[0].typed_config.Unpack(mutation)
    # Envoy reads these values as format strings, where "%%" is one "%".
    assert mutation.mutations.request_mutations[0].append.header.value == "web%%0"
    mapper = outbound.local_reply_config.mappers[0]
    assert mapper.headers_to_add[0].header.value == "web%%0"
    assert bodies(outbound)[0].startswith("pilotfish: web%%0 answered %RESPONSE_CODE%")
