"""DestinationRule's resilience settings: connection pools (circuit breakers, bulkheads),
outlier detection, retry budgets and locality-aware load balancing.

Field names follow Istio's ``networking.istio.io`` API; durations are seconds as floats and
``None`` means "not set" (translation then applies Istio's default, not Envoy's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

H2UpgradePolicy = Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"]

# Istio sets every circuit-breaker threshold a DestinationRule leaves unset to this, so the
# mesh never sheds load on its own (Envoy's own defaults: 1024 connections/pending/requests
# and 3 concurrent retries, which 503s under churn).
UNLIMITED_THRESHOLD = 2**32 - 1


@dataclass(frozen=True)
class TcpKeepalive:
    probes: int | None = None
    time: float | None = None
    interval: float | None = None


def keepalive_seconds(seconds: float) -> int:
    """Envoy counts keepalive times in whole seconds. A fraction is rounded up, where Istio
    truncates: its 0 for a sub-second value is not a valid socket option."""
    return math.ceil(seconds)


@dataclass(frozen=True)
class TcpPoolSettings:
    max_connections: int | None = None
    connect_timeout: float | None = None
    tcp_keepalive: TcpKeepalive | None = None
    max_connection_duration: float | None = None
    idle_timeout: float | None = None


@dataclass(frozen=True)
class Http2KeepAlive:
    interval: float | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class HttpPoolSettings:
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_retries: int | None = None
    idle_timeout: float | None = None
    max_concurrent_streams: int | None = None
    h2_upgrade_policy: H2UpgradePolicy | None = None
    use_client_protocol: bool = False
    http2_keep_alive: Http2KeepAlive | None = None


@dataclass(frozen=True)
class ConnectionPool:
    tcp: TcpPoolSettings | None = None
    http: HttpPoolSettings | None = None


@dataclass(frozen=True)
class OutlierDetection:
    """Istio's ``outlierDetection``. Its deprecated ``consecutiveErrors`` is not kept: Istio has
    ignored it since 1.7, and the loader warns that it does nothing."""

    consecutive_5xx_errors: int | None = None
    consecutive_gateway_errors: int | None = None
    consecutive_local_origin_failures: int | None = None
    split_external_local_origin_errors: bool = False
    interval: float | None = None
    base_ejection_time: float | None = None
    max_ejection_percent: int | None = None
    min_health_percent: int | None = None
    # outlierDetectionHttpErrorCodes: when set, these statuses (and only these) are errors.
    http_error_codes: tuple[int, ...] = ()


@dataclass(frozen=True)
class RetryBudget:
    """Istio 1.27's ``trafficPolicy.retryBudget``: retries may be at most ``percent`` of the
    active requests, but always at least ``min_retry_concurrency`` at once."""

    percent: float | None = None
    min_retry_concurrency: int | None = None


@dataclass(frozen=True)
class LocalityDistribution:
    """Traffic from callers in ``from_`` (``region/zone/subzone``, ``*`` allowed as a whole
    segment or trailing) goes to localities in ``to`` by weight (percent, summing to 100)."""

    from_: str
    to: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalityFailover:
    """When every endpoint in the caller's region ``from_`` is unhealthy, go to ``to``."""

    from_: str
    to: str


@dataclass(frozen=True)
class LocalityLbSetting:
    """Istio's ``localityLbSetting``; ``enabled`` None means Istio's default (on)."""

    distribute: tuple[LocalityDistribution, ...] = ()
    failover: tuple[LocalityFailover, ...] = ()
    failover_priority: tuple[str, ...] = ()
    enabled: bool | None = None


# The labels that carry an endpoint's (and a proxy's) locality, as Kubernetes and Istio name
# them: ``failoverPriority`` may name them, and they are set from ``region/zone/subzone``.
TOPOLOGY_LABELS = (
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
)


def locality_problem(text: str) -> str | None:
    """What makes ``text`` no place to run at (``region[/zone[/subzone]]``: one to three
    non-empty parts, no wildcard, no spaces), completing "the locality ...", or None."""
    parts = text.split("/")
    if len(parts) > len(TOPOLOGY_LABELS):
        return "has more parts than region/zone/subzone"
    if "" in parts:
        return "has an empty region, zone or subzone"
    if "*" in text:
        return 'is a place, so it cannot hold the wildcard "*" (only rules can)'
    if any(c.isspace() for c in text):
        return "must not contain spaces"
    return None
