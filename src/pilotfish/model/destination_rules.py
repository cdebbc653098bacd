"""Which DestinationRule governs a service: the one lookup validation and translation share."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pilotfish.model.resources import DestinationRule, qualify_host


def host_matches(pattern: str, hostname: str) -> bool:
    """``*.foo.com`` covers ``a.foo.com`` and ``a.b.foo.com``, not ``foo.com``; ``*`` covers all."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return hostname.endswith(pattern[1:])
    return pattern == hostname


class DestinationRuleLookup:
    """Rules by qualified host, resolved as Istio does: an exact host first, then the longest
    matching wildcard (``*.shop.example.com`` before ``*.example.com`` before ``*``).

    Istio merges several rules for one host; validation rejects that here, so the first rule
    written for a host wins if it ever slips through.
    """

    def __init__(self, rules: Iterable[DestinationRule]) -> None:
        exact: dict[str, DestinationRule] = {}
        wildcards: dict[str, DestinationRule] = {}
        for rule in rules:
            if not rule.host:
                continue
            host = qualify_host(rule.host, rule.meta.namespace)
            (wildcards if host.startswith("*") else exact).setdefault(host, rule)
        self._exact: Mapping[str, DestinationRule] = exact
        # Longest first: the first wildcard that matches is the most specific one.
        self._wildcards = tuple(sorted(wildcards.items(), key=lambda item: -len(item[0])))

    def rule_for(self, hostname: str) -> DestinationRule | None:
        found = self._exact.get(hostname)
        if found is not None:
            return found
        return next((rule for host, rule in self._wildcards if host_matches(host, hostname)), None)
