"""Forward the spans the control plane collects to the mesh's external collectors.

One lane per configured exporter, each a bounded queue drained by its own task in batches:
a slow or dead collector fills its own queue (the overflow is dropped and counted) and never
slows the admin handler that offers spans, nor the other collectors. A failed batch is dropped,
not retried: these are recent traces, and the store keeps its own copy. Failures are logged at
most once a minute per exporter, with the reason. The exporters are read from the running
config on every offer, so a MeshConfig edit takes effect with the next spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from pilotfish.errors import PilotfishError
from pilotfish.model.telemetry import TraceExporter
from pilotfish.telemetry.otlp import spans_to_otlp
from pilotfish.telemetry.traces import Span, spans_to_json

log = logging.getLogger("pilotfish.traces")


@dataclass(frozen=True)
class TraceExportSettings:
    queue_spans: int = 10_000
    """Per exporter; beyond it new spans are dropped (and counted)."""
    batch_spans: int = 500
    timeout_seconds: float = 5.0
    log_interval_seconds: float = 60.0


def export_body(exporter: TraceExporter, spans: Sequence[Span]) -> bytes:
    if exporter.kind == "opentelemetry":
        return json.dumps(spans_to_otlp(spans)).encode()
    return json.dumps(spans_to_json(spans)).encode()


@dataclass
class _Lane:
    exporter: TraceExporter
    queue: deque[Span] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    sent: int = 0
    dropped: int = 0
    failed: int = 0
    last_error: str | None = None
    last_logged: float | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.exporter.name,
            "kind": self.exporter.kind,
            "url": self.exporter.url,
            "queued": len(self.queue),
            "spans_sent": self.sent,
            "spans_dropped": self.dropped,
            "spans_failed": self.failed,
            "last_error": self.last_error,
        }


class TraceExport:
    def __init__(
        self,
        exporters: Callable[[], Sequence[TraceExporter]],
        settings: TraceExportSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._exporters = exporters
        self.settings = settings or TraceExportSettings()
        self._clock = clock
        self._lanes: dict[TraceExporter, _Lane] = {}
        self._session: aiohttp.ClientSession | None = None
        self._stopped = False

    def offer(self, spans: Sequence[Span]) -> None:
        """Queue ``spans`` for every configured exporter; returns at once (no I/O here)."""
        if not spans or self._stopped:  # the admin API may outlive the control plane a moment
            return
        lanes = self._current_lanes()
        for lane in lanes:
            room = max(0, self.settings.queue_spans - len(lane.queue))
            lane.queue.extend(spans[:room])
            lane.dropped += max(0, len(spans) - room)
            lane.ready.set()

    def _current_lanes(self) -> list[_Lane]:
        wanted = tuple(dict.fromkeys(self._exporters()))
        for gone in [e for e in self._lanes if e not in wanted]:
            lane = self._lanes.pop(gone)
            if lane.task is not None:
                lane.task.cancel()
        for exporter in wanted:
            if exporter not in self._lanes:
                lane = _Lane(exporter)
                lane.task = asyncio.get_running_loop().create_task(self._drain(lane))
                self._lanes[exporter] = lane
        return [self._lanes[e] for e in wanted]

    async def _drain(self, lane: _Lane) -> None:
        while True:
            await lane.ready.wait()
            lane.ready.clear()
            while lane.queue:
                count = min(len(lane.queue), self.settings.batch_spans)
                batch = [lane.queue.popleft() for _ in range(count)]
                try:
                    await self._post(lane.exporter, batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # any failure of the collector, or of the way to it
                    lane.failed += len(batch)
                    self._failed(lane, exc)
                else:
                    lane.sent += len(batch)

    async def _post(self, exporter: TraceExporter, batch: Sequence[Span]) -> None:
        if self._session is None:
            # Never through HTTP_PROXY from the environment: `up` points that at a sidecar.
            self._session = aiohttp.ClientSession(trust_env=False)
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_seconds)
        headers = {"content-type": "application/json"}
        # Tens of ms for a full batch: not on the loop that serves the proxies' posts.
        body = await asyncio.to_thread(export_body, exporter, batch)
        async with self._session.post(
            exporter.url, data=body, headers=headers, timeout=timeout
        ) as response:
            if response.status >= 300:
                text = (await response.text(errors="replace"))[:200].strip()
                raise ExportRefused(f"HTTP {response.status} {text}".strip())

    def _failed(self, lane: _Lane, exc: Exception) -> None:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {self.settings.timeout_seconds:g} s"
        lane.last_error = reason
        now = self._clock()
        interval = self.settings.log_interval_seconds
        if lane.last_logged is not None and now - lane.last_logged < interval:
            return
        lane.last_logged = now
        exporter = lane.exporter
        log.warning(
            "trace exporter %s (%s, %s): %s; %d spans lost so far (next failures of it "
            "within %g s are not logged)",
            exporter.name,
            exporter.kind,
            exporter.url,
            reason,
            lane.failed,
            interval,
        )

    def start(self) -> None:
        """Take spans again after a ``stop`` (a control plane started anew)."""
        self._stopped = False

    def status_json(self) -> list[dict[str, object]]:
        return [lane.to_json() for lane in self._lanes.values()]

    async def stop(self) -> None:
        self._stopped = True
        lanes, self._lanes = list(self._lanes.values()), {}
        for lane in lanes:
            if lane.task is not None:
                lane.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.task
        if self._session is not None:
            await self._session.close()
            self._session = None


class ExportRefused(PilotfishError):
    """The collector answered with an error status."""
