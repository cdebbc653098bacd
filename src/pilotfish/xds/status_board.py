"""Who is connected and how far each proxy's config has got, as ``istioctl proxy-status`` shows."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from pilotfish.model.proxy import ProxyKind
from pilotfish.snapshot import type_urls
from pilotfish.xds.callbacks import StreamInfo, StreamKind, XdsCallbacks
from pilotfish.xds.protocol import (
    DeltaRequestReceived,
    NackReceived,
    RequestReceived,
    SendResponse,
    SyncStatus,
    TypeStatus,
)


@dataclass(frozen=True)
class ProxyStatus:
    stream_id: int
    node_id: str
    kind: ProxyKind
    service: str | None
    connected_since: float
    stream_kind: StreamKind
    types: tuple[TypeStatus, ...] = ()
    generation: int | None = None
    """The source's generation the stream follows; None before its first snapshot."""

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


class ProxyStatusBoard(XdsCallbacks):
    """Holds one entry per open stream; a proxy that reconnects appears under a new stream.

    One subscriber of the xDS server among others: everything it shows comes from the
    server's callbacks.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # Keyed by the stream itself: ids are only unique within one server.
        self._streams: dict[StreamInfo, ProxyStatus] = {}
        # Per stream and type, the nonce of the response the proxy has still to answer.
        self._unanswered: dict[StreamInfo, dict[str, str]] = {}
        # Set and replaced on every change that can end a wait (see wait_until_answered).
        self._changed = asyncio.Event()
        self._waiters = 0

    # --- callbacks ----------------------------------------------------------------------

    def stream_opened(self, stream: StreamInfo) -> None:
        node = stream.node
        self._unanswered[stream] = {}
        self._streams[stream] = ProxyStatus(
            stream_id=stream.stream_id,
            node_id=node.id,
            kind=node.kind,
            service=node.service,
            connected_since=self._clock(),
            stream_kind=stream.kind,
        )

    def request_received(
        self, stream: StreamInfo, request: RequestReceived | DeltaRequestReceived
    ) -> None:
        # Called once the stream took the request in: its ACK, NACK or new subscription shows.
        self._refresh(stream)

    def response_sent(self, stream: StreamInfo, response: SendResponse) -> None:
        unanswered = self._unanswered.get(stream)
        if unanswered is not None:
            unanswered[response.type_url] = response.nonce

    def ack_received(self, stream: StreamInfo, acked: SendResponse) -> None:
        self._answered(stream, acked)

    def nack_received(self, stream: StreamInfo, rejected: SendResponse, nack: NackReceived) -> None:
        self._answered(stream, rejected)

    def snapshot_applied(self, stream: StreamInfo, generation: int) -> None:
        entry = self._streams.get(stream)
        if entry is not None:
            self._streams[stream] = replace(
                entry, types=tuple(stream.statuses()), generation=generation
            )
            self._signal()

    def stream_closed(self, stream: StreamInfo) -> None:
        self._streams.pop(stream, None)
        self._unanswered.pop(stream, None)
        self._signal()

    # --- queries ------------------------------------------------------------------------

    def proxies(self) -> list[ProxyStatus]:
        return sorted(self._streams.values(), key=lambda p: (p.node_id, p.stream_id))

    def find(self, node_id: str) -> ProxyStatus | None:
        """The most recent stream of a node."""
        matches = [p for p in self._streams.values() if p.node_id == node_id]
        return max(matches, key=lambda p: p.stream_id) if matches else None

    def to_json(self) -> list[dict[str, object]]:
        return [p.to_json() for p in self.proxies()]

    def answered(self, generation: int) -> bool:
        """Whether every open stream follows ``generation`` (or a later one) and its proxy
        has answered (ACK or NACK) every response sent to it since."""
        return all(
            status.generation is not None
            and status.generation >= generation
            and not self._unanswered.get(stream)
            for stream, status in self._streams.items()
        )

    async def wait_until_answered(self, generation: int, timeout: float) -> bool:
        """Return True once ``answered(generation)`` holds, False after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._waiters += 1
        try:
            while not self.answered(generation):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
            return True
        finally:
            self._waiters -= 1

    # --- bookkeeping --------------------------------------------------------------------

    def _refresh(self, stream: StreamInfo) -> None:
        entry = self._streams.get(stream)
        if entry is not None:
            self._streams[stream] = replace(entry, types=tuple(stream.statuses()))

    def _answered(self, stream: StreamInfo, response: SendResponse) -> None:
        unanswered = self._unanswered.get(stream)
        if unanswered is not None and unanswered.get(response.type_url) == response.nonce:
            del unanswered[response.type_url]
            self._signal()

    def _signal(self) -> None:
        # Most events have nobody waiting on them; they need not pay for a fresh Event.
        if self._waiters:
            # Waiters hold the old event; a fresh one makes the next wait block again.
            self._changed.set()
            self._changed = asyncio.Event()
