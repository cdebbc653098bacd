"""Who is connected and how far each proxy's config has got, as ``istioctl proxy-status`` shows."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Literal

from pilotfish.model.proxy import ProxyKind, ProxyNode
from pilotfish.snapshot import type_urls
from pilotfish.xds.protocol import SyncStatus, TypeStatus

StreamKind = Literal["sotw", "delta"]


@dataclass(frozen=True)
class ProxyStatus:
    stream_id: int
    node_id: str
    kind: ProxyKind
    service: str | None
    connected_since: float
    stream_kind: StreamKind
    types: tuple[TypeStatus, ...] = ()

    def type_status(self, type_url: str) -> TypeStatus | None:
        return next((t for t in self.types if t.type_url == type_url), None)

    @property
    def overall_status(self) -> SyncStatus:
        """The worst of the types: one NACK or one stale type is what an operator must see."""
        statuses = {t.status for t in self.types}
        for worst in (SyncStatus.NACKED, SyncStatus.STALE, SyncStatus.NOT_SENT):
            if worst in statuses:
                return worst
        return SyncStatus.SYNCED if statuses else SyncStatus.NOT_SENT

    def to_json(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "status": self.overall_status.value,
            "kind": self.kind,
            "service": self.service,
            "connected_since": self.connected_since,
            "stream": self.stream_kind,
            "types": {
                type_urls.short_name(t.type_url): {
                    "status": t.status.value,
                    "snapshot_version": t.desired_version,
                    "sent_version": t.sent_version,
                    "acked_version": t.acked_version,
                    "nack": t.nack_message,
                }
                for t in self.types
            },
        }


class ProxyStatusBoard:
    """Holds one entry per open stream; a proxy that reconnects appears under a new stream."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._ids = itertools.count(1)
        self._streams: dict[int, ProxyStatus] = {}

    def stream_opened(self, node: ProxyNode, stream_kind: StreamKind) -> int:
        stream_id = next(self._ids)
        self._streams[stream_id] = ProxyStatus(
            stream_id=stream_id,
            node_id=node.id,
            kind=node.kind,
            service=node.service,
            connected_since=self._clock(),
            stream_kind=stream_kind,
        )
        return stream_id

    def stream_updated(self, stream_id: int, statuses: Iterable[TypeStatus]) -> None:
        entry = self._streams.get(stream_id)
        if entry is not None:
            self._streams[stream_id] = replace(entry, types=tuple(statuses))

    def stream_closed(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    def proxies(self) -> list[ProxyStatus]:
        return sorted(self._streams.values(), key=lambda p: (p.node_id, p.stream_id))

    def find(self, node_id: str) -> ProxyStatus | None:
        """The most recent stream of a node."""
        matches = [p for p in self._streams.values() if p.node_id == node_id]
        return max(matches, key=lambda p: p.stream_id) if matches else None

    def to_json(self) -> list[dict[str, object]]:
        return [p.to_json() for p in self.proxies()]
