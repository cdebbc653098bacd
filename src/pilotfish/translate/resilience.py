"""A cluster's resilience as Istio builds it from a DestinationRule: circuit breakers (with
the retry budget), outlier detection, the connection pool's TCP and HTTP options, and the
limits a "circuit breaker is full" reply names.

Istio gives every cluster circuit breakers, so a cluster without a DestinationRule gets them
too: each threshold left unset is ``UNLIMITED_THRESHOLD``, not Envoy's 1024 (or 3 retries).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.common.matcher.v3 import matcher_pb2
from envoy.config.core.v3 import address_pb2, protocol_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from pilotfish.model.resilience import (
    UNLIMITED_THRESHOLD,
    ConnectionPool,
    HttpPoolSettings,
    OutlierDetection,
    RetryBudget,
    TcpKeepalive,
    keepalive_seconds,
)
from pilotfish.translate.destinations import EffectivePolicy
from pilotfish.translate.proto_values import duration_from_seconds, pack

# Where a cluster keeps the limits its UO reply names (``%CLUSTER_METADATA(...)%``).
METADATA_NAMESPACE = "pilotfish"
CIRCUIT_BREAKER_KEY = "circuit_breaker"
CIRCUIT_BREAKER_OPERATOR = f"%CLUSTER_METADATA({METADATA_NAMESPACE}:{CIRCUIT_BREAKER_KEY})%"
NO_LIMITS = "it sets no limit of its own; Istio's defaults are unlimited"
# And the outlier detection its UH reply names: with it, "no healthy upstream" is most often
# every endpoint ejected, which the endpoint view shows.
OUTLIER_DETECTION_KEY = "outlier_detection"
OUTLIER_DETECTION_OPERATOR = f"%CLUSTER_METADATA({METADATA_NAMESPACE}:{OUTLIER_DETECTION_KEY})%"
SEE_ENDPOINTS = "see `pilotfish endpoints`"
NO_OUTLIER_DETECTION = f"no outlier detection; {SEE_ENDPOINTS}"

# Istio's retryBudget defaults (Envoy's too).
DEFAULT_BUDGET_PERCENT = 20.0
DEFAULT_MIN_RETRY_CONCURRENCY = 3

_HTTP_OPTIONS = http_protocol_options_pb2.HttpProtocolOptions
# The key Envoy looks the options up by is the message's full name.
HTTP_PROTOCOL_OPTIONS_KEY = _HTTP_OPTIONS.DESCRIPTOR.full_name
_ENFORCED = 100
_NOT_ENFORCED = 0


def apply_resilience(cluster: cluster_pb2.Cluster, policy: EffectivePolicy) -> None:
    """Everything of ``policy`` but the load balancer onto an outbound ``cluster``; run it
    after the cluster's upstream protocol options are set, which it merges into."""
    _apply_pool(cluster, policy, outbound=True)
    _set_metadata(cluster, OUTLIER_DETECTION_KEY, outlier_text(policy.outlier_detection))
    if policy.outlier_detection is not None:
        cluster.outlier_detection.CopyFrom(outlier_detection_to_proto(policy.outlier_detection))
        # Istio always sets the panic threshold with outlier detection, 0 when unset: with a
        # few replicas Envoy's 50% would send traffic to ejected endpoints.
        cluster.common_lb_config.healthy_panic_threshold.CopyFrom(
            percent_pb2.Percent(value=float(policy.outlier_detection.min_health_percent or 0))
        )
        if policy.outlier_detection.http_error_codes:
            _apply_error_codes(cluster, policy.outlier_detection.http_error_codes)


def apply_inbound_resilience(cluster: cluster_pb2.Cluster, policy: EffectivePolicy) -> None:
    """The server's side (a sidecar's cluster to its app): Istio gives it the rule's
    connection pool and retry budget too, so the server has the capacity its callers are
    allowed, but neither outlier detection nor an HTTP/2 upgrade (the app may not speak it)."""
    _apply_pool(cluster, policy, outbound=False)
    _set_metadata(cluster, OUTLIER_DETECTION_KEY, NO_OUTLIER_DETECTION)


def _apply_pool(cluster: cluster_pb2.Cluster, policy: EffectivePolicy, *, outbound: bool) -> None:
    pool = policy.connection_pool
    cluster.circuit_breakers.CopyFrom(circuit_breakers(pool, policy.retry_budget))
    set_limits_metadata(cluster, pool)
    if pool is None:
        return
    if pool.tcp is not None:
        if pool.tcp.connect_timeout is not None:
            cluster.connect_timeout.CopyFrom(duration_from_seconds(pool.tcp.connect_timeout))
        if pool.tcp.tcp_keepalive is not None:
            cluster.upstream_connection_options.tcp_keepalive.CopyFrom(
                tcp_keepalive_to_proto(pool.tcp.tcp_keepalive)
            )
    _apply_http_options(cluster, pool, upgrade=outbound)


def circuit_breakers(
    pool: ConnectionPool | None, budget: RetryBudget | None = None
) -> circuit_breaker_pb2.CircuitBreakers:
    """One DEFAULT-priority threshold set, as Istio writes it (HIGH keeps Envoy's defaults,
    and no route of ours asks for HIGH); ``track_remaining`` stays off, Istio's default."""
    tcp = pool.tcp if pool is not None else None
    http = pool.http if pool is not None else None
    thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds(
        max_connections=_threshold(tcp.max_connections if tcp else None),
        max_pending_requests=_threshold(http.http1_max_pending_requests if http else None),
        max_requests=_threshold(http.http2_max_requests if http else None),
        max_retries=_threshold(http.max_retries if http else None),
    )
    if budget is not None:
        # With a budget Envoy ignores max_retries.
        thresholds.retry_budget.CopyFrom(
            circuit_breaker_pb2.CircuitBreakers.Thresholds.RetryBudget(
                budget_percent=percent_pb2.Percent(
                    value=budget.percent if budget.percent is not None else DEFAULT_BUDGET_PERCENT
                ),
                min_retry_concurrency=wrappers_pb2.UInt32Value(
                    value=budget.min_retry_concurrency or DEFAULT_MIN_RETRY_CONCURRENCY
                ),
            )
        )
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[thresholds])


def _threshold(value: int | None) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value if value else UNLIMITED_THRESHOLD)


def configured_limits(pool: ConnectionPool | None) -> tuple[tuple[str, int], ...]:
    """The limits that can shed a request (UO), by their Istio names, in the order Envoy
    meets them: a connection, then a place in the queue, then a request."""
    if pool is None:
        return ()
    candidates = (
        ("maxConnections", pool.tcp.max_connections if pool.tcp else None),
        ("http1MaxPendingRequests", pool.http.http1_max_pending_requests if pool.http else None),
        ("http2MaxRequests", pool.http.http2_max_requests if pool.http else None),
    )
    return tuple((name, value) for name, value in candidates if value)


def limits_text(pool: ConnectionPool | None) -> str:
    limits = configured_limits(pool)
    if not limits:
        return NO_LIMITS
    return ", ".join(f"{name}={value}" for name, value in limits)


def set_limits_metadata(cluster: cluster_pb2.Cluster, pool: ConnectionPool | None) -> None:
    """Envoy's UO flag does not say which limit was hit, so the reply names every one set."""
    _set_metadata(cluster, CIRCUIT_BREAKER_KEY, limits_text(pool))


def _set_metadata(cluster: cluster_pb2.Cluster, key: str, text: str) -> None:
    cluster.metadata.filter_metadata[METADATA_NAMESPACE].MergeFrom(
        struct_pb2.Struct(fields={key: struct_pb2.Value(string_value=text)})
    )


def outlier_text(detection: OutlierDetection | None) -> str:
    """The settings the rule gives, by their Istio names (unset ones are Envoy's defaults)."""
    if detection is None:
        return NO_OUTLIER_DETECTION
    candidates: tuple[tuple[str, int | str | None], ...] = (
        ("consecutive5xxErrors", detection.consecutive_5xx_errors),
        ("consecutiveGatewayErrors", detection.consecutive_gateway_errors),
        ("consecutiveLocalOriginFailures", detection.consecutive_local_origin_failures),
        ("interval", _seconds_text(detection.interval)),
        ("baseEjectionTime", _seconds_text(detection.base_ejection_time)),
        ("maxEjectionPercent", detection.max_ejection_percent),
        ("minHealthPercent", detection.min_health_percent),
        (
            "outlierDetectionHttpErrorCodes",
            ",".join(map(str, detection.http_error_codes)) or None,
        ),
    )
    named = ", ".join(f"{name}={value}" for name, value in candidates if value is not None)
    return f"outlier detection: {named or 'Envoy defaults'}; {SEE_ENDPOINTS}"


def _seconds_text(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def outlier_detection_to_proto(
    detection: OutlierDetection,
) -> outlier_detection_pb2.OutlierDetection:
    """Istio's mapping: each consecutive-error check it sets is enforced 100% (0 when its
    count is 0, which turns the check off); success-rate ejection is off. Unset fields keep
    Envoy's defaults, which are Istio's documented ones (5 errors, 10s, 30s, 10%)."""
    out = outlier_detection_pb2.OutlierDetection(
        enforcing_success_rate=wrappers_pb2.UInt32Value(value=_NOT_ENFORCED)
    )
    if detection.consecutive_5xx_errors is not None:
        out.consecutive_5xx.value = detection.consecutive_5xx_errors
        out.enforcing_consecutive_5xx.value = _enforcing(detection.consecutive_5xx_errors)
    if detection.consecutive_gateway_errors is not None:
        out.consecutive_gateway_failure.value = detection.consecutive_gateway_errors
        out.enforcing_consecutive_gateway_failure.value = _enforcing(
            detection.consecutive_gateway_errors
        )
    if detection.interval is not None:
        out.interval.CopyFrom(duration_from_seconds(detection.interval))
    if detection.base_ejection_time is not None:
        out.base_ejection_time.CopyFrom(duration_from_seconds(detection.base_ejection_time))
    if detection.max_ejection_percent:
        out.max_ejection_percent.value = detection.max_ejection_percent
    if detection.split_external_local_origin_errors:
        out.split_external_local_origin_errors = True
        if detection.consecutive_local_origin_failures:
            out.consecutive_local_origin_failure.value = detection.consecutive_local_origin_failures
            out.enforcing_consecutive_local_origin_failure.value = _ENFORCED
        out.enforcing_local_origin_success_rate.value = _NOT_ENFORCED
    return out


def _enforcing(count: int) -> int:
    return _ENFORCED if count > 0 else _NOT_ENFORCED


def tcp_keepalive_to_proto(keepalive: TcpKeepalive) -> address_pb2.TcpKeepalive:
    out = address_pb2.TcpKeepalive()
    if keepalive.probes:
        out.keepalive_probes.value = keepalive.probes
    if keepalive.time is not None:
        out.keepalive_time.value = keepalive_seconds(keepalive.time)
    if keepalive.interval is not None:
        out.keepalive_interval.value = keepalive_seconds(keepalive.interval)
    return out


def _apply_http_options(
    cluster: cluster_pb2.Cluster, pool: ConnectionPool, *, upgrade: bool
) -> None:
    """Merges into the cluster's HttpProtocolOptions, which may already choose HTTP/2."""
    http, tcp = pool.http, pool.tcp
    options = _http_options_of(cluster)
    before = options.SerializeToString(deterministic=True)
    common = options.common_http_protocol_options
    idle = http.idle_timeout if http is not None else None
    if idle is None and tcp is not None:
        idle = tcp.idle_timeout
    if idle is not None:
        common.idle_timeout.CopyFrom(duration_from_seconds(idle))
    if tcp is not None and tcp.max_connection_duration is not None:
        common.max_connection_duration.CopyFrom(duration_from_seconds(tcp.max_connection_duration))
    if http is not None and http.max_requests_per_connection:
        common.max_requests_per_connection.value = http.max_requests_per_connection
    if http is not None:
        _choose_protocol(options, http, upgrade=upgrade)
        http2 = _http2_options(options)
        if http2 is not None and http.max_concurrent_streams:
            http2.max_concurrent_streams.value = http.max_concurrent_streams
        if http2 is not None and http.http2_keep_alive is not None:
            keepalive = http.http2_keep_alive
            if keepalive.interval is not None:
                http2.connection_keepalive.interval.CopyFrom(
                    duration_from_seconds(keepalive.interval)
                )
            if keepalive.timeout is not None:
                http2.connection_keepalive.timeout.CopyFrom(
                    duration_from_seconds(keepalive.timeout)
                )
    if options.SerializeToString(deterministic=True) != before:
        _store_http_options(cluster, options)


def _store_http_options(
    cluster: cluster_pb2.Cluster, options: http_protocol_options_pb2.HttpProtocolOptions
) -> None:
    if not options.HasField("upstream_protocol_options"):
        # Envoy refuses HttpProtocolOptions that pick no protocol; HTTP/1.1 is what the
        # cluster spoke without them.
        options.explicit_http_config.http_protocol_options.SetInParent()
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY].CopyFrom(pack(options))


def _apply_error_codes(cluster: cluster_pb2.Cluster, codes: tuple[int, ...]) -> None:
    """As Istio maps outlierDetectionHttpErrorCodes: a response whose ``:status`` is one of
    ``codes`` is what outlier detection counts as an error, instead of any 5xx."""
    rules = [
        matcher_pb2.MatchPredicate(
            http_response_headers_match=matcher_pb2.HttpHeadersMatch(
                headers=[
                    route_components_pb2.HeaderMatcher(
                        name=":status",
                        string_match=string_pb2.StringMatcher(exact=str(code)),
                    )
                ]
            )
        )
        for code in codes
    ]
    predicate = (
        rules[0]
        if len(rules) == 1
        else matcher_pb2.MatchPredicate(or_match=matcher_pb2.MatchPredicate.MatchSet(rules=rules))
    )
    options = _http_options_of(cluster)
    options.outlier_detection.error_matcher.CopyFrom(predicate)
    _store_http_options(cluster, options)


def _http_options_of(cluster: cluster_pb2.Cluster) -> http_protocol_options_pb2.HttpProtocolOptions:
    options = _HTTP_OPTIONS()
    existing = cluster.typed_extension_protocol_options.get(HTTP_PROTOCOL_OPTIONS_KEY)
    if existing is not None:
        existing.Unpack(options)
    return options


def _choose_protocol(
    options: http_protocol_options_pb2.HttpProtocolOptions, http: HttpPoolSettings, *, upgrade: bool
) -> None:
    """useClientProtocol: speak what the caller spoke; h2UpgradePolicy UPGRADE (``upgrade``:
    outbound only): HTTP/2 to an HTTP/1.1 port (Istio's mesh-wide default is DO_NOT_UPGRADE,
    so DEFAULT keeps the port's protocol)."""
    if http.use_client_protocol:
        config = _HTTP_OPTIONS.UseDownstreamHttpConfig()
        config.http_protocol_options.SetInParent()
        config.http2_protocol_options.CopyFrom(options.explicit_http_config.http2_protocol_options)
        options.use_downstream_protocol_config.CopyFrom(config)
    elif (
        upgrade
        and http.h2_upgrade_policy == "UPGRADE"
        and not options.explicit_http_config.HasField("http2_protocol_options")
    ):
        options.explicit_http_config.http2_protocol_options.SetInParent()


def _http2_options(
    options: http_protocol_options_pb2.HttpProtocolOptions,
) -> protocol_pb2.Http2ProtocolOptions | None:
    if options.HasField("use_downstream_protocol_config"):
        return options.use_downstream_protocol_config.http2_protocol_options
    if options.explicit_http_config.HasField("http2_protocol_options"):
        return options.explicit_http_config.http2_protocol_options
    return None


def upstream_alpn(cluster: cluster_pb2.Cluster) -> tuple[str, ...]:
    """What the cluster's TLS offers must be what it speaks, or the server picks a codec the
    client does not use: h2 once the cluster chose (or was upgraded to) HTTP/2; nothing with
    useClientProtocol, so that Envoy offers each connection's own codec."""
    options = _http_options_of(cluster)
    if options.HasField("use_downstream_protocol_config"):
        return ()
    if options.explicit_http_config.HasField("http2_protocol_options"):
        return ("h2",)
    return ("http/1.1",)
