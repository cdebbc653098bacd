"""``MeshConfig.spec.rateLimit`` -> ``model.RateLimitSettings``: where the global rate
limit counters live and what a proxy does when the rate limit service does not answer::

    spec:
      rateLimit:
        redis: {address: 127.0.0.1:6379}   # counters in Redis, shared by control planes
        failureMode: deny                  # or allow (the default): when the service fails
        timeout: 50ms                      # the proxies wait this long (default 20ms)

Without ``redis`` the control plane keeps the counters in its own memory (exact for one
control plane). Only a plain ``host:port`` without a password or database is read: the
Redis of this machine needs neither, and a field for them would be a secret in the folder.
"""

from __future__ import annotations

import re

from pilotfish.load.fields import PORT_MAX, FieldReader, Fields
from pilotfish.load.yaml_source import join_path
from pilotfish.model.rate_limits import FailureMode, RateLimitSettings

RATE_LIMIT_FIELDS = ("redis", "failureMode", "timeout")
REDIS_FIELDS = ("address",)
FAILURE_MODES: tuple[FailureMode, ...] = ("allow", "deny")
_HOST_PORT = re.compile(r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):(?P<port>[0-9]{1,5})")


def parse_rate_limit_settings(reader: FieldReader, spec: Fields) -> RateLimitSettings:
    defaults = RateLimitSettings()
    fields = reader.child_mapping(spec, "rateLimit", "spec", RATE_LIMIT_FIELDS)
    if fields is None:
        return defaults
    path = "spec.rateLimit"
    address = _redis_address(reader, fields, path)
    mode = reader.choice(fields, "failureMode", path, FAILURE_MODES)
    timeout = reader.duration(fields, "timeout", path)
    return RateLimitSettings(
        redis_address=address,
        failure_mode="deny" if mode == "deny" else defaults.failure_mode,
        timeout=timeout if timeout is not None else defaults.timeout,
    )


def _redis_address(reader: FieldReader, fields: Fields, path: str) -> str | None:
    redis = reader.child_mapping(fields, "redis", path, REDIS_FIELDS)
    if redis is None:
        return None
    redis_path = join_path(path, "redis")
    address = reader.string(redis, "address", redis_path, required=True)
    if address is None:
        return None
    match = _HOST_PORT.fullmatch(address)
    if match is None or not 1 <= int(match["port"]) <= PORT_MAX:
        reader.error(join_path(redis_path, "address"), f'"{address}" is not HOST:PORT')
        return None
    return address
