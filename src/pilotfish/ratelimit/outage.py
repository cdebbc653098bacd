"""A counter store's outages, as a small state machine the service feeds with each call's
outcome. ``failures_to_trip`` failures in a row start one (a single timeout under a burst is
not an outage); it is logged once when it starts and once when it ends, and while it lasts
one call per ``probe_interval`` goes to the store, the others fail at once (a Redis that is
down or hangs costs every request its timeout otherwise)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PROBE_INTERVAL_SECONDS = 0.1
DEFAULT_FAILURES_TO_TRIP = 3


@dataclass(frozen=True)
class OutageStarted:
    error: str


@dataclass(frozen=True)
class OutageEnded:
    seconds: float
    failed_calls: int
    """Calls that failed or were turned away, from the first failure of the outage's run."""


class StoreOutage:
    def __init__(
        self,
        probe_interval: float = DEFAULT_PROBE_INTERVAL_SECONDS,
        failures_to_trip: int = DEFAULT_FAILURES_TO_TRIP,
    ) -> None:
        self._probe_interval = probe_interval
        self._failures_to_trip = failures_to_trip
        self.down_since: float | None = None
        self._failing_since = 0.0
        self._failures_in_a_row = 0
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
        if self._failures_in_a_row == 0:
            self._failing_since = now
        self._failures_in_a_row += 1
        self._failed_calls += 1
        self._next_probe = now + self._probe_interval
        if self.down_since is not None or self._failures_in_a_row < self._failures_to_trip:
            return None
        self.down_since = self._failing_since
        return OutageStarted(error)

    def call_succeeded(self, now: float) -> OutageEnded | None:
        ended = None
        if self.down_since is not None:
            ended = OutageEnded(now - self.down_since, self._failed_calls)
        self.down_since, self._failures_in_a_row, self._failed_calls = None, 0, 0
        return ended
