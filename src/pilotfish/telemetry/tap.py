"""Live requests for ``tap`` and ``logs -f``, and the recent ones of each proxy for ``logs``.

``logs`` has the TCP connections too (one line each, when it ended); ``tap`` only requests.

A tap subscriber gets the records its filter lets through in a bounded queue. The feed is a
sink of the hub and runs on the event loop, so it must never wait for a slow reader: when a
subscriber's queue is full, new records are dropped and counted for that subscriber, and its
reader can say how many it missed.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain, islice

from pilotfish.telemetry.records import ConnectionRecord, LogRecord, RequestRecord


@dataclass(frozen=True)
class TapFilter:
    """Which records a subscriber wants; an empty field matches everything."""

    service: str = ""
    """The destination service's hostname, or its short name (``backend``)."""
    path_prefix: str = ""
    workload: str = ""
    """The source or the destination workload."""
    proxy: str = ""
    """The reporting proxy's node id."""
    errors_only: bool = False
    connections: bool = False
    """Whether TCP connections (their ends) come too."""

    def matches(self, record: LogRecord) -> bool:
        if isinstance(record, ConnectionRecord) and (not self.connections or self.path_prefix):
            return False
        if self.service and self.service not in (
            record.destination_service,
            record.destination_service_name,
        ):
            return False
        if (
            self.path_prefix
            and isinstance(record, RequestRecord)
            and not record.path.startswith(self.path_prefix)
        ):
            return False
        if self.workload and self.workload not in (
            record.source.workload,
            record.destination.workload,
        ):
            return False
        if self.proxy and record.proxy != self.proxy:
            return False
        return not (self.errors_only and record.ok)


class TapSubscriber:
    def __init__(
        self, record_filter: TapFilter, max_queued: int, wake: Callable[[], None] | None
    ) -> None:
        self.filter = record_filter
        self.max_queued = max_queued
        self.wake = wake
        """Called after records were queued (the admin route sets an asyncio.Event)."""
        self._queue: deque[LogRecord] = deque()
        self.dropped = 0

    def offer(self, records: Sequence[LogRecord]) -> None:
        queued = False
        for record in records:
            if not self.filter.matches(record):
                continue
            if len(self._queue) >= self.max_queued:
                self.dropped += 1
                continue
            self._queue.append(record)
            queued = True
        if queued and self.wake is not None:
            self.wake()

    def take(self) -> list[LogRecord]:
        """Everything queued, oldest first."""
        taken = list(self._queue)
        self._queue.clear()
        return taken


class TapFeed:
    """The hub's sink that hands records to the subscribers of the moment."""

    def __init__(self, max_subscribers: int = 64, max_queued: int = 1000) -> None:
        self.max_subscribers = max_subscribers
        self.max_queued = max_queued
        self._subscribers: list[TapSubscriber] = []
        self._dropped_by_closed = 0

    @property
    def dropped(self) -> int:
        """Records dropped for full queues, by every subscriber there was."""
        return self._dropped_by_closed + sum(s.dropped for s in self._subscribers)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(
        self, record_filter: TapFilter, wake: Callable[[], None] | None = None
    ) -> TapSubscriber:
        if len(self._subscribers) >= self.max_subscribers:
            raise TapFull(self.max_subscribers)
        subscriber = TapSubscriber(record_filter, self.max_queued, wake)
        self._subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: TapSubscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
            self._dropped_by_closed += subscriber.dropped

    def add(self, records: Sequence[RequestRecord]) -> None:
        for subscriber in self._subscribers:
            subscriber.offer(records)

    def add_connections(self, records: Sequence[ConnectionRecord]) -> None:
        ended = [record for record in records if record.closed]
        for subscriber in self._subscribers:
            if subscriber.filter.connections and ended:
                subscriber.offer(ended)


class TapFull(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} taps are open already: close one first")


class ProxyLogs:
    """The last ``per_proxy`` records of each of at most ``max_proxies`` proxies: requests,
    and TCP connections once they ended."""

    def __init__(self, per_proxy: int = 1000, max_proxies: int = 1000) -> None:
        self.per_proxy = per_proxy
        self.max_proxies = max_proxies
        self._rings: dict[str, deque[LogRecord]] = {}
        self.dropped = 0

    def add_connections(self, records: Sequence[ConnectionRecord]) -> None:
        self.add([record for record in records if record.closed])

    def add(self, records: Sequence[LogRecord]) -> None:
        for record in records:
            ring = self._rings.get(record.proxy)
            if ring is None:
                if len(self._rings) >= self.max_proxies:
                    self._forget_quietest()
                ring = self._rings[record.proxy] = deque(maxlen=self.per_proxy)
            ring.append(record)

    def _forget_quietest(self) -> None:
        # The proxy whose last record is the oldest is most likely gone.
        quietest = min(self._rings, key=lambda p: self._rings[p][-1].start_time)
        self.dropped += len(self._rings.pop(quietest))

    @property
    def proxies(self) -> list[str]:
        return sorted(self._rings)

    def recent(self, proxy: str | None = None, limit: int = 100) -> list[LogRecord]:
        """The last ``limit`` records of ``proxy`` (of every proxy when None), oldest first."""
        if proxy is not None:
            ring = self._rings.get(proxy, deque())
            return list(ring)[-limit:] if limit > 0 else []
        if limit <= 0:
            return []
        # Only the last ``limit`` of each ring can be among the last ``limit`` of all. Read
        # newest first, so that among equal start times the later arrival stays the later
        # (nlargest keeps the first read of equals first).
        rings = reversed(self._rings.values())
        tails = chain.from_iterable(islice(reversed(r), limit) for r in rings)
        return heapq.nlargest(limit, tails, key=_start_time)[::-1]


def _start_time(record: LogRecord) -> float:
    return record.start_time
