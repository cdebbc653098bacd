"""DestinationRule resilience fields: connection pools, outlier detection, retry budget and
their port-level settings, read into the model with file:line errors for bad values."""

from __future__ import annotations

import pytest
from load_cases import BOOKINFO_REGISTRY, assert_at, find, load

from pilotfish.load import LoadResult
from pilotfish.model.resilience import (
    ConnectionPool,
    Http2KeepAlive,
    HttpPoolSettings,
    OutlierDetection,
    RetryBudget,
    TcpKeepalive,
    TcpPoolSettings,
)
from pilotfish.model.resources import TrafficPolicy

RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    POLICY
  subsets:
  - name: v1
    labels: {version: v1}
"""


def load_policy(policy: str) -> tuple[str, LoadResult]:
    return load(RULE.replace("POLICY", policy), *BOOKINFO_REGISTRY)


def policy_of(result: LoadResult) -> TrafficPolicy:
    assert result.config is not None, result.diagnostics
    policy = result.config.destination_rules[0].traffic_policy
    assert policy is not None
    return policy


def test_every_connection_pool_field_is_carried() -> None:
    _text, result = load_policy(
        """connectionPool:
      tcp:
        maxConnections: 7
        connectTimeout: 250ms
        tcpKeepalive: {probes: 3, time: 10s, interval: 2s}
        maxConnectionDuration: 1h
        idleTimeout: 0s
      http:
        http1MaxPendingRequests: 2
        http2MaxRequests: 30
        maxRequestsPerConnection: 5
        maxRetries: 4
        idleTimeout: 90s
        maxConcurrentStreams: 64
        h2UpgradePolicy: UPGRADE
        http2KeepAlive: {interval: 20s, timeout: 5s}"""
    )
    assert result.diagnostics == ()
    assert policy_of(result).connection_pool == ConnectionPool(
        tcp=TcpPoolSettings(
            max_connections=7,
            connect_timeout=0.25,
            tcp_keepalive=TcpKeepalive(probes=3, time=10.0, interval=2.0),
            max_connection_duration=3600.0,
            idle_timeout=0.0,
        ),
        http=HttpPoolSettings(
            http1_max_pending_requests=2,
            http2_max_requests=30,
            max_requests_per_connection=5,
            max_retries=4,
            idle_timeout=90.0,
            max_concurrent_streams=64,
            h2_upgrade_policy="UPGRADE",
            http2_keep_alive=Http2KeepAlive(interval=20.0, timeout=5.0),
        ),
    )


def test_every_outlier_detection_field_is_carried() -> None:
    _text, result = load_policy(
        """outlierDetection:
      consecutive5xxErrors: 3
      consecutiveGatewayErrors: 2
      consecutiveLocalOriginFailures: 4
      splitExternalLocalOriginErrors: true
      interval: 1s
      baseEjectionTime: 2s
      maxEjectionPercent: 50
      minHealthPercent: 20"""
    )
    assert result.diagnostics == ()
    assert policy_of(result).outlier_detection == OutlierDetection(
        consecutive_5xx_errors=3,
        consecutive_gateway_errors=2,
        consecutive_local_origin_failures=4,
        split_external_local_origin_errors=True,
        interval=1.0,
        base_ejection_time=2.0,
        max_ejection_percent=50,
        min_health_percent=20,
    )


def test_zero_consecutive_5xx_errors_is_kept_as_zero_because_it_turns_the_check_off() -> None:
    _text, result = load_policy("outlierDetection: {consecutive5xxErrors: 0}")
    detection = policy_of(result).outlier_detection
    assert detection is not None and detection.consecutive_5xx_errors == 0


def test_retry_budget_is_carried() -> None:
    _text, result = load_policy("retryBudget: {percent: 12.5, minRetryConcurrency: 2}")
    assert result.diagnostics == ()
    assert policy_of(result).retry_budget == RetryBudget(percent=12.5, min_retry_concurrency=2)


def test_port_level_settings_carry_pool_outlier_and_balancer_per_port() -> None:
    _text, result = load_policy(
        """portLevelSettings:
    - port: {number: 9080}
      connectionPool: {tcp: {maxConnections: 1}}
      outlierDetection: {consecutive5xxErrors: 1}
      loadBalancer: {simple: RANDOM}
    - port: {number: 9443}
      tls: {mode: SIMPLE}"""
    )
    # Reviews serves 9080 only: the 9443 entry is kept (and warned about as applying nowhere).
    assert [d.field for d in result.diagnostics] == ["spec.trafficPolicy.portLevelSettings[1].port"]
    policy = policy_of(result)
    assert set(policy.port_settings) == {9080, 9443}
    port = policy.port_settings[9080]
    assert port.connection_pool == ConnectionPool(tcp=TcpPoolSettings(max_connections=1))
    assert port.outlier_detection == OutlierDetection(consecutive_5xx_errors=1)
    assert port.load_balancer is not None and port.load_balancer.simple == "RANDOM"
    assert port.tls is None
    tls = policy.port_settings[9443].tls
    assert tls is not None and tls.mode == "SIMPLE"


def test_subset_policy_carries_its_own_resilience_settings() -> None:
    text = RULE.replace("    POLICY\n", "    retryBudget: {percent: 10}\n") + (
        "    trafficPolicy: {connectionPool: {http: {http2MaxRequests: 9}}}\n"
    )
    _text, result = load(text, *BOOKINFO_REGISTRY)
    assert result.config is not None, result.diagnostics
    subset_policy = result.config.destination_rules[0].subsets[0].traffic_policy
    assert subset_policy is not None and subset_policy.connection_pool is not None
    assert subset_policy.connection_pool.http == HttpPoolSettings(http2_max_requests=9)


@pytest.mark.parametrize(
    ("policy", "field", "needle", "message"),
    [
        (
            "connectionPool: {tcp: {maxConnections: -1}}",
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
            "maxConnections",
            "out of range",
        ),
        (
            "connectionPool: {tcp: {maxConnections: 1.5}}",
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
            "maxConnections",
            "expected an integer",
        ),
        (
            "connectionPool: {tcp: {connectTimeout: 10}}",
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
            "connectTimeout",
            "expected a string",
        ),
        (
            "connectionPool: {tcp: {connectTimeout: 0s}}",
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
            "connectTimeout",
            "greater than zero",
        ),
        (
            "connectionPool: {tcp: {maxConnectionDuration: 5x}}",
            "spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration",
            "maxConnectionDuration",
            "",
        ),
        (
            "connectionPool: {tcp: {idleTimeout: soon}}",
            "spec.trafficPolicy.connectionPool.tcp.idleTimeout",
            "idleTimeout",
            "",
        ),
        (
            "connectionPool: {tcp: {tcpKeepalive: {probes: -2}}}",
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.probes",
            "probes",
            "out of range",
        ),
        (
            "connectionPool: {tcp: {tcpKeepalive: {time: 0s}}}",
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time",
            "time",
            "greater than zero",
        ),
        (
            "connectionPool: {tcp: {tcpKeepalive: {interval: 1y}}}",
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.interval",
            "interval",
            "",
        ),
        (
            "connectionPool: {tcp: {tcpKeepalive: {count: 1}}}",
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.count",
            "count",
            "unknown field",
        ),
        (
            "connectionPool: {http: {http1MaxPendingRequests: -1}}",
            "spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests",
            "http1MaxPendingRequests",
            "out of range",
        ),
        (
            "connectionPool: {http: {http2MaxRequests: 2147483648}}",
            "spec.trafficPolicy.connectionPool.http.http2MaxRequests",
            "http2MaxRequests",
            "out of range",
        ),
        (
            "connectionPool: {http: {maxRequestsPerConnection: x}}",
            "spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection",
            "maxRequestsPerConnection",
            "expected an integer",
        ),
        (
            "connectionPool: {http: {maxRetries: -3}}",
            "spec.trafficPolicy.connectionPool.http.maxRetries",
            "maxRetries",
            "out of range",
        ),
        (
            "connectionPool: {http: {maxConcurrentStreams: -1}}",
            "spec.trafficPolicy.connectionPool.http.maxConcurrentStreams",
            "maxConcurrentStreams",
            "out of range",
        ),
        (
            "connectionPool: {http: {idleTimeout: 0s}}",
            "spec.trafficPolicy.connectionPool.http.idleTimeout",
            "idleTimeout",
            "greater than zero",
        ),
        (
            "connectionPool: {http: {h2UpgradePolicy: ALWAYS}}",
            "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy",
            "h2UpgradePolicy",
            "must be one of DEFAULT, DO_NOT_UPGRADE, UPGRADE",
        ),
        (
            "connectionPool: {http: {useClientProtocol: yes please}}",
            "spec.trafficPolicy.connectionPool.http.useClientProtocol",
            "useClientProtocol",
            "expected true or false",
        ),
        (
            "connectionPool: {http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}}",
            "spec.trafficPolicy.connectionPool.http.useClientProtocol",
            "useClientProtocol",
            "must not be true when h2UpgradePolicy is UPGRADE",
        ),
        (
            "connectionPool: {http: {http2KeepAlive: {timeout: 1s}}}",
            "spec.trafficPolicy.connectionPool.http.http2KeepAlive.interval",
            "http2KeepAlive",
            "required",
        ),
        (
            "connectionPool: {http: {http2KeepAlive: {interval: 1s}}}",
            "spec.trafficPolicy.connectionPool.http.http2KeepAlive.timeout",
            "http2KeepAlive",
            "required",
        ),
        (
            "connectionPool: {http: {maxRequests: 1}}",
            "spec.trafficPolicy.connectionPool.http.maxRequests",
            "maxRequests",
            "unknown field",
        ),
        (
            "connectionPool: {udp: {}}",
            "spec.trafficPolicy.connectionPool.udp",
            "udp",
            "unknown field",
        ),
        (
            "outlierDetection: {consecutive5xxErrors: -1}",
            "spec.trafficPolicy.outlierDetection.consecutive5xxErrors",
            "consecutive5xxErrors",
            "out of range",
        ),
        (
            "outlierDetection: {consecutiveGatewayErrors: 4294967296}",
            "spec.trafficPolicy.outlierDetection.consecutiveGatewayErrors",
            "consecutiveGatewayErrors",
            "out of range",
        ),
        (
            "outlierDetection: {consecutiveLocalOriginFailures: 2}",
            "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
            "consecutiveLocalOriginFailures",
            "needs splitExternalLocalOriginErrors: true",
        ),
        (
            "outlierDetection: {splitExternalLocalOriginErrors: 1}",
            "spec.trafficPolicy.outlierDetection.splitExternalLocalOriginErrors",
            "splitExternalLocalOriginErrors",
            "expected true or false",
        ),
        (
            "outlierDetection: {baseEjectionTime: 0s}",
            "spec.trafficPolicy.outlierDetection.baseEjectionTime",
            "baseEjectionTime",
            "greater than zero",
        ),
        (
            "outlierDetection: {interval: 500us}",
            "spec.trafficPolicy.outlierDetection.interval",
            "interval",
            "shorter than 1ms",
        ),
        (
            "outlierDetection: {maxEjectionPercent: 101}",
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "maxEjectionPercent",
            "0..100",
        ),
        (
            "outlierDetection: {minHealthPercent: -5}",
            "spec.trafficPolicy.outlierDetection.minHealthPercent",
            "minHealthPercent",
            "0..100",
        ),
        (
            "outlierDetection: {outlierDetectionHttpErrorCodes: [500, 700]}",
            "spec.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes[1]",
            "700",
            "expected an HTTP status code",
        ),
        (
            "retryBudget: {percent: 101}",
            "spec.trafficPolicy.retryBudget.percent",
            "percent",
            "0..100",
        ),
        (
            "retryBudget: {percent: {value: 10}}",
            "spec.trafficPolicy.retryBudget.percent",
            "percent",
            "as a number",
        ),
        (
            "retryBudget: {percent: ten}",
            "spec.trafficPolicy.retryBudget.percent",
            "percent",
            "expected a number",
        ),
        (
            "retryBudget: {minRetryConcurrency: -1}",
            "spec.trafficPolicy.retryBudget.minRetryConcurrency",
            "minRetryConcurrency",
            "out of range",
        ),
        (
            "retryBudget: {minRetryConcurency: 1}",
            "spec.trafficPolicy.retryBudget.minRetryConcurency",
            "minRetryConcurency",
            'did you mean "minRetryConcurrency"',
        ),
        (
            "retryBudget: [20]",
            "spec.trafficPolicy.retryBudget",
            "retryBudget",
            "expected a mapping",
        ),
        (
            "portLevelSettings: [{port: {number: 9080}}]",
            "spec.trafficPolicy.portLevelSettings[0]",
            "{port",
            "at least one of tls, loadBalancer, connectionPool, outlierDetection",
        ),
        (
            "portLevelSettings: [{port: {number: 9080}, retryBudget: {percent: 5}}]",
            "spec.trafficPolicy.portLevelSettings[0].retryBudget",
            "retryBudget",
            "unknown field",
        ),
        (
            "portLevelSettings: [{port: {number: 9080}, connectionPool: {http: {maxRetries: -1}}}]",
            "spec.trafficPolicy.portLevelSettings[0].connectionPool.http.maxRetries",
            "maxRetries",
            "out of range",
        ),
        (
            "portLevelSettings: [{port: {number: 9080}, outlierDetection: {interval: 0s}}]",
            "spec.trafficPolicy.portLevelSettings[0].outlierDetection.interval",
            "interval",
            "greater than zero",
        ),
        (
            "portLevelSettings: [{port: {number: 9080}, loadBalancer: {simple: FASTEST}}]",
            "spec.trafficPolicy.portLevelSettings[0].loadBalancer.simple",
            "simple",
            "must be one of",
        ),
        (
            "portLevelSettings: [{port: {number: 9080}, connectionPool: {}}]",
            "spec.trafficPolicy.portLevelSettings[0].connectionPool",
            "connectionPool",
            "tcp or http",
        ),
        (
            "portLevelSettings: [{port: {number: 9080}, connectionPool: {tcp: {maxConnections: 1}}"
            "}, {port: {number: 9080}, outlierDetection: {interval: 1s}}]",
            "spec.trafficPolicy.portLevelSettings[1].port",
            "port: {number: 9080}, outlier",
            "port 9080 already has settings",
        ),
    ],
)
def test_every_resilience_field_is_checked_at_its_line(
    policy: str, field: str, needle: str, message: str
) -> None:
    text, result = load_policy(policy)
    assert_at(result, text, field, needle, message)


@pytest.mark.parametrize(
    ("policy", "field", "needle", "consequence"),
    [
        (
            "outlierDetection: {consecutiveErrors: 3}",
            "spec.trafficPolicy.outlierDetection.consecutiveErrors",
            "consecutiveErrors",
            "deprecated and ignored, as Istio does",
        ),
        (
            "retryBudget: {percent: 20, budgetInterval: 10s}",
            "spec.trafficPolicy.retryBudget.budgetInterval",
            "budgetInterval",
            "budgeted against the requests active at that moment only",
        ),
        (
            "connectionPool: {http: {maxRetries: 0}}",
            "spec.trafficPolicy.connectionPool.http.maxRetries",
            "maxRetries",
            "stays at Istio's default (unlimited)",
        ),
        (
            "connectionPool: {tcp: {maxConnections: 0}}",
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
            "maxConnections",
            "stays at Istio's default (unlimited)",
        ),
        (
            "connectionPool: {http: {maxRequestsPerConnection: 0}}",
            "spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection",
            "maxRequestsPerConnection",
            "Envoy's default applies",
        ),
    ],
)
def test_what_istio_does_that_we_do_not_carry_warns_what_will_not_happen(
    policy: str, field: str, needle: str, consequence: str
) -> None:
    text, result = load_policy(policy)
    warning = assert_at(result, text, field, needle, consequence, severity="warning")
    assert warning.severity == "warning"
    assert result.config is not None


@pytest.mark.parametrize(
    ("policy", "field", "needle", "message"),
    [
        (
            "portLevelSettings: [{port: {number: 9999}, loadBalancer: {simple: RANDOM}}]",
            "spec.trafficPolicy.portLevelSettings[0].port",
            "port: {",
            'host "reviews" has no port 9999 (its ports: 9080): these settings apply nowhere',
        ),
        (
            "connectionPool: {tcp: {tcpKeepalive: {time: 500ms}}}",
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time",
            "time",
            "Envoy counts keepalive times in whole seconds: 1s is used (Istio would use 0s)",
        ),
        (
            "connectionPool: {tcp: {tcpKeepalive: {interval: 2500ms}}}",
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.interval",
            "interval",
            "3s is used (Istio would use 2s)",
        ),
    ],
)
def test_settings_that_do_not_apply_as_written_warn(
    policy: str, field: str, needle: str, message: str
) -> None:
    text, result = load_policy(policy)
    assert_at(result, text, field, needle, message, severity="warning")
    assert result.config is not None


def test_a_subsets_port_level_entry_for_a_port_the_host_has_is_fine() -> None:
    text = RULE.replace("    POLICY\n", "    loadBalancer: {simple: RANDOM}\n") + (
        "    trafficPolicy:\n"
        "      portLevelSettings: [{port: {number: 9080}, loadBalancer: {simple: RANDOM}}]\n"
    )
    _text, result = load(text, *BOOKINFO_REGISTRY)
    assert result.diagnostics == ()


def test_outlier_detection_http_error_codes_are_carried_once_each() -> None:
    _text, result = load_policy(
        "outlierDetection: {outlierDetectionHttpErrorCodes: [404, 503, 404]}"
    )
    assert result.diagnostics == ()
    detection = policy_of(result).outlier_detection
    assert detection is not None and detection.http_error_codes == (404, 503)


def test_a_zero_limit_is_not_carried_so_istios_default_applies() -> None:
    _text, result = load_policy("connectionPool: {http: {maxRetries: 0, http2MaxRequests: 5}}")
    pool = policy_of(result).connection_pool
    assert pool is not None and pool.http == HttpPoolSettings(http2_max_requests=5)


def test_the_deprecated_consecutive_errors_does_not_become_consecutive_5xx() -> None:
    _text, result = load_policy("outlierDetection: {consecutiveErrors: 1}")
    detection = policy_of(result).outlier_detection
    assert detection is not None and detection.consecutive_5xx_errors is None
    assert find(result, "spec.trafficPolicy.outlierDetection.consecutiveErrors")
