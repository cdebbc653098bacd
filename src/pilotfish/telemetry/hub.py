"""Where the records of every proxy arrive, and which views they are handed to.

The access-log service hands each batch it decodes to ``TelemetryHub.ingest``; every sink
(Istio's metrics, the live windows, the per-proxy logs, the tap feed) takes the batch in
turn, synchronously, on the event loop. A sink must be quick and must not raise. TCP
connection records go the same way to the connection sinks (``ingest_connections``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from pilotfish.telemetry.records import ConnectionRecord, RequestRecord

log = logging.getLogger("pilotfish.telemetry")


class RecordSink(Protocol):
    def add(self, records: Sequence[RequestRecord]) -> None: ...


class ConnectionSink(Protocol):
    def add_connections(self, records: Sequence[ConnectionRecord]) -> None: ...


class TelemetryHub:
    def __init__(self) -> None:
        self._sinks: list[RecordSink] = []
        self._connection_sinks: list[ConnectionSink] = []
        self.records_ingested = 0
        self.connection_records_ingested = 0

    def add_sink(self, sink: RecordSink) -> None:
        self._sinks.append(sink)

    def add_connection_sink(self, sink: ConnectionSink) -> None:
        self._connection_sinks.append(sink)

    def ingest_connections(self, records: Sequence[ConnectionRecord]) -> None:
        self.connection_records_ingested += len(records)
        for sink in self._connection_sinks:
            try:
                sink.add_connections(records)
            except Exception:  # one broken view must not blind the others
                log.exception("telemetry sink %r failed on %d records", sink, len(records))

    def ingest(self, records: Sequence[RequestRecord]) -> None:
        self.records_ingested += len(records)
        for sink in self._sinks:
            try:
                sink.add(records)
            except Exception:  # one broken view must not blind the others
                log.exception("telemetry sink %r failed on %d records", sink, len(records))
