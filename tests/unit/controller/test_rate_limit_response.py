from __future__ import annotations

from envoy.service.ratelimit.v3 import rls_pb2

from pilotfish.controller.rate_limit_service import decision_to_proto
from pilotfish.ratelimit.decisions import RequestDescriptor, decide, plan_request
from pilotfish.ratelimit.rules import RuleIndex
from rate_limit_policies import global_policy, rule

RULE = ("pilotfish_rule", "default/huge/global/0")


def test_a_limit_beyond_the_protocols_uint32_is_shown_as_its_largest_value() -> None:
    rules = RuleIndex([global_policy("huge", rule(10**10, "Day"))])
    planned = plan_request(rules, "pilotfish", [RequestDescriptor((RULE,))], 1, 86_400 * 3 + 10)
    response = decision_to_proto(decide(planned, [1]))
    (status,) = response.statuses
    assert response.overall_code == rls_pb2.RateLimitResponse.OK
    assert status.current_limit.requests_per_unit == 2**32 - 1
    assert status.limit_remaining == 2**32 - 1
    assert status.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.DAY
    assert status.duration_until_reset.seconds == 86_400 - 10
