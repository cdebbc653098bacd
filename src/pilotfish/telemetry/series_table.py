"""The bounded table of label sets behind Istio's metrics (HTTP and TCP alike).

At most ``max_series`` label sets. When a new one comes and the table is full, those idle for
``IDLE_SECONDS`` are evicted (Prometheus reads a series that comes back as a counter reset);
if none is, the caller is told (``None``) and counts what it could not count as dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

DEFAULT_MAX_SERIES = 1000
IDLE_SECONDS = 600.0

S = TypeVar("S")


@dataclass(slots=True)
class _Slot(Generic[S]):
    last_seen: float
    series: S


class SeriesTable(Generic[S]):
    def __init__(self, max_series: int) -> None:
        self.max_series = max_series
        self._slots: OrderedDict[tuple[str, ...], _Slot[S]] = OrderedDict()
        """Least recently counted first."""
        self.evicted = 0

    def get(self, key: tuple[str, ...], now: float, make: Callable[[], S]) -> S | None:
        """The series of ``key``, made when new; None when it is new and there is no room."""
        slot = self._slots.get(key)
        if slot is not None:
            self._slots.move_to_end(key)
        else:
            if len(self._slots) >= self.max_series and not self._evict_idle(now):
                return None
            slot = self._slots[key] = _Slot(now, make())
        slot.last_seen = now
        return slot.series

    def items(self) -> Iterator[tuple[tuple[str, ...], S]]:
        for key, slot in self._slots.items():
            yield key, slot.series

    def __len__(self) -> int:
        return len(self._slots)

    def _evict_idle(self, now: float) -> bool:
        """Evict the series idle for ``IDLE_SECONDS``; whether any was."""
        evicted = False
        while self._slots:
            key, oldest = next(iter(self._slots.items()))
            if now - oldest.last_seen < IDLE_SECONDS:
                break
            del self._slots[key]
            self.evicted += 1
            evicted = True
        return evicted
