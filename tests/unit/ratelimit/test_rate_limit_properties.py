"""Hypothesis over request sequences (the decisions) and event sequences (store outages)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from pilotfish.ratelimit.decisions import RequestDescriptor, decide, increments, plan_request
from pilotfish.ratelimit.outage import OutageEnded, OutageStarted, StoreOutage
from pilotfish.ratelimit.rules import RuleIndex
from pilotfish.ratelimit.stores import MemoryCounters
from rate_limit_policies import global_policy, rule

LIMIT = 5
RULES = RuleIndex([global_policy("p", rule(LIMIT, "Minute", distinct_header="x-user"))])
NOW = 1_700_000_000.0

requests = st.lists(
    st.tuples(st.sampled_from(["ann", "bob", "cy"]), st.integers(min_value=0, max_value=3)),
    max_size=40,
)


@given(requests)
def test_each_value_is_admitted_while_its_hits_stay_within_the_limit(
    sent: list[tuple[str, int]],
) -> None:
    counters = MemoryCounters(clock=lambda: NOW)
    totals: Counter[str] = Counter()
    for user, hits in sent:
        descriptor = RequestDescriptor(
            (("pilotfish_rule", "default/p/global/0"), ("header:x-user", user))
        )
        planned = plan_request(RULES, "pilotfish", [descriptor], hits, NOW)
        decision = decide(planned, counters.increment_now(increments(planned)))
        totals[user] += max(1, hits)
        assert decision.code == ("OK" if totals[user] <= LIMIT else "OVER_LIMIT")
        assert decision.descriptors[0].limit_remaining == max(0, LIMIT - totals[user])


events = st.lists(
    st.tuples(st.sampled_from(["call", "fail", "succeed"]), st.floats(0, 0.5)), max_size=60
)


@given(events, st.integers(min_value=1, max_value=3))
def test_an_outage_is_announced_once_each_way_and_probed_at_most_once_per_interval(
    steps: list[tuple[str, float]], to_trip: int
) -> None:
    outage = StoreOutage(probe_interval=0.1, failures_to_trip=to_trip)
    now, down, in_a_row, last_probe = 0.0, False, 0, None
    failed, failing_since = 0, 0.0  # the model's count of calls not decided in this run
    for kind, step in steps:
        now += step
        if kind == "call":
            allowed = outage.may_call(now)
            failed += not allowed
            if down and allowed:
                assert last_probe is None or now - last_probe >= 0.1 - 1e-9
                last_probe = now
            assert allowed or down
        elif kind == "fail":
            if in_a_row == 0:
                failing_since = now
            in_a_row += 1
            failed += 1
            started = outage.call_failed(now, "boom")
            assert (started is not None) == (not down and in_a_row >= to_trip)
            assert started is None or started == OutageStarted("boom")
            down, last_probe = down or in_a_row >= to_trip, now
        else:
            ended = outage.call_succeeded(now)
            assert ended == (OutageEnded(now - failing_since, failed) if down else None)
            down, in_a_row, last_probe, failed = False, 0, None, 0
        assert outage.down == down
