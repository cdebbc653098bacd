"""Global rate limits, pure: the served config's rules by id, the counters a request bumps,
the decision, the in-memory counters and the state of a counter store's outages.

The gRPC service (``envoy.service.ratelimit.v3.RateLimitService``) and the Redis counters
live in ``controller``.
"""
