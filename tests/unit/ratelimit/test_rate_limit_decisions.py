from __future__ import annotations

import pytest

from pilotfish.model.rate_limits import SOURCE_DESCRIPTOR_KEY, RateLimitPolicy
from pilotfish.ratelimit.decisions import (
    Counted,
    Decision,
    NotCounted,
    RequestDescriptor,
    decide,
    decide_counters_full,
    increments,
    plan_request,
    refusal_body,
    refusing_rule,
    selector_digest,
)
from pilotfish.ratelimit.rules import RuleIndex
from pilotfish.ratelimit.stores import CountersFull, CounterStoreError, MemoryCounters
from rate_limit_policies import global_policy, rule

RULE = "default/backend-per-user/global/0"
NOW = 1_700_000_010.5  # 30.5 s into a minute


def rule_entry(rule_id: str = RULE) -> tuple[str, str]:
    return ("pilotfish_rule", rule_id)


def user(name: str, rule_id: str = RULE) -> RequestDescriptor:
    return RequestDescriptor((rule_entry(rule_id), ("header:x-user", name)))


PER_USER = global_policy("backend-per-user", rule(3, "Minute", distinct_header="x-user"))


class Harness:
    """The service's two pure steps around an in-memory store, with a clock of our own."""

    def __init__(self, *policies: RateLimitPolicy) -> None:
        self.now = NOW
        self.rules = RuleIndex(policies)
        self.counters = MemoryCounters(clock=lambda: self.now)

    def ask(
        self, *descriptors: RequestDescriptor, hits: int = 0, domain: str = "pilotfish"
    ) -> Decision:
        planned = plan_request(self.rules, domain, descriptors, hits, self.now)
        return decide(planned, self.counters.increment_now(increments(planned)))

    def codes(self, descriptor: RequestDescriptor, times: int) -> list[str]:
        return [self.ask(descriptor).code for _ in range(times)]


def test_the_counter_key_names_the_domain_rule_a_digest_of_the_values_and_window_start() -> None:
    harness = Harness(PER_USER)
    (planned,) = plan_request(harness.rules, "pilotfish", [user("alice")], 0, NOW)
    assert isinstance(planned, Counted)
    # Fixed here: every control plane sharing a Redis must compute the same key.
    digest = selector_digest((("header:x-user", "alice"),))
    assert digest == "7d8a28320346d2309f6f3b77ea7a313f"
    assert planned.increment.key == f"pilotfish_{RULE}_{digest}_1699999980"
    assert planned.increment.ttl_seconds == 60
    assert planned.increment.expires_at == 1_700_000_040
    assert planned.reset_seconds == 30


def test_a_limit_admits_its_requests_then_refuses_and_says_how_many_remain() -> None:
    harness = Harness(PER_USER)
    decisions = [harness.ask(user("alice")) for _ in range(4)]
    assert [d.code for d in decisions] == ["OK", "OK", "OK", "OVER_LIMIT"]
    assert [d.descriptors[0].limit_remaining for d in decisions] == [2, 1, 0, 0]


def test_a_distinct_header_counts_each_value_on_its_own() -> None:
    harness = Harness(PER_USER)
    assert harness.codes(user("alice"), 4) == ["OK", "OK", "OK", "OVER_LIMIT"]
    assert harness.codes(user("bob"), 3) == ["OK", "OK", "OK"]


def test_a_new_window_starts_counting_again() -> None:
    harness = Harness(PER_USER)
    assert harness.codes(user("alice"), 4)[-1] == "OVER_LIMIT"
    harness.now = 1_700_000_039.9  # still the same minute
    assert harness.ask(user("alice")).code == "OVER_LIMIT"
    harness.now = 1_700_000_040.0
    assert harness.codes(user("alice"), 3) == ["OK", "OK", "OK"]


def test_ended_windows_are_dropped_from_memory() -> None:
    harness = Harness(PER_USER)
    for name in ("alice", "bob", "carol"):
        harness.ask(user(name))
    assert len(harness.counters) == 3
    harness.now += 60
    harness.ask(user("dave"))
    assert len(harness.counters) == 1


def test_hits_addend_of_the_request_and_of_a_descriptor() -> None:
    harness = Harness(PER_USER)
    assert harness.ask(user("alice"), hits=2).descriptors[0].limit_remaining == 1
    assert harness.ask(user("alice"), hits=2).code == "OVER_LIMIT"
    # A descriptor's own addend wins over the request's, and 0 only looks.
    bob = RequestDescriptor(user("bob").entries, hits_addend=0)
    looked = harness.ask(bob, hits=5)
    assert looked.code == "OK" and looked.descriptors[0].limit_remaining == 3
    assert (
        harness.ask(RequestDescriptor(bob.entries, hits_addend=3)).descriptors[0].limit_remaining
        == 0
    )


def test_a_rule_without_selectors_counts_every_request() -> None:
    harness = Harness(global_policy("all", rule(2, "Second")))
    every = RequestDescriptor((rule_entry("default/all/global/0"),))
    assert harness.codes(every, 3) == ["OK", "OK", "OVER_LIMIT"]
    harness.now += 1
    assert harness.ask(every).code == "OK"


def test_exact_source_cidr_counts_addresses_inside_it_together_and_others_not_at_all() -> None:
    policy = global_policy("office", rule(2, source=("Exact", "10.1.0.0/16")))
    harness = Harness(policy)

    def source(address: str) -> RequestDescriptor:
        return RequestDescriptor(
            (rule_entry("default/office/global/0"), (SOURCE_DESCRIPTOR_KEY, address))
        )

    assert harness.ask(source("10.1.2.3")).code == "OK"
    assert harness.ask(source("10.1.9.9")).code == "OK"
    refused = harness.ask(source("10.1.0.0/16"))  # masked by the proxy
    assert refused.code == "OVER_LIMIT"
    assert refusal_body(refused).endswith("(2 per Minute) exceeded for source=10.1.0.0/16 [RL]")
    outside = harness.ask(source("10.2.0.1"))
    assert outside.code == "OK"
    assert outside.descriptors[0].planned == NotCounted("outside_source", "default/office/global/0")
    assert harness.ask(source("not-an-address")).code == "OK"
    assert len(harness.counters) == 1


def test_distinct_source_groups_addresses_by_the_prefix_length() -> None:
    harness = Harness(global_policy("per-net", rule(1, source=("Distinct", "0.0.0.0/24"))))

    def source(address: str) -> RequestDescriptor:
        return RequestDescriptor(
            (rule_entry("default/per-net/global/0"), (SOURCE_DESCRIPTOR_KEY, address))
        )

    assert harness.ask(source("10.0.0.1")).code == "OK"
    assert harness.ask(source("10.0.0.200")).code == "OVER_LIMIT"
    assert harness.ask(source("10.0.1.1")).code == "OK"


def test_an_unknown_rule_id_or_a_foreign_descriptor_is_allowed_and_not_counted() -> None:
    harness = Harness(PER_USER)
    gone = harness.ask(user("alice", "default/removed/global/0"))
    assert gone.code == "OK"
    assert gone.descriptors[0].planned == NotCounted("unknown_rule", "default/removed/global/0")
    foreign = harness.ask(RequestDescriptor((("generic_key", "x"),)))
    assert foreign.descriptors[0].planned == NotCounted("not_ours")
    assert harness.ask(user("alice"), domain="other").descriptors[0].planned == NotCounted(
        "not_ours"
    )
    assert len(harness.counters) == 0


def test_one_descriptor_over_its_limit_refuses_the_request() -> None:
    both = global_policy("two", rule(1), rule(5))
    harness = Harness(both)
    first = RequestDescriptor((rule_entry("default/two/global/0"),))
    second = RequestDescriptor((rule_entry("default/two/global/1"),))
    assert harness.ask(first, second).code == "OK"
    decision = harness.ask(first, second)
    assert decision.code == "OVER_LIMIT"
    assert [d.code for d in decision.descriptors] == ["OVER_LIMIT", "OK"]
    assert decision.descriptors[1].limit_remaining == 3
    assert refusing_rule(decision) == "default/two/global/0"


def test_the_refusal_body_names_the_policy_the_rule_its_limit_and_the_values() -> None:
    policy = global_policy(
        "backend-per-user", rule(3, distinct_header="x-user", exact_header=("x-tier", "free"))
    )
    harness = Harness(policy)
    descriptor = RequestDescriptor(
        (rule_entry(), ("header:x-user", "alice"), ("header_match", "x-tier"))
    )
    decisions = [harness.ask(descriptor) for _ in range(4)]
    assert refusal_body(decisions[-1]) == (
        "pilotfish: rate limit default/backend-per-user global/0 (3 per Minute) exceeded "
        "for x-user=alice, x-tier=free [RL]"
    )


def test_a_full_memory_store_refuses_new_counters_instead_of_forgetting_live_ones() -> None:
    harness = Harness(PER_USER)
    harness.counters = MemoryCounters(clock=lambda: harness.now, max_keys=2)
    harness.ask(user("alice"))
    harness.ask(user("bob"))
    with pytest.raises(CountersFull, match="full") as first:
        harness.ask(user("carol"))
    with pytest.raises(CountersFull) as second:
        harness.ask(user("dave"))
    assert not isinstance(first.value, CounterStoreError)  # not an outage
    assert (first.value.newly, second.value.newly) == (True, False)
    assert harness.ask(user("alice")).descriptors[0].limit_remaining == 1
    harness.now += 60  # the window ends: room again, and the next refusal is news again
    harness.ask(user("carol"))
    harness.ask(user("dave"))
    with pytest.raises(CountersFull) as third:
        harness.ask(user("erin"))
    assert third.value.newly


def test_a_request_refused_for_full_counters_says_so_and_names_the_rule() -> None:
    harness = Harness(PER_USER)
    planned = plan_request(harness.rules, "pilotfish", [user("carol")], 0, NOW)
    decision = decide_counters_full(planned)
    assert decision.code == "OVER_LIMIT"
    assert refusing_rule(decision) == RULE
    assert refusal_body(decision) == (
        "pilotfish: rate limit default/backend-per-user global/0 (3 per Minute) not counted "
        "for x-user=carol: the control plane's rate limit counters are full [RL]"
    )


def test_values_cannot_be_crafted_to_share_a_counter_and_keys_stay_small() -> None:
    policy = global_policy("two", rule(1, distinct_header="x-a"))
    harness = Harness(policy)

    def two(a: str, b: str) -> RequestDescriptor:
        return RequestDescriptor(
            (rule_entry("default/two/global/0"), ("header:x-a", a), ("header:x-b", b))
        )

    # Joined with "_", both of these were pilotfish_..._header:x-a_p_header:x-b_q_header:x-b_r_.
    assert harness.ask(two("p", "q_header:x-b_r")).code == "OK"
    assert harness.ask(two("p_header:x-b_q", "r")).code == "OK"
    assert len(harness.counters) == 2
    (planned,) = plan_request(harness.rules, "pilotfish", [two("x" * 60_000, "y")], 0, NOW)
    assert isinstance(planned, Counted)
    assert len(planned.increment.key) == len("pilotfish_default/two/global/0__1699999980") + 32


def test_each_window_end_drops_its_own_counters() -> None:
    minute = global_policy("per-minute", rule(5, "Minute"))
    hour = global_policy("per-hour", rule(5, "Hour"))
    harness = Harness(minute, hour)
    every_minute = RequestDescriptor((rule_entry("default/per-minute/global/0"),))
    every_hour = RequestDescriptor((rule_entry("default/per-hour/global/0"),))
    harness.ask(every_minute, every_hour)
    harness.ask(every_hour)
    harness.now = 1_700_000_040.0  # the minute ended, the hour goes on
    decision = harness.ask(user("alice"))  # no counter of ours: only the sweep happens
    assert decision.code == "OK" and len(harness.counters) == 1
    assert harness.ask(every_hour).descriptors[0].limit_remaining == 2
    assert harness.ask(every_minute).descriptors[0].limit_remaining == 4


def test_a_huge_hits_addend_is_clamped_before_it_reaches_the_store() -> None:
    harness = Harness(PER_USER)
    # A UInt64 past what Redis's INCRBY takes (2^63-1) would fail the whole pipeline.
    huge = RequestDescriptor(user("alice").entries, hits_addend=2**64 - 1)
    (planned,) = plan_request(harness.rules, "pilotfish", [huge], 0, NOW)
    assert isinstance(planned, Counted)
    assert planned.increment.hits == 2**32 - 1
    (from_request,) = plan_request(harness.rules, "pilotfish", [user("bob")], 2**40, NOW)
    assert isinstance(from_request, Counted) and from_request.increment.hits == 2**32 - 1
    assert harness.ask(huge).code == "OVER_LIMIT"


def test_the_refusal_body_shortens_a_long_value() -> None:
    harness = Harness(PER_USER)
    long_value = "a" * 60_000
    decisions = [harness.ask(user(long_value)) for _ in range(4)]
    body = refusal_body(decisions[-1])
    assert body.endswith(f"exceeded for x-user={'a' * 64}\u2026 [RL]")
    assert len(body) < 200
