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
    server's callbacks. Each callback is O(1): a change reaches every stream and every
    stream's ACK reaches the board, while the board is read far less often, so the types'
    statuses are read from the streams when the board is read.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # Keyed by the stream itself: ids are only unique within one server. The entries
        # hold what does not change while the stream is open.
        self._streams: dict[StreamInfo, ProxyStatus] = {}
        # The generation each stream follows (absent before its first snapshot).
        self._generations: dict[StreamInfo, int] = {}
        # Per stream and type, the nonce of the response the proxy has still to answer.
        self._unanswered: dict[StreamInfo, dict[str, str]] = {}
        # The streams with at least one response unanswered.
        self._awaiting: set[StreamInfo] = set()
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
        # The request's effect (ACK, NACK, subscription) shows in the stream's statuses,
        # which the board reads when it is read.
        pass

    def response_sent(self, stream: StreamInfo, response: SendResponse) -> None:
        unanswered = self._unanswered.get(stream)
        if unanswered is not None:
            unanswered[response.type_url] = response.nonce
            self._awaiting.add(stream)

    def ack_received(self, stream: StreamInfo, acked: SendResponse) -> None:
        self._answered(stream, acked)

    def nack_received(self, stream: StreamInfo, rejected: SendResponse, nack: NackReceived) -> None:
        self._answered(stream, rejected)

    def snapshot_applied(self, stream: StreamInfo, generation: int) -> None:
        if stream in self._streams:
            self._generations[stream] = generation
            if not self._awaiting:  # else the last answer is what can end a wait
                self._signal()

    def stream_closed(self, stream: StreamInfo) -> None:
        self._streams.pop(stream, None)
        self._generations.pop(stream, None)
        self._unanswered.pop(stream, None)
        self._awaiting.discard(stream)
        self._signal()

    # --- queries ------------------------------------------------------------------------

    def proxies(self) -> list[ProxyStatus]:
        """Every open stream; its types as the stream has them now (during a push they may
        already be past the ``generation`` it last applied)."""
        return sorted(
            (self._status(stream) for stream in self._streams),
            key=lambda p: (p.node_id, p.stream_id),
        )

    def find(self, node_id: str) -> ProxyStatus | None:
        """The most recent stream of a node."""
        matches = [s for s, p in self._streams.items() if p.node_id == node_id]
        return self._status(max(matches, key=lambda s: s.stream_id)) if matches else None

    def to_json(self) -> list[dict[str, object]]:
        return [p.to_json() for p in self.proxies()]

    def answered(self, generation: int) -> bool:
        """Whether every open stream follows ``generation`` (or a later one) and its proxy
        has answered (ACK or NACK) every response sent to it since."""
        if self._awaiting:
            return False
        return all(self._generations.get(stream, -1) >= generation for stream in self._streams)

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

    def _status(self, stream: StreamInfo) -> ProxyStatus:
        return replace(
            self._streams[stream],
            types=tuple(stream.statuses()),
            generation=self._generations.get(stream),
        )

    def _answered(self, stream: StreamInfo, response: SendResponse) -> None:
        unanswered = self._unanswered.get(stream)
        if unanswered is not None and unanswered.get(response.type_url) == response.nonce:
            del unanswered[response.type_url]
            if not unanswered:
                self._awaiting.discard(stream)
                if not self._awaiting:  # only then can every stream have answered
                    self._signal()

    def _signal(self) -> None:
        # Most events have nobody waiting on them; they need not pay for a fresh Event.
        if self._waiters:
            # Waiters hold the old event; a fresh one makes the next wait block again.
            self._changed.set()
            self._changed = asyncio.Event()
