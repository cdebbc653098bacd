"""networking.istio.io DestinationRule -> ``model.DestinationRule`` (subsets and load balancing)."""

from __future__ import annotations

from typing import cast

from pilotfish.load.fields import NOT_IMPLEMENTED_PREFIX, FieldReader, Fields, describe
from pilotfish.load.http_headers import header_name_problem, header_value_problem
from pilotfish.load.parse_locality import read_locality_lb_setting
from pilotfish.load.parse_tls import read_client_tls
from pilotfish.load.yaml_source import join_path
from pilotfish.model.resources import (
    ConsistentHash,
    DestinationRule,
    HTTPCookie,
    LoadBalancer,
    Meta,
    SimpleLB,
    Subset,
    TrafficPolicy,
)
from pilotfish.model.security import ClientTLSSettings

SPEC_FIELDS = ("host", "trafficPolicy", "subsets")
SPEC_NOT_IMPLEMENTED = {
    "exportTo": "the rule is visible to every namespace",
    "workloadSelector": "the rule applies to every workload, not only the selected ones",
}

POLICY_FIELDS = ("loadBalancer", "tls", "portLevelSettings")
# Not carried yet, but their values are still checked: an out-of-range value is a mistake
# today and would silently change behaviour once the field is implemented.
POLICY_CHECKED_NOT_IMPLEMENTED = {
    "connectionPool": "Envoy's default connection and request limits apply instead",
    "outlierDetection": "no endpoint is ejected after errors",
}
POLICY_NOT_IMPLEMENTED = {
    "tunnel": "traffic is not tunnelled",
    "proxyProtocol": "no PROXY protocol header is sent",
    "retryBudget": "retries are limited only by each route's attempts",
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

OUTLIER_COUNTS = (
    "consecutiveErrors",
    "consecutiveGatewayErrors",
    "consecutive5xxErrors",
    "consecutiveLocalOriginFailures",
)
OUTLIER_DURATIONS = ("interval", "baseEjectionTime")
OUTLIER_PERCENTS = ("maxEjectionPercent", "minHealthPercent")
OUTLIER_FIELDS = (
    *OUTLIER_COUNTS,
    *OUTLIER_DURATIONS,
    *OUTLIER_PERCENTS,
    "splitExternalLocalOriginErrors",
    "outlierDetectionHttpErrorCodes",
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
H2_UPGRADE_POLICIES = ("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE")
INT32_MAX = 2**31 - 1
PORT_SETTINGS_FIELDS = ("port", "tls")
PORT_SETTINGS_NOT_IMPLEMENTED = {
    key: "only tls is applied per port; the rule's own settings apply to this port"
    for key in ("loadBalancer", "connectionPool", "outlierDetection")
}


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
        fields,
        "trafficPolicy",
        path,
        (*POLICY_FIELDS, *POLICY_CHECKED_NOT_IMPLEMENTED),
        POLICY_NOT_IMPLEMENTED,
    )
    if policy is None:
        return None
    policy_path = join_path(path, "trafficPolicy")
    if fields.get("trafficPolicy") == {}:
        reader.error(policy_path, "must set at least one field (Istio refuses it empty)")
    if policy.get("outlierDetection") is not None:
        _check_outlier_detection(reader, policy, policy_path)
    if policy.get("connectionPool") is not None:
        _check_connection_pool(reader, policy, policy_path)
    for key, consequence in POLICY_CHECKED_NOT_IMPLEMENTED.items():
        if policy.get(key):  # an empty one is already an error
            reader.warning(join_path(policy_path, key), f"{NOT_IMPLEMENTED_PREFIX}: {consequence}")
    return TrafficPolicy(
        load_balancer=_load_balancer(reader, policy, policy_path),
        tls=read_client_tls(reader, policy, policy_path, directory),
        port_tls=_port_level_tls(reader, policy, policy_path, directory),
    )


def _port_level_tls(
    reader: FieldReader, policy: Fields, path: str, directory: str
) -> dict[int, ClientTLSSettings]:
    found: dict[int, ClientTLSSettings] = {}
    for item, item_path in reader.items(policy, "portLevelSettings", path):
        fields = reader.mapping(
            item, item_path, PORT_SETTINGS_FIELDS, PORT_SETTINGS_NOT_IMPLEMENTED
        )
        if fields is None:
            continue
        port = reader.child_mapping(fields, "port", item_path, ("number",), required=True)
        number = (
            reader.port(port, "number", join_path(item_path, "port"), required=True)
            if port is not None
            else None
        )
        tls = read_client_tls(reader, fields, item_path, directory)
        if number is None:
            continue
        if number in found:
            reader.error(join_path(item_path, "port"), f"port {number} already has settings")
            continue
        if tls is not None:
            found[number] = tls
    return found


def _check_outlier_detection(reader: FieldReader, fields: Fields, path: str) -> None:
    detection = reader.child_mapping(fields, "outlierDetection", path, OUTLIER_FIELDS)
    if detection is None:
        return
    detection_path = join_path(path, "outlierDetection")
    for key in OUTLIER_COUNTS:
        reader.integer(detection, key, detection_path, minimum=0, maximum=2**32 - 1)
    for key in OUTLIER_DURATIONS:
        reader.duration(detection, key, detection_path)
    for key in OUTLIER_PERCENTS:
        reader.integer(detection, key, detection_path, minimum=0, maximum=100)
    reader.boolean(detection, "splitExternalLocalOriginErrors", detection_path)
    for item, item_path in reader.items(
        detection, "outlierDetectionHttpErrorCodes", detection_path
    ):
        if isinstance(item, bool) or not isinstance(item, int) or not 100 <= item <= 599:
            reader.error(item_path, f"expected an HTTP status code, got {describe(item)}")


def _check_connection_pool(reader: FieldReader, fields: Fields, path: str) -> None:
    pool = reader.child_mapping(fields, "connectionPool", path, ("tcp", "http"))
    if pool is None:
        return
    pool_path = join_path(path, "connectionPool")
    if fields.get("connectionPool") == {}:
        reader.error(pool_path, "must set tcp or http (Istio refuses it empty)")
    tcp = reader.child_mapping(pool, "tcp", pool_path, TCP_POOL_FIELDS)
    if tcp is not None:
        tcp_path = join_path(pool_path, "tcp")
        reader.integer(tcp, "maxConnections", tcp_path, minimum=0, maximum=INT32_MAX)
        for key in ("connectTimeout", "maxConnectionDuration", "idleTimeout"):
            reader.duration(tcp, key, tcp_path)
        keepalive = reader.child_mapping(
            tcp, "tcpKeepalive", tcp_path, ("probes", "time", "interval")
        )
        if keepalive is not None:
            keepalive_path = join_path(tcp_path, "tcpKeepalive")
            reader.integer(keepalive, "probes", keepalive_path, minimum=0, maximum=2**32 - 1)
            reader.duration(keepalive, "time", keepalive_path)
            reader.duration(keepalive, "interval", keepalive_path)
    http = reader.child_mapping(pool, "http", pool_path, HTTP_POOL_FIELDS)
    if http is not None:
        http_path = join_path(pool_path, "http")
        for key in HTTP_POOL_COUNTS:
            reader.integer(http, key, http_path, minimum=0, maximum=INT32_MAX)
        reader.duration(http, "idleTimeout", http_path)
        reader.choice(http, "h2UpgradePolicy", http_path, H2_UPGRADE_POLICIES)
        reader.boolean(http, "useClientProtocol", http_path)
        keepalive = reader.child_mapping(http, "http2KeepAlive", http_path, ("interval", "timeout"))
        if keepalive is not None:
            keepalive_path = join_path(http_path, "http2KeepAlive")
            reader.duration(keepalive, "interval", keepalive_path)
            reader.duration(keepalive, "timeout", keepalive_path)


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
