"""One ``ShouldRateLimit`` request, decided in two pure steps around the counter store.

``plan_request`` reads the descriptors: which global rule each names, whether the rule
counts it, and the counter it bumps (``Increment``). The store adds the hits and returns
each counter's new value; ``decide`` turns those into codes, the limit remaining and the
time to the window's reset.

Counters are fixed windows keyed by the domain, the rule's id, a digest of the selector
entries and the window's start in unix seconds
(``pilotfish_default/api/global/0_<32 hex digits>_1700000040``). Every control plane
computes the same key for the same request at the same time, so with one Redis behind them
all they share one counter. The digest keeps a key's size fixed whatever the clients send,
and it is of an unambiguous encoding of the entries: no two sets of values share a key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pilotfish.model.rate_limits import RATE_LIMIT_DOMAIN, RULE_DESCRIPTOR_KEY
from pilotfish.ratelimit.rules import GlobalRule, RuleIndex, is_source_entry, source_counter_value

Code = Literal["OK", "OVER_LIMIT"]
# A descriptor's hits_addend is a UInt64: more than 2^32-1 hits is over any limit the protocol
# can state anyway, and Redis refuses an INCRBY past 2^63-1 (failing the whole pipeline).
MAX_HITS = 2**32 - 1
Entries = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RequestDescriptor:
    entries: Entries
    hits_addend: int | None = None
    """The descriptor's own ``hits_addend`` (0 checks without counting); None: the
    request's."""


@dataclass(frozen=True)
class Increment:
    """Add ``hits`` to ``key``; the counter may be forgotten after ``expires_at``."""

    key: str
    hits: int
    ttl_seconds: int
    expires_at: int


@dataclass(frozen=True)
class Counted:
    rule: GlobalRule
    selectors: Entries
    """The entries after the rule's own, as counted (a source as its CIDR or group)."""
    increment: Increment
    reset_seconds: int


@dataclass(frozen=True)
class NotCounted:
    reason: Literal["not_ours", "unknown_rule", "outside_source"]
    rule_id: str | None = None


Planned = Counted | NotCounted


@dataclass(frozen=True)
class DescriptorDecision:
    code: Code
    planned: Planned
    limit_remaining: int = 0
    """Meaningful only with a counted rule."""

    @property
    def rule(self) -> GlobalRule | None:
        return self.planned.rule if isinstance(self.planned, Counted) else None


@dataclass(frozen=True)
class Decision:
    code: Code
    descriptors: tuple[DescriptorDecision, ...]
    counters_full: bool = False
    """Refused because the store had no room for a counter the request needed."""

    @property
    def over_limit(self) -> tuple[DescriptorDecision, ...]:
        return tuple(d for d in self.descriptors if d.code == "OVER_LIMIT")


def hits_of(descriptor: RequestDescriptor, request_hits: int) -> int:
    """As Envoy means it: a descriptor's own addend wins (0 included); the request's 0 is 1."""
    if descriptor.hits_addend is not None:
        return min(descriptor.hits_addend, MAX_HITS)
    return min(max(1, request_hits), MAX_HITS)


def plan_request(
    rules: RuleIndex,
    domain: str,
    descriptors: Sequence[RequestDescriptor],
    request_hits: int,
    now: float,
) -> list[Planned]:
    return [plan_descriptor(rules, domain, d, hits_of(d, request_hits), now) for d in descriptors]


def plan_descriptor(
    rules: RuleIndex, domain: str, descriptor: RequestDescriptor, hits: int, now: float
) -> Planned:
    entries = descriptor.entries
    if domain != RATE_LIMIT_DOMAIN or not entries or entries[0][0] != RULE_DESCRIPTOR_KEY:
        return NotCounted("not_ours")
    rule = rules.get(entries[0][1])
    if rule is None:
        return NotCounted("unknown_rule", entries[0][1])
    selectors = _counted_selectors(rule, entries[1:])
    if selectors is None:
        return NotCounted("outside_source", rule.id)
    window = rule.window_seconds
    start = int(now) // window * window
    key = f"{domain}_{rule.id}_{selector_digest(selectors)}_{start}"
    return Counted(
        rule, selectors, Increment(key, hits, window, start + window), start + window - int(now)
    )


def selector_digest(selectors: Entries) -> str:
    """128 bits of BLAKE2b over the entries as JSON (which quotes and escapes every key and
    value, so a value cannot pass for a separator), in hex."""
    encoded = json.dumps(selectors, separators=(",", ":")).encode()
    return hashlib.blake2b(encoded, digest_size=16).hexdigest()


def _counted_selectors(rule: GlobalRule, entries: Entries) -> Entries | None:
    """The selector entries as counted; None when a source entry is outside its CIDR."""
    sources = iter(rule.sources)
    counted: list[tuple[str, str]] = []
    for key, value in entries:
        if is_source_entry(key):
            paired = next(sources, None)
            if paired is not None:
                grouped = source_counter_value(*paired, value)
                if grouped is None:
                    return None
                value = grouped
        counted.append((key, value))
    return tuple(counted)


def decide(planned: Sequence[Planned], counts: Sequence[int]) -> Decision:
    """``counts``: the store's new value of each ``Counted`` one's counter, in order."""
    values = iter(counts)
    found: list[DescriptorDecision] = []
    for item in planned:
        if not isinstance(item, Counted):
            found.append(DescriptorDecision("OK", item))
            continue
        count = next(values)
        if count > item.rule.requests:
            found.append(DescriptorDecision("OVER_LIMIT", item, 0))
        else:
            found.append(DescriptorDecision("OK", item, item.rule.requests - count))
    code: Code = "OVER_LIMIT" if any(d.code == "OVER_LIMIT" for d in found) else "OK"
    return Decision(code, tuple(found))


def decide_counters_full(planned: Sequence[Planned]) -> Decision:
    """Every counted descriptor refused, none counted: the store could not keep a counter
    the request needed."""
    found = [
        DescriptorDecision("OVER_LIMIT" if isinstance(item, Counted) else "OK", item)
        for item in planned
    ]
    code: Code = "OVER_LIMIT" if any(d.code == "OVER_LIMIT" for d in found) else "OK"
    return Decision(code, tuple(found), counters_full=True)


def increments(planned: Sequence[Planned]) -> list[Increment]:
    return [item.increment for item in planned if isinstance(item, Counted)]


def refusal_body(decision: Decision) -> str:
    """``pilotfish: rate limit default/api global/0 (10 per Minute) exceeded for
    x-user=alice [RL]``; one clause per rule over its limit."""
    clauses = []
    verb = "not counted" if decision.counters_full else "exceeded"
    for item in decision.over_limit:
        planned = item.planned
        assert isinstance(planned, Counted)
        clause = f"rate limit {planned.rule.describe_limit()} {verb}"
        if planned.selectors:
            described = (planned.rule.describe_entry(k, v) for k, v in planned.selectors)
            clause += " for " + ", ".join(described)
        clauses.append(clause)
    if decision.counters_full:
        clauses[-1] += ": the control plane's rate limit counters are full"
    return "pilotfish: " + "; ".join(clauses) + " [RL]"


def refusing_rule(decision: Decision) -> str | None:
    """The id of the first rule over its limit: the proxies' 429 body mappers match the
    rule header's value against one rule id each."""
    for item in decision.over_limit:
        if item.rule is not None:
            return item.rule.id
    return None
