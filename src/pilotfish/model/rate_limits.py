"""``pilotfish.io/v1alpha1`` RateLimitPolicy and the wire between proxies and the rate limit
service.

The kind follows the shape of Envoy Gateway's BackendTrafficPolicy ``rateLimit``: a target
(a Service or a Gateway), ``local`` rules (each replica's own token buckets) and ``global``
rules (counters shared by every replica, kept by the control plane's rate limit service).

The wire (``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit``): every global rule
becomes one ``rate_limits`` entry (of the proxy's rate limit filter; all of a request's
rules go in one call) whose descriptor starts with the entry
``(RULE_DESCRIPTOR_KEY, rule_id(policy, index))``; the entries after it are the rule's client
selectors in order: ``(HEADER_DESCRIPTOR_PREFIX + header name, value)`` for a ``Distinct``
header (one counter per value), ``(HEADER_MATCH_DESCRIPTOR_KEY, header name)`` for an
``Exact``/``RegularExpression`` one (the descriptor is only sent when it matches), and
``(SOURCE_DESCRIPTOR_KEY, masked address)`` for ``sourceCIDR`` (the service itself checks an
``Exact`` CIDR, counting nothing for an address outside it; Envoy fixes that key), then
``(PATH_DESCRIPTOR_KEY, the selector's path value)`` when the path matches. The service finds
the rule by its id in the config it serves, so limits never travel on the wire and every
control-plane replica agrees on them. On OVER_LIMIT the service returns the header
``RATE_LIMIT_RULE_HEADER: <rule id>`` (``response_headers_to_add``) of a rule that is over:
the proxy's 429 body names that rule and its limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # resources.py's MeshSettings holds RateLimitSettings: no import cycle
    from pilotfish.model.resources import Meta

RateLimitUnit = Literal["Second", "Minute", "Hour", "Day"]
UNIT_SECONDS: dict[RateLimitUnit, int] = {"Second": 1, "Minute": 60, "Hour": 3600, "Day": 86400}
HeaderMatchType = Literal["Exact", "RegularExpression", "Distinct"]
PathMatchType = Literal["Exact", "PathPrefix", "RegularExpression"]
SourceMatchType = Literal["Exact", "Distinct"]
TargetKind = Literal["Service", "Gateway"]
FailureMode = Literal["allow", "deny"]

RATE_LIMIT_DOMAIN = "pilotfish"
RULE_DESCRIPTOR_KEY = "pilotfish_rule"
HEADER_DESCRIPTOR_PREFIX = "header:"
HEADER_MATCH_DESCRIPTOR_KEY = "header_match"
# Envoy fixes this key for the masked caller address (its action has no descriptor_key).
SOURCE_DESCRIPTOR_KEY = "masked_remote_address"
PATH_DESCRIPTOR_KEY = "path"
# The header every 429 the mesh makes names its policy and rule in (the body says it too).
RATE_LIMIT_RULE_HEADER = "x-pilotfish-ratelimit"
# Envoy's rate limit filter gives up on the service after this long (Envoy's own default).
DEFAULT_SERVICE_TIMEOUT_SECONDS = 0.02


@dataclass(frozen=True)
class RateLimitValue:
    requests: int
    unit: RateLimitUnit

    @property
    def window_seconds(self) -> int:
        return UNIT_SECONDS[self.unit]


@dataclass(frozen=True)
class HeaderSelector:
    name: str
    type: HeaderMatchType = "Exact"
    value: str | None = None
    """None only for ``Distinct``."""
    invert: bool = False


@dataclass(frozen=True)
class PathSelector:
    type: PathMatchType
    value: str


@dataclass(frozen=True)
class SourceSelector:
    type: SourceMatchType
    cidr: str
    """``10.0.0.0/8``; for ``Distinct`` only the prefix length counts (``0.0.0.0/24``: one
    counter per /24 of callers), and the loader requires a zero address."""


@dataclass(frozen=True)
class ClientSelector:
    """All of its conditions must hold; a rule's selectors must all hold too."""

    headers: tuple[HeaderSelector, ...] = ()
    path: PathSelector | None = None
    source_cidr: SourceSelector | None = None


@dataclass(frozen=True)
class RateLimitRule:
    limit: RateLimitValue
    client_selectors: tuple[ClientSelector, ...] = ()
    """No selectors: the rule counts every request to the target."""


@dataclass(frozen=True)
class RateLimitTarget:
    kind: TargetKind
    name: str
    """A Service's short name (in the policy's namespace) or a Gateway's name."""


@dataclass(frozen=True)
class RateLimitPolicy:
    meta: Meta
    target: RateLimitTarget
    local: tuple[RateLimitRule, ...] = ()
    global_: tuple[RateLimitRule, ...] = ()

    @property
    def qualified_name(self) -> str:
        return f"{self.meta.namespace}/{self.meta.name}"


def rule_id(policy: RateLimitPolicy, kind: Literal["local", "global"], index: int) -> str:
    """``default/backend-per-user/global/0``: what bodies, headers, metrics and the wire
    call one rule."""
    return f"{policy.qualified_name}/{kind}/{index}"


@dataclass(frozen=True)
class RateLimitSettings:
    """``MeshConfig.spec.rateLimit``: where the global counters live and what a proxy does
    when the rate limit service (or its Redis) does not answer in time."""

    redis_address: str | None = None
    """``host:port``; None keeps the counters in the control plane's memory."""
    failure_mode: FailureMode = "allow"
    timeout: float = DEFAULT_SERVICE_TIMEOUT_SECONDS
