"""Where counters live: the protocol the service calls, and the control plane's own memory.

``MemoryCounters`` is exact within one process (the event loop runs one increment at a
time) and bounded: windows that ended are dropped, and past ``max_keys`` live counters a
request that needs a new one is refused (``CountersFull``) rather than live ones forgotten,
which would let their clients through. A full store is not a failing one: the counters it
keeps go on counting, so a flood of new values cannot switch every limit off.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from pilotfish.errors import PilotfishError
from pilotfish.ratelimit.decisions import Increment

DEFAULT_MAX_KEYS = 200_000
# Seconds between two looks for ended windows; a look walks the windows' ends, not the counters.
SWEEP_INTERVAL_SECONDS = 1.0


class CounterStoreError(PilotfishError):
    """The store did not answer, or not in time: no decision can be made."""


class CountersFull(PilotfishError):
    """No room for a new counter: the request is refused, the store is not failing."""

    def __init__(self, max_keys: int, newly: bool) -> None:
        super().__init__(
            f"the control plane's in-memory rate limit counters are full ({max_keys} live counters)"
        )
        self.newly = newly
        """The first refusal since a new counter was last admitted (for logging once)."""


class CounterStore(Protocol):
    @property
    def name(self) -> str:
        """``memory`` or ``redis 127.0.0.1:6379``, for logs and metrics."""
        ...

    async def increment(self, increments: Sequence[Increment]) -> list[int]:
        """Add each increment's hits; each counter's new value, in order. Raises
        ``CounterStoreError``, or ``CountersFull`` (counting nothing) when a counter the
        request needs cannot be kept."""
        ...

    async def close(self) -> None: ...


class MemoryCounters:
    def __init__(
        self, clock: Callable[[], float] = time.time, max_keys: int = DEFAULT_MAX_KEYS
    ) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._counts: dict[str, int] = {}
        # Keys by the end of their window: an ended window's keys go together, and a sweep
        # costs the number of window ends, not of counters.
        self._ending: dict[int, list[str]] = {}
        self._next_sweep = 0.0
        self._refusing = False

    @property
    def name(self) -> str:
        return "memory"

    def __len__(self) -> int:
        return len(self._counts)

    async def increment(self, increments: Sequence[Increment]) -> list[int]:
        return self.increment_now(increments)

    def increment_now(self, increments: Sequence[Increment]) -> list[int]:
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL_SECONDS
            self._drop_ended(now)
        new = sum(1 for i in increments if i.key not in self._counts)
        if new and len(self._counts) + new > self._max_keys:
            newly, self._refusing = not self._refusing, True
            raise CountersFull(self._max_keys, newly)
        if new:
            self._refusing = False
        values = []
        for item in increments:
            count = self._counts.get(item.key)
            if count is None:
                count = 0
                self._ending.setdefault(item.expires_at, []).append(item.key)
            count += item.hits
            self._counts[item.key] = count
            values.append(count)
        return values

    def _drop_ended(self, now: float) -> None:
        for end in [end for end in self._ending if end <= now]:
            for key in self._ending.pop(end):
                del self._counts[key]

    async def close(self) -> None:
        self._counts.clear()
        self._ending.clear()
