"""Envoy's access-log service (``envoy.service.accesslog.v3.AccessLogService``), served on the
xDS port: every proxy streams its HTTP and TCP access-log entries here, and each batch
becomes request (or connection) records handed to the telemetry hub.

One stream per proxy and ``log_name``; its first message carries the identifier (the Envoy
node and the log name), later ones only entries. The reporting node is the one its xDS
stream announced (``NodeDirectory``), else the one in the identifier. Also here: the xDS
subscriber that keeps the node directory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2

from pilotfish.model.proxy import ProxyMetadataError, ProxyNode
from pilotfish.model.telemetry import ALS_LOG_NAMES
from pilotfish.telemetry.als_decode import PeerCache, decode_entry
from pilotfish.telemetry.hub import TelemetryHub
from pilotfish.telemetry.nodes import NodeDirectory
from pilotfish.telemetry.records import ConnectionRecord, Reporter, RequestRecord
from pilotfish.telemetry.tcp_decode import ConnectionTracker, decode_tcp_entry
from pilotfish.xds.callbacks import StreamInfo, XdsCallbacks
from pilotfish.xds.server import node_from_proto

log = logging.getLogger("pilotfish.telemetry")

ACCESS_LOG_SERVICE = "envoy.service.accesslog.v3.AccessLogService"
# Entries decoded between two yields to the event loop. A proxy's batch holds up to a second
# of its requests (hundreds to thousands, at ~25-50 us each): decoded in one go, it would hold
# back xDS pushes by tens of milliseconds.
CHUNK_ENTRIES = 100


class NodeDirectoryFeed(XdsCallbacks):
    """Tells the node directory which proxies the xDS streams announce."""

    def __init__(self, nodes: NodeDirectory) -> None:
        self._nodes = nodes

    def stream_opened(self, stream: StreamInfo) -> None:
        self._nodes.connected(stream.node)

    def stream_closed(self, stream: StreamInfo) -> None:
        self._nodes.disconnected(stream.node)


class AccessLogService:
    """``StreamAccessLogs``: decode each batch, hand it to ``hub.ingest``, answer at the end."""

    def __init__(self, hub: TelemetryHub, nodes: NodeDirectory) -> None:
        self._hub = hub
        self._nodes = nodes
        self._peers = PeerCache()
        self.connections = ConnectionTracker()
        """The bytes each open TCP connection last reported (its entries carry totals)."""
        self.streams_open = 0
        self.entries_rejected = 0
        """Entries not turned into records: an unknown log name, or one we failed to read."""

    async def StreamAccessLogs(
        self,
        request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> als_pb2.StreamAccessLogsResponse:
        self.streams_open += 1
        try:
            await self._serve(request_iterator, context)
        finally:
            self.streams_open -= 1
        return als_pb2.StreamAccessLogsResponse()

    async def _serve(
        self,
        messages: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        first = True
        reporter: Reporter | None = None
        announced = ProxyNode(id="")
        async for message in messages:
            if first:
                first = False
                if not message.HasField("identifier"):
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "the first StreamAccessLogsMessage of a stream must carry the identifier",
                    )
                announced = _announced_node(message.identifier.node)
                log_name = message.identifier.log_name
                reporter = ALS_LOG_NAMES.get(log_name)
                if reporter is None:
                    log.warning(
                        "access-log stream of %r has log_name %r, not one of %s: its entries "
                        "are not counted in any metric or view",
                        announced.id,
                        log_name,
                        ", ".join(sorted(ALS_LOG_NAMES)),
                    )
            entries = message.http_logs.log_entry
            tcp_entries = message.tcp_logs.log_entry
            if not entries and not tcp_entries:
                continue
            if reporter is None:
                self.entries_rejected += len(entries) + len(tcp_entries)
                continue
            # Looked up per batch: the xDS stream may announce the node after this one began.
            node = self._nodes.get(announced.id) or announced
            for start in range(0, len(entries), CHUNK_ENTRIES):
                if start:
                    await asyncio.sleep(0)
                records = self._decode(entries[start : start + CHUNK_ENTRIES], reporter, node)
                if records:
                    self._hub.ingest(records)
            for start in range(0, len(tcp_entries), CHUNK_ENTRIES):
                if start:
                    await asyncio.sleep(0)
                chunk = tcp_entries[start : start + CHUNK_ENTRIES]
                connections = self._decode_tcp(chunk, reporter, node)
                if connections:
                    self._hub.ingest_connections(connections)

    def _decode(self, entries: Any, reporter: Reporter, node: ProxyNode) -> list[RequestRecord]:
        records: list[RequestRecord] = []
        for entry in entries:
            # A long stream's periodic entry (HCM access_log_flush_interval): the request is
            # counted once, by its final entry.
            if entry.common_properties.intermediate_log_entry:
                continue
            try:
                records.append(decode_entry(entry, reporter, node, self._nodes, self._peers))
            except Exception:  # one odd entry must not lose the rest of the batch
                if self.entries_rejected == 0:
                    log.exception("could not read an access-log entry of %s", node.id)
                self.entries_rejected += 1
        return records

    def _decode_tcp(
        self, entries: Any, reporter: Reporter, node: ProxyNode
    ) -> list[ConnectionRecord]:
        records: list[ConnectionRecord] = []
        for entry in entries:
            try:
                record = decode_tcp_entry(
                    entry, reporter, node, self._nodes, self.connections, self._peers
                )
            except Exception:  # one odd entry must not lose the rest of the batch
                if self.entries_rejected == 0:
                    log.exception("could not read a TCP access-log entry of %s", node.id)
                self.entries_rejected += 1
                continue
            if record is not None:
                records.append(record)
        return records


def _announced_node(node: Any) -> ProxyNode:
    try:
        return node_from_proto(node)
    except ProxyMetadataError as exc:
        log.warning("access-log stream of %r: %s; taking it for a plain sidecar", node.id, exc)
        return ProxyNode(id=node.id)


def access_log_method_handlers(service: AccessLogService) -> Sequence[grpc.GenericRpcHandler]:
    return (
        grpc.method_handlers_generic_handler(
            ACCESS_LOG_SERVICE,
            {
                "StreamAccessLogs": grpc.stream_unary_rpc_method_handler(
                    service.StreamAccessLogs,
                    request_deserializer=als_pb2.StreamAccessLogsMessage.FromString,
                    response_serializer=als_pb2.StreamAccessLogsResponse.SerializeToString,
                )
            },
        ),
    )
