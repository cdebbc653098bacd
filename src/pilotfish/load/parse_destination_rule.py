"""networking.istio.io DestinationRule -> ``model.DestinationRule``: subsets, load balancing,
client TLS and the resilience settings (connection pools, outlier detection, retry budget)."""

from __future__ import annotations

from typing import cast

from pilotfish.load.fields import FieldReader, Fields, describe
from pilotfish.load.http_headers import header_name_problem, header_value_problem
from pilotfish.load.parse_locality import read_locality_lb_setting
from pilotfish.load.parse_tls import read_client_tls
from pilotfish.load.yaml_source import join_path
from pilotfish.model.resilience import (
    ConnectionPool,
    H2UpgradePolicy,
    Http2KeepAlive,
    HttpPoolSettings,
    OutlierDetection,
    RetryBudget,
    TcpKeepalive,
    TcpPoolSettings,
    keepalive_seconds,
)
from pilotfish.model.resources import (
    ConsistentHash,
    DestinationRule,
    HTTPCookie,
    LoadBalancer,
    Meta,
    PortTrafficPolicy,
    SimpleLB,
    Subset,
    TrafficPolicy,
)

SPEC_FIELDS = ("host", "trafficPolicy", "subsets")
SPEC_NOT_IMPLEMENTED = {
    "exportTo": "the rule is visible to every namespace",
    "workloadSelector": "the rule applies to every workload, not only the selected ones",
}

POLICY_FIELDS = (
    "loadBalancer",
    "tls",
    "portLevelSettings",
    "connectionPool",
    "outlierDetection",
    "retryBudget",
)
POLICY_NOT_IMPLEMENTED = {
    "tunnel": "traffic is not tunnelled",
    "proxyProtocol": "no PROXY protocol header is sent",
}

LB_FIELDS = ("simple", "consistentHash")
LB_NOT_IMPLEMENTED = {
    "zoneAwareLbSetting": "endpoints are picked regardless of their zone",
    "warmupDurationSecs": "new endpoints get their full share of traffic at once",
    "warmup": "new endpoints get their full share of traffic at once",
}
SIMPLE_LB = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM")
# LEAST_CONN is Istio's deprecated spelling of LEAST_REQUEST.
SIMPLE_LB_ALIASES = {"LEAST_CONN": "LEAST_REQUEST"}
SIMPLE_LB_NOT_SUPPORTED = ("PASSTHROUGH", "UNSPECIFIED")

WARMUP_FIELDS = ("duration", "minimumPercent", "aggression")

HASH_KEYS = ("httpHeaderName", "httpCookie", "useSourceIp")
QUERY_PARAMETER_KEY = "httpQueryParameterName"
HASH_NOT_IMPLEMENTED = {
    QUERY_PARAMETER_KEY: "requests are not hashed: endpoints are picked round robin",
    "ringHash": "Envoy's default ring hash settings apply",
    "maglev": "a ring hash is used instead of Maglev",
    "minimumRingSize": "Envoy's default ring size applies",
}
COOKIE_NOT_IMPLEMENTED = {"attributes": "the cookie is set without these attributes"}

OUTLIER_FIELDS = (
    "consecutiveErrors",
    "consecutiveGatewayErrors",
    "consecutive5xxErrors",
    "consecutiveLocalOriginFailures",
    "interval",
    "baseEjectionTime",
    "maxEjectionPercent",
    "minHealthPercent",
    "splitExternalLocalOriginErrors",
    "outlierDetectionHttpErrorCodes",
)
# Istio has ignored the deprecated field since 1.7 (it only warns), so a rule moved here from
# Istio keeps behaving the same way.
CONSECUTIVE_ERRORS_IGNORED = (
    "deprecated and ignored, as Istio does: nothing is counted by it; "
    "use consecutive5xxErrors or consecutiveGatewayErrors"
)
TCP_POOL_FIELDS = (
    "maxConnections",
    "connectTimeout",
    "tcpKeepalive",
    "maxConnectionDuration",
    "idleTimeout",
)
HTTP_POOL_COUNTS = (
    "http1MaxPendingRequests",
    "http2MaxRequests",
    "maxRequestsPerConnection",
    "maxRetries",
    "maxConcurrentStreams",
)
HTTP_POOL_FIELDS = (
    *HTTP_POOL_COUNTS,
    "idleTimeout",
    "h2UpgradePolicy",
    "useClientProtocol",
    "http2KeepAlive",
)
# Istio cannot tell 0 from unset for these (proto3 ints), so 0 leaves its default in place.
ZERO_IS_UNSET = (
    "0 means unset to Istio: the limit stays at Istio's default (unlimited); "
    "write the smallest limit you mean, such as 1"
)
ZERO_MEANS_DEFAULT = "0 means unset to Istio: Envoy's default applies"
H2_UPGRADE_POLICIES = ("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE")
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
RETRY_BUDGET_FIELDS = ("percent", "minRetryConcurrency")
RETRY_BUDGET_NOT_IMPLEMENTED = {
    # Envoy 1.40's RetryBudget has no interval: it always budgets against the requests
    # active at that moment.
    "budgetInterval": "retries are budgeted against the requests active at that moment only, "
    "not against those of the interval",
}
PORT_SETTINGS_FIELDS = ("port", "tls", "loadBalancer", "connectionPool", "outlierDetection")


def parse_destination_rule(
    reader: FieldReader, spec: Fields, meta: Meta, directory: str
) -> DestinationRule:
    """``directory``: the file's folder, which certificate file names are relative to."""
    host = reader.string(spec, "host", "spec", required=True)
    policy = _traffic_policy(reader, spec, "spec", directory)
    subsets: list[Subset] = []
    first_seen: set[str] = set()
    for item, path in reader.items(spec, "subsets", "spec"):
        subset = _subset(reader, item, path, directory)
        if subset is None:
            continue
        if subset.name in first_seen:
            reader.error(join_path(path, "name"), f'duplicate subset name "{subset.name}"')
            continue
        first_seen.add(subset.name)
        subsets.append(subset)
    return DestinationRule(
        meta=meta, host=host or "", traffic_policy=policy, subsets=tuple(subsets)
    )


def _subset(reader: FieldReader, value: object, path: str, directory: str) -> Subset | None:
    fields = reader.mapping(value, path, ("name", "labels", "trafficPolicy"))
    if fields is None:
        return None
    name = reader.string(fields, "name", path, required=True)
    # Istio allows a subset without labels: it selects every endpoint of the host.
    labels = reader.string_map(fields, "labels", path)
    policy = _traffic_policy(reader, fields, path, directory)
    if name is None:
        return None
    return Subset(name=name, labels=labels, traffic_policy=policy)


def _traffic_policy(
    reader: FieldReader, fields: Fields, path: str, directory: str
) -> TrafficPolicy | None:
    policy = reader.child_mapping(
        fields, "trafficPolicy", path, POLICY_FIELDS, POLICY_NOT_IMPLEMENTED
    )
    if policy is None:
        return None
    policy_path = join_path(path, "trafficPolicy")
    if fields.get("trafficPolicy") == {}:
        reader.error(policy_path, "must set at least one field (Istio refuses it empty)")
    load_balancer = _load_balancer(reader, policy, policy_path)
    tls = read_client_tls(reader, policy, policy_path, directory)
    return TrafficPolicy(
        load_balancer=load_balancer,
        tls=tls,
        connection_pool=_connection_pool(reader, policy, policy_path),
        outlier_detection=_outlier_detection(reader, policy, policy_path),
        retry_budget=_retry_budget(reader, policy, policy_path),
        port_settings=_port_level_settings(reader, policy, policy_path, directory),
    )


def _port_level_settings(
    reader: FieldReader, policy: Fields, path: str, directory: str
) -> dict[int, PortTrafficPolicy]:
    """portLevelSettings[] by port number."""
    found: dict[int, PortTrafficPolicy] = {}
    for item, item_path in reader.items(policy, "portLevelSettings", path):
        fields = reader.mapping(item, item_path, PORT_SETTINGS_FIELDS)
        if fields is None:
            continue
        port = reader.child_mapping(fields, "port", item_path, ("number",), required=True)
        number = (
            reader.port(port, "number", join_path(item_path, "port"), required=True)
            if port is not None
            else None
        )
        if not any(fields.get(key) is not None for key in PORT_SETTINGS_FIELDS[1:]):
            reader.error(
                item_path,
                "must set at least one of tls, loadBalancer, connectionPool, outlierDetection",
            )
        settings = PortTrafficPolicy(
            load_balancer=_load_balancer(reader, fields, item_path),
            connection_pool=_connection_pool(reader, fields, item_path),
            outlier_detection=_outlier_detection(reader, fields, item_path),
            tls=read_client_tls(reader, fields, item_path, directory),
        )
        if number is None:
            continue
        if number in found:
            reader.error(join_path(item_path, "port"), f"port {number} already has settings")
            continue
        # Kept even when nothing in it was valid: the entry still replaces the rule's
        # settings for its port, as in Istio.
        found[number] = reader.paths.remember(settings, join_path(item_path, "port"))
    return found


def _outlier_detection(reader: FieldReader, fields: Fields, path: str) -> OutlierDetection | None:
    detection = reader.child_mapping(fields, "outlierDetection", path, OUTLIER_FIELDS)
    if detection is None:
        return None
    detection_path = join_path(path, "outlierDetection")

    def count(key: str) -> int | None:
        return reader.integer(detection, key, detection_path, minimum=0, maximum=UINT32_MAX)

    def percent(key: str) -> int | None:
        return reader.integer(detection, key, detection_path, minimum=0, maximum=100)

    if count("consecutiveErrors") is not None:
        reader.warning(join_path(detection_path, "consecutiveErrors"), CONSECUTIVE_ERRORS_IGNORED)
    split = reader.boolean(detection, "splitExternalLocalOriginErrors", detection_path)
    local_origin = count("consecutiveLocalOriginFailures")
    if local_origin and not split:
        reader.error(
            join_path(detection_path, "consecutiveLocalOriginFailures"),
            "needs splitExternalLocalOriginErrors: true (Istio refuses it without)",
        )
    return OutlierDetection(
        consecutive_5xx_errors=count("consecutive5xxErrors"),
        consecutive_gateway_errors=count("consecutiveGatewayErrors"),
        consecutive_local_origin_failures=local_origin,
        split_external_local_origin_errors=bool(split),
        interval=reader.duration(detection, "interval", detection_path),
        base_ejection_time=reader.duration(detection, "baseEjectionTime", detection_path),
        max_ejection_percent=percent("maxEjectionPercent"),
        min_health_percent=percent("minHealthPercent"),
        http_error_codes=_error_codes(reader, detection, detection_path),
    )


def _error_codes(reader: FieldReader, detection: Fields, path: str) -> tuple[int, ...]:
    codes: list[int] = []
    for item, item_path in reader.items(detection, "outlierDetectionHttpErrorCodes", path):
        if isinstance(item, bool) or not isinstance(item, int) or not 100 <= item <= 599:
            reader.error(item_path, f"expected an HTTP status code, got {describe(item)}")
        elif item not in codes:
            codes.append(item)
    return tuple(codes)


def _connection_pool(reader: FieldReader, fields: Fields, path: str) -> ConnectionPool | None:
    pool = reader.child_mapping(fields, "connectionPool", path, ("tcp", "http"))
    if pool is None:
        return None
    pool_path = join_path(path, "connectionPool")
    if fields.get("connectionPool") == {}:
        reader.error(pool_path, "must set tcp or http (Istio refuses it empty)")
    return ConnectionPool(
        tcp=_tcp_pool(reader, pool, pool_path), http=_http_pool(reader, pool, pool_path)
    )


def _limit(reader: FieldReader, fields: Fields, key: str, path: str, if_zero: str) -> int | None:
    value = reader.integer(fields, key, path, minimum=0, maximum=INT32_MAX)
    if value == 0:
        reader.warning(join_path(path, key), if_zero)
        return None
    return value


def _tcp_pool(reader: FieldReader, pool: Fields, path: str) -> TcpPoolSettings | None:
    tcp = reader.child_mapping(pool, "tcp", path, TCP_POOL_FIELDS)
    if tcp is None:
        return None
    tcp_path = join_path(path, "tcp")
    keepalive = None
    keepalive_fields = reader.child_mapping(
        tcp, "tcpKeepalive", tcp_path, ("probes", "time", "interval")
    )
    if keepalive_fields is not None:
        keepalive_path = join_path(tcp_path, "tcpKeepalive")
        keepalive = TcpKeepalive(
            probes=reader.integer(
                keepalive_fields, "probes", keepalive_path, minimum=0, maximum=UINT32_MAX
            ),
            time=_keepalive_duration(reader, keepalive_fields, "time", keepalive_path),
            interval=_keepalive_duration(reader, keepalive_fields, "interval", keepalive_path),
        )
    return TcpPoolSettings(
        max_connections=_limit(reader, tcp, "maxConnections", tcp_path, ZERO_IS_UNSET),
        connect_timeout=reader.duration(tcp, "connectTimeout", tcp_path),
        tcp_keepalive=keepalive,
        max_connection_duration=reader.duration(tcp, "maxConnectionDuration", tcp_path),
        # Istio: 0s turns the idle timeout off.
        idle_timeout=reader.duration(tcp, "idleTimeout", tcp_path, allow_zero=True),
    )


def _keepalive_duration(reader: FieldReader, fields: Fields, key: str, path: str) -> float | None:
    seconds = reader.duration(fields, key, path)
    if seconds is not None and seconds != int(seconds):
        used = keepalive_seconds(seconds)
        reader.warning(
            join_path(path, key),
            f"Envoy counts keepalive times in whole seconds: {used}s is used "
            f"(Istio would use {int(seconds)}s)",
        )
    return seconds


def _http_pool(reader: FieldReader, pool: Fields, path: str) -> HttpPoolSettings | None:
    http = reader.child_mapping(pool, "http", path, HTTP_POOL_FIELDS)
    if http is None:
        return None
    http_path = join_path(path, "http")
    limits = {
        key: _limit(reader, http, key, http_path, ZERO_IS_UNSET)
        for key in ("http1MaxPendingRequests", "http2MaxRequests", "maxRetries")
    }
    per_connection = _limit(reader, http, "maxRequestsPerConnection", http_path, ZERO_MEANS_DEFAULT)
    streams = _limit(reader, http, "maxConcurrentStreams", http_path, ZERO_MEANS_DEFAULT)
    upgrade = reader.choice(http, "h2UpgradePolicy", http_path, H2_UPGRADE_POLICIES)
    use_client_protocol = bool(reader.boolean(http, "useClientProtocol", http_path))
    if upgrade == "UPGRADE" and use_client_protocol:
        reader.error(
            join_path(http_path, "useClientProtocol"),
            "must not be true when h2UpgradePolicy is UPGRADE",
        )
    keepalive = None
    keepalive_fields = reader.child_mapping(
        http, "http2KeepAlive", http_path, ("interval", "timeout")
    )
    if keepalive_fields is not None:
        keepalive_path = join_path(http_path, "http2KeepAlive")
        keepalive = Http2KeepAlive(
            interval=reader.duration(keepalive_fields, "interval", keepalive_path, required=True),
            timeout=reader.duration(keepalive_fields, "timeout", keepalive_path, required=True),
        )
    return HttpPoolSettings(
        http1_max_pending_requests=limits["http1MaxPendingRequests"],
        http2_max_requests=limits["http2MaxRequests"],
        max_requests_per_connection=per_connection,
        max_retries=limits["maxRetries"],
        idle_timeout=reader.duration(http, "idleTimeout", http_path),
        max_concurrent_streams=streams,
        h2_upgrade_policy=cast(H2UpgradePolicy, upgrade) if upgrade is not None else None,
        use_client_protocol=use_client_protocol,
        http2_keep_alive=keepalive,
    )


def _retry_budget(reader: FieldReader, fields: Fields, path: str) -> RetryBudget | None:
    budget = reader.child_mapping(
        fields, "retryBudget", path, RETRY_BUDGET_FIELDS, RETRY_BUDGET_NOT_IMPLEMENTED
    )
    if budget is None:
        return None
    budget_path = join_path(path, "retryBudget")
    if isinstance(budget.get("percent"), dict):
        # The protobuf DoubleValue is a plain number in YAML, as in Istio's own examples.
        reader.error(join_path(budget_path, "percent"), "write the percent as a number, e.g. 20")
        percent = None
    else:
        percent = reader.number(budget, "percent", budget_path, minimum=0, maximum=100)
    return RetryBudget(
        percent=percent,
        min_retry_concurrency=reader.integer(
            budget, "minRetryConcurrency", budget_path, minimum=0, maximum=UINT32_MAX
        ),
    )


def _load_balancer(reader: FieldReader, fields: Fields, path: str) -> LoadBalancer | None:
    balancer = reader.child_mapping(
        fields, "loadBalancer", path, (*LB_FIELDS, "localityLbSetting"), LB_NOT_IMPLEMENTED
    )
    if balancer is None:
        return None
    balancer_path = join_path(path, "loadBalancer")
    _check_warmup(reader, fields.get("loadBalancer"), balancer_path)
    chosen = [key for key in LB_FIELDS if balancer.get(key) is not None]
    # Istio's lb_policy is a oneof, and a loadBalancer may set only locality or warmup.
    if len(chosen) > 1:
        reader.error(balancer_path, "set at most one of simple, consistentHash")
    simple_text = balancer.get("simple")
    if isinstance(simple_text, str) and simple_text in SIMPLE_LB_ALIASES:
        simple: str | None = SIMPLE_LB_ALIASES[simple_text]
    else:
        simple = reader.choice(
            balancer, "simple", balancer_path, SIMPLE_LB, not_supported=SIMPLE_LB_NOT_SUPPORTED
        )
    return LoadBalancer(
        simple=cast(SimpleLB, simple) if simple is not None else None,
        consistent_hash=_consistent_hash(reader, balancer, balancer_path),
        locality_lb_setting=read_locality_lb_setting(
            reader,
            balancer,
            balancer_path,
            outlier_detection=fields.get("outlierDetection") is not None,
        ),
    )


def _check_warmup(reader: FieldReader, balancer: object, path: str) -> None:
    """Warmup is warned about, not carried; its values are still Istio's to check."""
    warmup = balancer.get("warmup") if isinstance(balancer, dict) else None
    if warmup is None:
        return
    fields = reader.mapping(warmup, join_path(path, "warmup"), WARMUP_FIELDS)
    if fields is None:
        return
    warmup_path = join_path(path, "warmup")
    reader.duration(fields, "duration", warmup_path, required=True)
    reader.number(fields, "minimumPercent", warmup_path, minimum=0, maximum=100)
    aggression = reader.number(fields, "aggression", warmup_path)
    if aggression is not None and aggression <= 0:
        reader.error(join_path(warmup_path, "aggression"), "must be greater than 0")


def _consistent_hash(reader: FieldReader, fields: Fields, path: str) -> ConsistentHash | None:
    hashing = reader.child_mapping(fields, "consistentHash", path, HASH_KEYS, HASH_NOT_IMPLEMENTED)
    if hashing is None:
        return None
    hash_path = join_path(path, "consistentHash")
    written = fields.get("consistentHash")
    all_keys = (*HASH_KEYS, QUERY_PARAMETER_KEY)
    # ``useSourceIp: false`` names no key at all, so it does not count as the one chosen.
    keys = [
        k for k in all_keys if isinstance(written, dict) and written.get(k) not in (None, False)
    ]
    if len(keys) != 1:
        reader.error(hash_path, f"exactly one of {', '.join(all_keys)} must be set")
    if keys == [QUERY_PARAMETER_KEY]:
        return None  # warned about: endpoints are then picked as without a hash
    cookie = None
    cookie_fields = reader.child_mapping(
        hashing, "httpCookie", hash_path, ("name", "ttl", "path"), COOKIE_NOT_IMPLEMENTED
    )
    if cookie_fields is not None:
        cookie_path = join_path(hash_path, "httpCookie")
        name = reader.string(cookie_fields, "name", cookie_path, required=True)
        problem = header_value_problem(name) if name else None
        if problem is not None:
            reader.error(join_path(cookie_path, "name"), problem)
            name = None
        ttl = reader.duration(cookie_fields, "ttl", cookie_path, allow_zero=True)
        cookie_route = reader.string(cookie_fields, "path", cookie_path)
        if name is not None:
            cookie = HTTPCookie(name=name, ttl=ttl, path=cookie_route)
    use_source_ip = reader.boolean(hashing, "useSourceIp", hash_path)
    header_name = reader.string(hashing, "httpHeaderName", hash_path)
    problem = header_name_problem(header_name) if header_name is not None else None
    if problem is not None:
        reader.error(join_path(hash_path, "httpHeaderName"), problem)
        header_name = None
    return ConsistentHash(
        http_header_name=header_name,
        http_cookie=cookie,
        use_source_ip=bool(use_source_ip),
    )
