"""The global rules of the served config, by the id the proxies send, and what the
descriptor entries after the rule's own entry mean for each of them."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from pilotfish.model.rate_limits import (
    HEADER_DESCRIPTOR_PREFIX,
    HEADER_MATCH_DESCRIPTOR_KEY,
    PATH_DESCRIPTOR_KEY,
    SOURCE_DESCRIPTOR_KEY,
    HeaderSelector,
    RateLimitPolicy,
    RateLimitRule,
    SourceSelector,
    rule_id,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# A value in a 429 body is a client's header value (up to Envoy's 60 KiB): enough of it to
# recognise, not an echo of whatever the client sent.
SHOWN_VALUE_CHARS = 64


@dataclass(frozen=True)
class GlobalRule:
    id: str
    policy: RateLimitPolicy
    index: int
    rule: RateLimitRule
    sources: tuple[tuple[SourceSelector, Network], ...]
    """The rule's ``sourceCIDR`` selectors in the order the proxies send their entries."""

    @property
    def requests(self) -> int:
        return self.rule.limit.requests

    @property
    def window_seconds(self) -> int:
        return self.rule.limit.window_seconds

    def describe_limit(self) -> str:
        """``default/backend-per-user global/0 (10 per Minute)``."""
        limit = self.rule.limit
        return (
            f"{self.policy.qualified_name} global/{self.index} ({limit.requests} per {limit.unit})"
        )

    def describe_entry(self, key: str, value: str) -> str:
        """One selector entry as a person reads it: ``x-user=alice``."""
        if len(value) > SHOWN_VALUE_CHARS:
            value = value[:SHOWN_VALUE_CHARS] + "…"
        if key.startswith(HEADER_DESCRIPTOR_PREFIX):
            return f"{key.removeprefix(HEADER_DESCRIPTOR_PREFIX)}={value}"
        if key == HEADER_MATCH_DESCRIPTOR_KEY:
            selector = self._header_match(value)
            if selector is None or selector.value is None:
                return f"{value} matched"
            operator = "~" if selector.type == "RegularExpression" else "="
            return f"{value}{'!' if selector.invert else ''}{operator}{selector.value}"
        if key == PATH_DESCRIPTOR_KEY:
            return f"path={value}"
        if key == SOURCE_DESCRIPTOR_KEY:
            return f"source={value}"
        return f"{key}={value}"

    def _header_match(self, name: str) -> HeaderSelector | None:
        for selector in self.rule.client_selectors:
            for header in selector.headers:
                if header.name.lower() == name.lower() and header.type != "Distinct":
                    return header
        return None


class RuleIndex:
    """Every global rule of a config's RateLimitPolicies, by id."""

    def __init__(self, policies: Iterable[RateLimitPolicy]) -> None:
        self._rules: dict[str, GlobalRule] = {}
        for policy in policies:
            for index, rule in enumerate(policy.global_):
                self._rules[rule_id(policy, "global", index)] = _indexed(policy, index, rule)

    def get(self, rule_id: str) -> GlobalRule | None:
        return self._rules.get(rule_id)

    def __len__(self) -> int:
        return len(self._rules)


def _indexed(policy: RateLimitPolicy, index: int, rule: RateLimitRule) -> GlobalRule:
    sources = tuple(
        (selector.source_cidr, ipaddress.ip_network(selector.source_cidr.cidr, strict=False))
        for selector in rule.client_selectors
        if selector.source_cidr is not None
    )
    return GlobalRule(rule_id(policy, "global", index), policy, index, rule, sources)


def source_counter_value(selector: SourceSelector, cidr: Network, sent: str) -> str | None:
    """What a source entry counts under: for ``Exact`` the CIDR itself (every address in it
    shares one counter; None for an address outside it, which the rule does not count), for
    ``Distinct`` the address's group by the CIDR's prefix length (``0.0.0.0/24``: one
    counter per /24). None too for a value that is not an address.

    The proxy may send a bare address or one already masked (``10.1.2.0/24``): both work.
    """
    try:
        address = ipaddress.ip_network(sent, strict=False).network_address
    except ValueError:
        return None
    if selector.type == "Exact":
        return str(cidr) if address.version == cidr.version and address in cidr else None
    # An IPv6 client of an IPv4 prefix (or the reverse) is a group of its own.
    prefix = cidr.prefixlen if address.version == cidr.version else address.max_prefixlen
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def is_source_entry(key: str) -> bool:
    return key == SOURCE_DESCRIPTOR_KEY
