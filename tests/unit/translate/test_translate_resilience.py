"""DestinationRule resilience -> Envoy clusters, with Istio's mapping and defaults."""

from __future__ import annotations

import pytest
from conftest import BACKEND, http_port, mesh_service, view_of
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from pilotfish.load import load_texts
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resilience import UNLIMITED_THRESHOLD
from pilotfish.model.resources import MeshConfig
from pilotfish.model.services import Endpoint, MeshView, Service
from pilotfish.translate import MeshTranslator
from pilotfish.translate.clusters import build_inbound_cluster, build_outbound_clusters
from pilotfish.translate.naming import inbound_cluster_name
from pilotfish.translate.resilience import (
    CIRCUIT_BREAKER_KEY,
    HTTP_PROTOCOL_OPTIONS_KEY,
    METADATA_NAMESPACE,
    NO_LIMITS,
    NO_OUTLIER_DETECTION,
    OUTLIER_DETECTION_KEY,
)
from pilotfish.translate.telemetry import local_reply_mappers

SERVICES = (mesh_service("backend", http_port(8080), http_port(9090, "HTTP2")),)


def clusters_for(
    rule: str, *services: Service, warnings: int = 0
) -> dict[str, cluster_pb2.Cluster]:
    known = services or SERVICES
    text = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        "metadata: {name: backend}\nspec:\n  host: backend\n" + rule
    )
    loaded = load_texts([("rule.yaml", text)], known_services={s.hostname: s for s in known})
    assert loaded.config is not None, loaded.diagnostics
    assert len(loaded.diagnostics) == warnings, loaded.diagnostics
    assert all(d.severity == "warning" for d in loaded.diagnostics), loaded.diagnostics
    view: MeshView = view_of(loaded.config, *known)
    return {c.name: c for c in build_outbound_clusters(view)}


def http_options(cluster: cluster_pb2.Cluster) -> http_protocol_options_pb2.HttpProtocolOptions:
    options = http_protocol_options_pb2.HttpProtocolOptions()
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY].Unpack(options)
    return options


def limits_named(cluster: cluster_pb2.Cluster) -> str:
    fields = cluster.metadata.filter_metadata[METADATA_NAMESPACE].fields
    return fields[CIRCUIT_BREAKER_KEY].string_value


PLAIN = f"outbound|8080||{BACKEND}"
H2 = f"outbound|9090||{BACKEND}"


def test_without_any_rule_every_threshold_is_istios_unlimited() -> None:
    view = view_of(MeshConfig(), *SERVICES)
    for cluster in build_outbound_clusters(view):
        (thresholds,) = cluster.circuit_breakers.thresholds
        assert thresholds.priority == 0  # DEFAULT: Istio writes no HIGH thresholds
        assert thresholds.max_connections.value == UNLIMITED_THRESHOLD
        assert thresholds.max_pending_requests.value == UNLIMITED_THRESHOLD
        assert thresholds.max_requests.value == UNLIMITED_THRESHOLD
        assert thresholds.max_retries.value == UNLIMITED_THRESHOLD
        assert not thresholds.track_remaining
        assert not thresholds.HasField("retry_budget")
        assert not cluster.HasField("outlier_detection")
        assert limits_named(cluster) == NO_LIMITS


def test_the_inbound_cluster_gets_unlimited_thresholds_too() -> None:
    node = ProxyNode(id="backend-0", service="backend", app_port=9999)
    cluster = build_inbound_cluster(node)
    assert cluster is not None
    (thresholds,) = cluster.circuit_breakers.thresholds
    assert thresholds.max_requests.value == UNLIMITED_THRESHOLD
    assert thresholds.max_retries.value == UNLIMITED_THRESHOLD


def test_connection_pool_limits_become_thresholds_and_the_rest_stay_unlimited() -> None:
    clusters = clusters_for(
        "  trafficPolicy:\n    connectionPool:\n"
        "      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 2, maxRetries: 4}\n"
    )
    (thresholds,) = clusters[PLAIN].circuit_breakers.thresholds
    assert thresholds.max_connections.value == 1
    assert thresholds.max_pending_requests.value == 2
    assert thresholds.max_retries.value == 4
    assert thresholds.max_requests.value == UNLIMITED_THRESHOLD
    assert limits_named(clusters[PLAIN]) == "maxConnections=1, http1MaxPendingRequests=2"


def test_retry_budget_goes_on_the_thresholds_with_istios_defaults() -> None:
    clusters = clusters_for("  trafficPolicy:\n    retryBudget: {minRetryConcurrency: 0}\n")
    (thresholds,) = clusters[PLAIN].circuit_breakers.thresholds
    assert thresholds.retry_budget.budget_percent.value == 20.0
    assert thresholds.retry_budget.min_retry_concurrency.value == 3
    clusters = clusters_for(
        "  trafficPolicy:\n    retryBudget: {percent: 5.5, minRetryConcurrency: 1}\n"
    )
    (thresholds,) = clusters[PLAIN].circuit_breakers.thresholds
    assert thresholds.retry_budget.budget_percent.value == 5.5
    assert thresholds.retry_budget.min_retry_concurrency.value == 1


def test_outlier_detection_is_istios_mapping() -> None:
    clusters = clusters_for(
        "  trafficPolicy:\n    outlierDetection:\n"
        "      consecutive5xxErrors: 3\n      consecutiveGatewayErrors: 0\n"
        "      consecutiveLocalOriginFailures: 2\n      splitExternalLocalOriginErrors: true\n"
        "      interval: 2s\n      baseEjectionTime: 45s\n      maxEjectionPercent: 60\n"
    )
    cluster = clusters[PLAIN]
    detection = cluster.outlier_detection
    assert detection.consecutive_5xx.value == 3
    assert detection.enforcing_consecutive_5xx.value == 100
    # A count of 0 turns the check off: Envoy's default gateway count stays, not enforced.
    assert detection.consecutive_gateway_failure.value == 0
    assert detection.enforcing_consecutive_gateway_failure.value == 0
    assert detection.split_external_local_origin_errors
    assert detection.consecutive_local_origin_failure.value == 2
    assert detection.enforcing_consecutive_local_origin_failure.value == 100
    assert detection.HasField("enforcing_local_origin_success_rate")
    assert detection.enforcing_local_origin_success_rate.value == 0
    assert detection.HasField("enforcing_success_rate")
    assert detection.enforcing_success_rate.value == 0
    assert detection.interval.seconds == 2
    assert detection.base_ejection_time.seconds == 45
    assert detection.max_ejection_percent.value == 60
    # minHealthPercent unset: Istio turns the panic threshold off (0), not Envoy's 50.
    assert cluster.common_lb_config.HasField("healthy_panic_threshold")
    assert cluster.common_lb_config.healthy_panic_threshold.value == 0.0


def test_unset_outlier_fields_keep_envoys_defaults_and_min_health_is_the_panic_threshold() -> None:
    clusters = clusters_for("  trafficPolicy:\n    outlierDetection: {minHealthPercent: 30}\n")
    cluster = clusters[PLAIN]
    detection = cluster.outlier_detection
    for unset in ("consecutive_5xx", "interval", "base_ejection_time", "max_ejection_percent"):
        assert not detection.HasField(unset), unset
    assert not detection.split_external_local_origin_errors
    assert cluster.common_lb_config.healthy_panic_threshold.value == 30.0


def test_port_level_settings_replace_the_rules_own_for_that_port_only() -> None:
    clusters = clusters_for(
        "  trafficPolicy:\n"
        "    connectionPool: {http: {http2MaxRequests: 50}}\n"
        "    outlierDetection: {consecutive5xxErrors: 7}\n"
        "    portLevelSettings:\n"
        "    - port: {number: 9090}\n"
        "      connectionPool: {tcp: {maxConnections: 3}}\n"
        "      loadBalancer: {simple: RANDOM}\n"
    )
    (plain,) = clusters[PLAIN].circuit_breakers.thresholds
    assert plain.max_requests.value == 50
    assert clusters[PLAIN].outlier_detection.consecutive_5xx.value == 7
    (port,) = clusters[H2].circuit_breakers.thresholds
    assert port.max_connections.value == 3
    assert port.max_requests.value == UNLIMITED_THRESHOLD  # port-level does not inherit
    assert not clusters[H2].HasField("outlier_detection")
    assert clusters[H2].lb_policy == cluster_pb2.Cluster.RANDOM
    assert clusters[PLAIN].lb_policy == cluster_pb2.Cluster.LEAST_REQUEST


def test_a_port_level_entry_replaces_the_rules_tls_too_and_drops_its_retry_budget() -> None:
    """Istio's GetPortLevelTrafficPolicy: the entry stands in for the whole policy."""
    clusters = clusters_for(
        "  trafficPolicy:\n"
        "    tls: {mode: SIMPLE, sni: x.example}\n"
        "    retryBudget: {percent: 5}\n"
        "    portLevelSettings:\n"
        "    - port: {number: 9090}\n"
        "      connectionPool: {tcp: {maxConnections: 1}}\n"
    )
    assert clusters[PLAIN].transport_socket.name == "envoy.transport_sockets.tls"
    assert clusters[PLAIN].circuit_breakers.thresholds[0].HasField("retry_budget")
    assert not clusters[H2].HasField("transport_socket")  # auto mTLS, not the rule's SIMPLE
    assert not clusters[H2].circuit_breakers.thresholds[0].HasField("retry_budget")


def test_a_subsets_port_level_entry_replaces_its_tls_and_keeps_the_rules_budget() -> None:
    clusters = clusters_for(
        "  trafficPolicy:\n"
        "    retryBudget: {percent: 5}\n"
        "  subsets:\n  - name: v1\n    labels: {version: v1}\n"
        "    trafficPolicy:\n"
        "      tls: {mode: SIMPLE}\n"
        "      retryBudget: {percent: 9}\n"
        "      portLevelSettings:\n"
        "      - port: {number: 9090}\n"
        "        loadBalancer: {simple: RANDOM}\n"
    )
    plain = clusters[f"outbound|8080|v1|{BACKEND}"]
    port = clusters[f"outbound|9090|v1|{BACKEND}"]
    assert plain.transport_socket.name == "envoy.transport_sockets.tls"
    assert plain.circuit_breakers.thresholds[0].retry_budget.budget_percent.value == 9
    assert not port.HasField("transport_socket")
    assert port.circuit_breakers.thresholds[0].retry_budget.budget_percent.value == 5


def test_subset_pool_overrides_the_rules_for_the_subset_cluster() -> None:
    clusters = clusters_for(
        "  trafficPolicy:\n    connectionPool: {http: {http2MaxRequests: 50}}\n"
        "  subsets:\n  - name: v1\n    labels: {version: v1}\n"
        "    trafficPolicy:\n      connectionPool: {http: {http1MaxPendingRequests: 1}}\n"
    )
    (subset,) = clusters[f"outbound|8080|v1|{BACKEND}"].circuit_breakers.thresholds
    assert subset.max_pending_requests.value == 1
    assert subset.max_requests.value == UNLIMITED_THRESHOLD


def test_tcp_settings_become_connect_timeout_and_keepalive() -> None:
    clusters = clusters_for(
        "  trafficPolicy:\n    connectionPool:\n      tcp:\n        connectTimeout: 250ms\n"
        "        tcpKeepalive: {probes: 4, time: 1500ms, interval: 3s}\n",
        warnings=1,  # 1500ms is not whole seconds
    )
    cluster = clusters[PLAIN]
    assert cluster.connect_timeout.ToMilliseconds() == 250
    keepalive = cluster.upstream_connection_options.tcp_keepalive
    assert keepalive.keepalive_probes.value == 4
    assert keepalive.keepalive_time.value == 2  # whole seconds, rounded up
    assert keepalive.keepalive_interval.value == 3


def test_http_options_merge_into_the_http2_ports_options() -> None:
    clusters = clusters_for(
        "  trafficPolicy:\n    connectionPool:\n"
        "      tcp: {maxConnectionDuration: 1h, idleTimeout: 5m}\n"
        "      http:\n        maxRequestsPerConnection: 10\n        maxConcurrentStreams: 8\n"
        "        http2KeepAlive: {interval: 20s, timeout: 4s}\n"
    )
    options = http_options(clusters[H2])
    assert options.explicit_http_config.HasField("http2_protocol_options")
    http2 = options.explicit_http_config.http2_protocol_options
    assert http2.max_concurrent_streams.value == 8
    assert http2.connection_keepalive.interval.seconds == 20
    assert http2.connection_keepalive.timeout.seconds == 4
    common = options.common_http_protocol_options
    assert common.max_connection_duration.seconds == 3600
    assert common.idle_timeout.seconds == 300  # tcp's idleTimeout when http sets none
    assert common.max_requests_per_connection.value == 10
    # The HTTP/1.1 port gets the common options, and stays HTTP/1.1.
    plain = http_options(clusters[PLAIN])
    assert plain.explicit_http_config.HasField("http_protocol_options")
    assert plain.common_http_protocol_options.max_requests_per_connection.value == 10


def test_http_idle_timeout_wins_over_tcps() -> None:
    clusters = clusters_for(
        "  trafficPolicy:\n    connectionPool:\n"
        "      tcp: {idleTimeout: 5m}\n      http: {idleTimeout: 30s}\n"
    )
    assert http_options(clusters[PLAIN]).common_http_protocol_options.idle_timeout.seconds == 30


def test_limits_alone_add_no_protocol_options() -> None:
    clusters = clusters_for("  trafficPolicy:\n    connectionPool: {tcp: {maxConnections: 1}}\n")
    assert HTTP_PROTOCOL_OPTIONS_KEY not in clusters[PLAIN].typed_extension_protocol_options


@pytest.mark.parametrize(
    ("http", "expected"),
    [
        ("{h2UpgradePolicy: UPGRADE}", "explicit_http2"),
        ("{h2UpgradePolicy: DO_NOT_UPGRADE}", "none"),
        ("{h2UpgradePolicy: DEFAULT}", "none"),
        ("{useClientProtocol: true}", "downstream"),
    ],
)
def test_protocol_choice_of_an_http1_port(http: str, expected: str) -> None:
    clusters = clusters_for(f"  trafficPolicy:\n    connectionPool:\n      http: {http}\n")
    cluster = clusters[PLAIN]
    if expected == "none":
        assert HTTP_PROTOCOL_OPTIONS_KEY not in cluster.typed_extension_protocol_options
        return
    options = http_options(cluster)
    if expected == "explicit_http2":
        assert options.explicit_http_config.HasField("http2_protocol_options")
    else:
        assert options.HasField("use_downstream_protocol_config")
        config = options.use_downstream_protocol_config
        assert config.HasField("http_protocol_options")
        assert config.HasField("http2_protocol_options")


def test_the_uo_reply_names_the_clusters_limits() -> None:
    (uo,) = [
        m
        for m in local_reply_mappers("web-0")
        if list(m.filter.response_flag_filter.flags) == ["UO"]
    ]
    body = uo.body_format_override.text_format_source.inline_string
    assert "circuit breaker of %UPSTREAM_CLUSTER% is full (" in body
    assert "%CLUSTER_METADATA(pilotfish:circuit_breaker)%" in body


def test_http_error_codes_become_the_http_options_error_matcher() -> None:
    clusters = clusters_for(
        "  trafficPolicy:\n"
        "    outlierDetection: {consecutive5xxErrors: 1, outlierDetectionHttpErrorCodes: [404]}\n"
        "    portLevelSettings:\n"
        "    - port: {number: 9090}\n"
        "      outlierDetection: {outlierDetectionHttpErrorCodes: [404, 429]}\n"
    )
    single = http_options(clusters[PLAIN]).outlier_detection.error_matcher
    (header,) = single.http_response_headers_match.headers
    assert (header.name, header.string_match.exact) == (":status", "404")
    assert http_options(clusters[PLAIN]).explicit_http_config.HasField("http_protocol_options")
    h2 = http_options(clusters[H2])
    assert h2.explicit_http_config.HasField("http2_protocol_options")  # the port's protocol kept
    statuses = [
        rule.http_response_headers_match.headers[0].string_match.exact
        for rule in h2.outlier_detection.error_matcher.or_match.rules
    ]
    assert statuses == ["404", "429"]
    assert "outlierDetectionHttpErrorCodes=404,429" in outlier_named(clusters[H2])


def test_the_uh_reply_names_the_clusters_outlier_detection() -> None:
    (uh,) = [
        m
        for m in local_reply_mappers("web-0")
        if list(m.filter.response_flag_filter.flags) == ["UH"]
    ]
    body = uh.body_format_override.text_format_source.inline_string
    assert "no healthy upstream (%CLUSTER_METADATA(pilotfish:outlier_detection)%)" in body


def outlier_named(cluster: cluster_pb2.Cluster) -> str:
    fields = cluster.metadata.filter_metadata[METADATA_NAMESPACE].fields
    return fields[OUTLIER_DETECTION_KEY].string_value


def test_outlier_settings_go_into_the_clusters_metadata_by_their_istio_names() -> None:
    clusters = clusters_for(
        "  trafficPolicy:\n"
        "    outlierDetection: {consecutive5xxErrors: 2, interval: 500ms, baseEjectionTime: 30s}\n"
        "    portLevelSettings:\n"
        "    - port: {number: 9090}\n"
        "      outlierDetection: {}\n"
        "  subsets:\n  - name: v1\n    labels: {version: v1}\n"
        "    trafficPolicy:\n"
        "      connectionPool: {tcp: {maxConnections: 1}}\n"
        "      portLevelSettings:\n"
        "      - port: {number: 8080}\n"
        "        connectionPool: {tcp: {maxConnections: 1}}\n"
    )
    assert outlier_named(clusters[PLAIN]) == (
        "outlier detection: consecutive5xxErrors=2, interval=500ms, baseEjectionTime=30s; "
        "see `pilotfish endpoints`"
    )
    assert outlier_named(clusters[H2]) == (
        "outlier detection: Envoy defaults; see `pilotfish endpoints`"
    )
    assert outlier_named(clusters[f"outbound|8080|v1|{BACKEND}"]) == NO_OUTLIER_DETECTION


def mesh_tls_alpn(cluster: cluster_pb2.Cluster) -> list[str]:
    match = next(m for m in cluster.transport_socket_matches if m.name == "tlsMode-istio")
    context = tls_pb2.UpstreamTlsContext()
    match.transport_socket.typed_config.Unpack(context)
    return list(context.common_tls_context.alpn_protocols)


@pytest.mark.parametrize(
    ("http", "alpn"),
    [
        ("{maxRetries: 1}", ["http/1.1"]),
        ("{h2UpgradePolicy: UPGRADE}", ["h2"]),
        ("{useClientProtocol: true}", []),
    ],
)
def test_mesh_tls_offers_the_protocol_the_cluster_speaks(http: str, alpn: list[str]) -> None:
    rule = f"  trafficPolicy:\n    connectionPool:\n      http: {http}\n"
    text = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        "metadata: {name: backend}\nspec:\n  host: backend\n" + rule
    )
    loaded = load_texts([("rule.yaml", text)], known_services={s.hostname: s for s in SERVICES})
    assert loaded.config is not None
    served = Endpoint(address="127.0.0.1", ports={8080: 18080}, service_account="backend")
    view = view_of(loaded.config, *SERVICES, backend=(served,))
    clusters = {c.name: c for c in build_outbound_clusters(view)}
    assert mesh_tls_alpn(clusters[PLAIN]) == alpn


def test_the_servers_inbound_cluster_gets_the_rules_pool_but_no_upgrade_or_subsets() -> None:
    text = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        "metadata: {name: backend}\nspec:\n  host: backend\n"
        "  trafficPolicy:\n"
        "    connectionPool: {http: {http2MaxRequests: 7, h2UpgradePolicy: UPGRADE}}\n"
        "    outlierDetection: {consecutive5xxErrors: 1}\n"
        "  subsets:\n  - name: v1\n    labels: {version: v1}\n"
        "    trafficPolicy: {connectionPool: {http: {http2MaxRequests: 1}}}\n"
    )
    loaded = load_texts([("rule.yaml", text)], known_services={s.hostname: s for s in SERVICES})
    assert loaded.config is not None
    view = view_of(loaded.config, *SERVICES)
    node = ProxyNode(id="backend-0", service="backend", app_port=8080, inbound_port=15006)
    resources = MeshTranslator(view).resources_for(node)
    (inbound,) = [c for c in resources.clusters if c.name == inbound_cluster_name(8080)]
    (thresholds,) = inbound.circuit_breakers.thresholds
    assert thresholds.max_requests.value == 7
    assert limits_named(inbound) == "http2MaxRequests=7"
    assert HTTP_PROTOCOL_OPTIONS_KEY not in inbound.typed_extension_protocol_options
    assert not inbound.HasField("outlier_detection")
