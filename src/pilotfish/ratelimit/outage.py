"""A counter store's outages, as a small state machine the service feeds with each call's
outcome: logged once when one starts and once when it ends, and while it lasts one call
per ``probe_interval`` goes to the store, the others fail at once (a Redis that is down or
hangs costs every request its timeout otherwise)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PROBE_INTERVAL_SECONDS = 0.1


@dataclass(frozen=True)
class OutageStarted:
    error: str


@dataclass(frozen=True)
class OutageEnded:
    seconds: float
    failed_calls: int


class StoreOutage:
    def __init__(self, probe_interval: float = DEFAULT_PROBE_INTERVAL_SECONDS) -> None:
        self._probe_interval = probe_interval
        self.down_since: float | None = None
        self._failed_calls = 0
        self._next_probe = 0.0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def may_call(self, now: float) -> bool:
        if self.down_since is None:
            return True
        if now >= self._next_probe:
            self._next_probe = now + self._probe_interval
            return True
        self._failed_calls += 1
        return False

    def call_failed(self, now: float, error: str) -> OutageStarted | None:
        self._failed_calls += 1
        self._next_probe = now + self._probe_interval
        if self.down_since is not None:
            return None
        self.down_since = now
        return OutageStarted(error)

    def call_succeeded(self, now: float) -> OutageEnded | None:
        if self.down_since is None:
            return None
        ended = OutageEnded(now - self.down_since, self._failed_calls)
        self.down_since, self._failed_calls = None, 0
        return ended
