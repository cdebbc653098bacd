"""Envoy's rate limit service (``envoy.service.ratelimit.v3.RateLimitService``), served on
the xDS port: the proxies' rate limit filters ask it about every request a global rule
covers, and it counts the request against the rule's limit in the config the control
plane serves (rules travel by id only; see ``model.rate_limits``).

The counters are in this process's memory, or in Redis when the served MeshConfig names
one (``spec.rateLimit.redis``); a change of it takes effect with the next request. When
the store fails or is slow the answer is a gRPC UNAVAILABLE, at once, and each proxy's
``failureMode`` decides (allow: the request goes through; deny: it is refused). An outage
is logged once when it starts and once when it ends.

When the in-memory counters are full, only the requests that need a new counter are
refused, as over their limit (a 429 naming the rule), and the counters already kept go on
counting. Not an UNAVAILABLE: under ``failureMode: allow`` that would let exactly the flood
of new values that filled the store through uncounted, and under ``deny`` it would answer
500 for a store that works.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2

from pilotfish.controller.rate_limit_redis import RedisCounters
from pilotfish.model.rate_limits import (
    RATE_LIMIT_RULE_HEADER,
    RateLimitSettings,
    RateLimitUnit,
)
from pilotfish.model.resources import MeshConfig
from pilotfish.ratelimit.decisions import (
    Code,
    Counted,
    Decision,
    Increment,
    NotCounted,
    Planned,
    RequestDescriptor,
    decide,
    decide_counters_full,
    increments,
    plan_request,
    refusal_body,
    refusing_rule,
)
from pilotfish.ratelimit.outage import StoreOutage
from pilotfish.ratelimit.rules import RuleIndex
from pilotfish.ratelimit.stores import (
    CountersFull,
    CounterStore,
    CounterStoreError,
    MemoryCounters,
)
from pilotfish.telemetry.prometheus import MetricFamily, Sample

log = logging.getLogger("pilotfish.ratelimit")

RATE_LIMIT_SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
DECISIONS = "pilotfish_ratelimit_decisions_total"
STORE_ERRORS = "pilotfish_ratelimit_store_errors_total"
COUNTERS_FULL = "pilotfish_ratelimit_counters_full_total"
STORE_UP = "pilotfish_ratelimit_store_up"
FAILURE_MODE = "pilotfish_ratelimit_failure_mode"
# Unknown rule ids remembered so that each is logged once; a proxy sends only ids of some
# config it was given, so this is plenty, and the cap keeps a misbehaving client from
# growing the set.
UNKNOWN_RULES_LOGGED = 1024

_CODES: dict[Code, int] = {
    "OK": rls_pb2.RateLimitResponse.OK,
    "OVER_LIMIT": rls_pb2.RateLimitResponse.OVER_LIMIT,
}
_UNITS: dict[RateLimitUnit, int] = {
    "Second": rls_pb2.RateLimitResponse.RateLimit.SECOND,
    "Minute": rls_pb2.RateLimitResponse.RateLimit.MINUTE,
    "Hour": rls_pb2.RateLimitResponse.RateLimit.HOUR,
    "Day": rls_pb2.RateLimitResponse.RateLimit.DAY,
}
# The protocol's counts are uint32; a larger limit is shown (not enforced) as the largest.
_UINT32_MAX = 2**32 - 1
_FAILURE_WORDS = {
    "allow": "the proxies let the requests the global limits cover through (failureMode allow)",
    "deny": "the proxies refuse the requests the global limits cover (failureMode deny)",
}


class RateLimitService:
    """``ShouldRateLimit``, against ``config()`` (the control plane's served config)."""

    def __init__(
        self,
        config: Callable[[], MeshConfig | None],
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        memory: CounterStore | None = None,
    ) -> None:
        """``memory``: the counters when the served config names no Redis (default: this
        process's ``MemoryCounters``)."""
        self._config = config
        self._clock = clock
        """Unix time: it names the windows, which control planes sharing a Redis share."""
        self._monotonic = monotonic
        self._memory = memory if memory is not None else MemoryCounters(clock)
        self._redis: RedisCounters | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._outage = StoreOutage()
        self._indexed: tuple[MeshConfig | None, RuleIndex] = (None, RuleIndex(()))
        self._unknown_logged: set[str] = set()
        self.decisions: Counter[tuple[str, Code]] = Counter()
        """Per rule id and code, one per descriptor that named a rule and was counted."""
        self.store_errors = 0
        """Requests answered UNAVAILABLE: the store failed, timed out, or was known down."""
        self.counters_full = 0
        """Requests refused because the store had no room for a new counter."""

    # --- the RPC ------------------------------------------------------------------------------

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rls_pb2.RateLimitResponse:
        config = self._config()
        settings = config.mesh.rate_limit if config is not None else RateLimitSettings()
        planned = plan_request(
            self._rules(config),
            request.domain,
            [_descriptor(d) for d in request.descriptors],
            request.hits_addend,
            self._clock(),
        )
        self._log_unknown(planned)
        wanted = increments(planned)
        try:
            counts = await self._count(self._store(settings), wanted) if wanted else []
        except CounterStoreError as exc:
            self.store_errors += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise  # abort raised already
        except CountersFull as full:
            self.counters_full += 1
            if full.newly:
                log.warning(
                    "global rate limits: %s: requests that need a new counter are refused "
                    "(429) until windows end; the counters kept go on counting",
                    full,
                )
            decision = decide_counters_full(planned)
        else:
            decision = decide(planned, counts)
        for item in decision.descriptors:
            if item.rule is not None:
                self.decisions[(item.rule.id, item.code)] += 1
        return decision_to_proto(decision)

    async def _count(self, store: CounterStore, wanted: Sequence[Increment]) -> list[int]:
        if not self._outage.may_call(self._monotonic()):
            raise CounterStoreError(
                f"{store.name} is failing: no rate limit decisions until it answers again"
            )
        try:
            counts = await store.increment(wanted)
        except CountersFull:
            raise  # the store answered: not a failure, and not a success either
        except Exception as exc:
            # Whatever went wrong, the proxy gets UNAVAILABLE with a reason (not gRPC's
            # UNKNOWN) and the outage machine sees it.
            failure = (
                exc
                if isinstance(exc, CounterStoreError)
                else CounterStoreError(f"{store.name} failed: {exc!r}")
            )
            started = self._outage.call_failed(self._monotonic(), str(failure))
            if started is not None:
                mode = self._settings().failure_mode
                log.warning(
                    "global rate limits: %s; until it answers again %s",
                    failure,
                    _FAILURE_WORDS[mode],
                )
            if failure is exc:
                raise
            raise failure from exc
        ended = self._outage.call_succeeded(self._monotonic())
        if ended is not None:
            log.warning(
                "global rate limits: %s answers again after %.1f s (%d requests were not "
                "decided meanwhile)",
                store.name,
                ended.seconds,
                ended.failed_calls,
            )
        return counts

    # --- the served config --------------------------------------------------------------------

    def _settings(self) -> RateLimitSettings:
        config = self._config()
        return config.mesh.rate_limit if config is not None else RateLimitSettings()

    def _rules(self, config: MeshConfig | None) -> RuleIndex:
        seen, rules = self._indexed
        if config is not seen:
            rules = RuleIndex(config.rate_limit_policies if config is not None else ())
            self._indexed = (config, rules)
        return rules

    def _store(self, settings: RateLimitSettings) -> CounterStore:
        address = settings.redis_address
        current = self._redis
        if address is None:
            if current is not None:
                self._retire(current)
                self._redis = None
                log.info("global rate limit counters are now in the control plane's memory")
            return self._memory
        if current is None or (current.address, current.timeout) != (address, settings.timeout):
            if current is not None:
                self._retire(current)
            self._redis = current = RedisCounters(address, settings.timeout)
            self._outage = StoreOutage()
            log.info("global rate limit counters are now in %s", current.name)
        return current

    def _retire(self, store: RedisCounters) -> None:
        self._outage = StoreOutage()
        task = asyncio.get_running_loop().create_task(store.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _log_unknown(self, planned: Sequence[Planned]) -> None:
        for item in planned:
            if not isinstance(item, NotCounted) or item.reason != "unknown_rule":
                continue
            rule_id = item.rule_id or ""
            if rule_id in self._unknown_logged or len(self._unknown_logged) >= UNKNOWN_RULES_LOGGED:
                continue
            self._unknown_logged.add(rule_id)
            log.warning(
                "a proxy asked about global rate limit rule %r, which the served config does "
                "not have (a proxy that has not taken the latest config yet?): its requests "
                "are allowed and not counted",
                rule_id,
            )

    # --- what /metrics shows ------------------------------------------------------------------

    def families(self) -> list[MetricFamily]:
        settings = self._settings()
        # The store the served config names (the service switches to it with the next call).
        address = settings.redis_address
        store = f"redis {address}" if address is not None else self._memory.name
        return [
            MetricFamily(
                DECISIONS,
                "Global rate limit decisions, per rule and code (one per descriptor counted).",
                "counter",
                [
                    Sample((("rule", rule), ("code", code)), n)
                    for (rule, code), n in sorted(self.decisions.items())
                ],
            ),
            MetricFamily(
                STORE_ERRORS,
                "Rate limit requests answered UNAVAILABLE because the counter store failed, "
                "timed out or was known to be down (the proxies' failureMode decided them).",
                "counter",
                [Sample((), self.store_errors)],
            ),
            MetricFamily(
                COUNTERS_FULL,
                "Rate limit requests refused (429) because the in-memory counters were full "
                "and the request needed a new one.",
                "counter",
                [Sample((), self.counters_full)],
            ),
            MetricFamily(
                STORE_UP,
                "1 while the global rate limit counter store the served MeshConfig names "
                "answers, 0 during an outage.",
                "gauge",
                [Sample((("store", store),), 0 if self._outage.down else 1)],
            ),
            MetricFamily(
                FAILURE_MODE,
                "What the proxies do when the rate limit service fails: 1 for the mode the "
                "served MeshConfig's spec.rateLimit.failureMode sets.",
                "gauge",
                [
                    Sample((("mode", m),), 1 if m == settings.failure_mode else 0)
                    for m in _FAILURE_WORDS
                ],
            ),
        ]

    async def close(self) -> None:
        if self._redis is not None:
            self._retire(self._redis)
            self._redis = None
        await asyncio.gather(*self._closing, return_exceptions=True)


def _descriptor(descriptor: Any) -> RequestDescriptor:
    own = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else None
    return RequestDescriptor(tuple((e.key, e.value) for e in descriptor.entries), own)


def decision_to_proto(decision: Decision) -> rls_pb2.RateLimitResponse:
    response = rls_pb2.RateLimitResponse(overall_code=_CODES[decision.code])
    for item in decision.descriptors:
        status = response.statuses.add(code=_CODES[item.code])
        planned = item.planned
        if isinstance(planned, Counted):
            limit = planned.rule.rule.limit
            status.current_limit.requests_per_unit = min(limit.requests, _UINT32_MAX)
            status.current_limit.unit = _UNITS[limit.unit]  # type: ignore[assignment]
            status.current_limit.name = planned.rule.id
            status.limit_remaining = min(item.limit_remaining, _UINT32_MAX)
            status.duration_until_reset.seconds = planned.reset_seconds
    refusing = refusing_rule(decision)
    if refusing is not None:
        header = response.response_headers_to_add.add()
        header.key = RATE_LIMIT_RULE_HEADER
        header.value = refusing
        response.raw_body = refusal_body(decision).encode()
    return response


def rate_limit_method_handlers(service: RateLimitService) -> Sequence[grpc.GenericRpcHandler]:
    return (
        grpc.method_handlers_generic_handler(
            RATE_LIMIT_SERVICE,
            {
                "ShouldRateLimit": grpc.unary_unary_rpc_method_handler(
                    service.ShouldRateLimit,
                    request_deserializer=rls_pb2.RateLimitRequest.FromString,
                    response_serializer=rls_pb2.RateLimitResponse.SerializeToString,
                )
            },
        ),
    )
