"""What the xDS shell tells its subscribers (the status board, later telemetry) about streams.

The same seam as go-control-plane's ``Callbacks``: the server calls every subscriber, in the
order given, synchronously on the event loop, as things happen. A subscriber must be quick
and must not raise (it would end the stream it was told about); one that wants to do I/O
queues the event and does the work in its own task.

Per stream the order is: ``stream_opened``; then, for each request, ``request_received``
(after the state machine took it in), at most one of ``ack_received`` / ``nack_received``,
and a ``response_sent`` per response it caused; for each snapshot the stream takes,
``response_sent`` per response and then ``snapshot_applied``; finally ``stream_closed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pilotfish.model.proxy import ProxyNode
from pilotfish.xds.protocol import (
    DeltaRequestReceived,
    NackReceived,
    RequestReceived,
    SendResponse,
    TypeStatus,
)

StreamKind = Literal["sotw", "delta"]


@dataclass(frozen=True, eq=False)
class StreamInfo:
    """One ADS stream as subscribers see it. ``statuses()`` reads the stream's state now."""

    stream_id: int
    node: ProxyNode
    kind: StreamKind
    _statuses: Callable[[], list[TypeStatus]] = field(repr=False)

    def statuses(self) -> list[TypeStatus]:
        return self._statuses()


class XdsCallbacks(Protocol):
    """Subclass it to get a no-op for every event you do not care about (the explicit
    ``return None`` keeps mypy from taking the methods for abstract ones)."""

    def stream_opened(self, stream: StreamInfo) -> None:
        """The stream's first request named a node we accept."""
        return None

    def request_received(
        self, stream: StreamInfo, request: RequestReceived | DeltaRequestReceived
    ) -> None:
        """A request arrived; it may be an ACK or NACK, reported right after."""
        return None

    def ack_received(self, stream: StreamInfo, acked: SendResponse) -> None:
        """The proxy accepted ``acked``, the latest response sent on its type. (An answer to an
        older response is not reported: the proxy has a newer one coming.)"""
        return None

    def nack_received(self, stream: StreamInfo, rejected: SendResponse, nack: NackReceived) -> None:
        """The proxy rejected ``rejected``; ``nack.message`` is Envoy's reason, for humans."""
        return None

    def response_sent(self, stream: StreamInfo, response: SendResponse) -> None:
        """``response`` was handed to gRPC for writing."""
        return None

    def snapshot_applied(self, stream: StreamInfo, generation: int) -> None:
        """The stream follows the source's ``generation`` now: it took that generation's
        snapshot (or found it unchanged) and has sent every response it called for."""
        return None

    def stream_closed(self, stream: StreamInfo) -> None:
        """The stream ended, whatever the reason; nothing more comes for it."""
        return None
