"""Where counters live: the protocol the service calls, and the control plane's own memory.

``MemoryCounters`` is exact within one process (the event loop runs one increment at a
time) and bounded: windows that ended are dropped, and past ``max_keys`` live counters a
new one is refused (an error, so the proxies' failureMode decides) rather than forgetting
live ones, which would let their clients through.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from pilotfish.errors import PilotfishError
from pilotfish.ratelimit.decisions import Increment

DEFAULT_MAX_KEYS = 200_000
# Seconds between two looks for ended windows: a look walks every counter.
SWEEP_INTERVAL_SECONDS = 1.0


class CounterStoreError(PilotfishError):
    """The store did not answer, or not in time: no decision can be made."""


class CounterStore(Protocol):
    @property
    def name(self) -> str:
        """``memory`` or ``redis 127.0.0.1:6379``, for logs and metrics."""
        ...

    async def increment(self, increments: Sequence[Increment]) -> list[int]:
        """Add each increment's hits; each counter's new value, in order. Raises
        ``CounterStoreError``."""
        ...

    async def close(self) -> None: ...


class MemoryCounters:
    def __init__(
        self, clock: Callable[[], float] = time.time, max_keys: int = DEFAULT_MAX_KEYS
    ) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._counts: dict[str, tuple[int, int]] = {}  # key -> (count, expires_at)
        self._next_sweep = 0.0

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
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
        new = sum(1 for i in increments if i.key not in self._counts)
        if new and len(self._counts) + new > self._max_keys:
            raise CounterStoreError(
                f"the in-memory rate limit counters are full ({self._max_keys} live counters)"
            )
        values = []
        for item in increments:
            count, _ = self._counts.get(item.key, (0, item.expires_at))
            count += item.hits
            self._counts[item.key] = (count, item.expires_at)
            values.append(count)
        return values

    async def close(self) -> None:
        self._counts.clear()
