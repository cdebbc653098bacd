"""The grpc.aio shell around the stream state machines: ADS over SotW and Delta.

Each stream reads requests and waits for snapshot changes concurrently; both feed one queue,
so the state machine sees one event at a time and never needs a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format

from pilotfish.errors import PilotfishError
from pilotfish.model.proxy import ProxyNode
from pilotfish.snapshot import Snapshot, type_urls
from pilotfish.xds.delta import DeltaStream
from pilotfish.xds.protocol import (
    Action,
    DeltaRequestReceived,
    NackReceived,
    RequestReceived,
    SendResponse,
    SnapshotChanged,
    TypeStatus,
)
from pilotfish.xds.sotw import SotwStream
from pilotfish.xds.source import SnapshotSource
from pilotfish.xds.status_board import ProxyStatusBoard, StreamKind

log = logging.getLogger("pilotfish.xds")

RequestT = TypeVar("RequestT", discovery_pb2.DiscoveryRequest, discovery_pb2.DeltaDiscoveryRequest)
Event = RequestReceived | DeltaRequestReceived | SnapshotChanged


class XdsStreamError(PilotfishError):
    """A stream ended because gRPC failed under it (peer gone, transport error)."""


@dataclass(frozen=True)
class _StreamEnded:
    error: XdsStreamError | None = None


# --- protobuf edge --------------------------------------------------------------------------


def node_from_proto(node: Any) -> ProxyNode:
    metadata = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
    return ProxyNode.from_metadata(node.id, metadata)


def sotw_request_from_proto(request: discovery_pb2.DiscoveryRequest) -> RequestReceived:
    return RequestReceived(
        type_url=request.type_url,
        version_info=request.version_info,
        resource_names=tuple(request.resource_names),
        response_nonce=request.response_nonce,
        error_message=request.error_detail.message if request.HasField("error_detail") else None,
    )


def delta_request_from_proto(request: discovery_pb2.DeltaDiscoveryRequest) -> DeltaRequestReceived:
    return DeltaRequestReceived(
        type_url=request.type_url,
        subscribe=tuple(request.resource_names_subscribe),
        unsubscribe=tuple(request.resource_names_unsubscribe),
        initial_resource_versions=dict(request.initial_resource_versions),
        response_nonce=request.response_nonce,
        error_message=request.error_detail.message if request.HasField("error_detail") else None,
    )


def sotw_response_to_proto(response: SendResponse) -> discovery_pb2.DiscoveryResponse:
    return discovery_pb2.DiscoveryResponse(
        version_info=response.version,
        resources=[r.any for r in response.resources],
        type_url=response.type_url,
        nonce=response.nonce,
    )


def delta_response_to_proto(response: SendResponse) -> discovery_pb2.DeltaDiscoveryResponse:
    return discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=response.version,
        resources=[
            discovery_pb2.Resource(name=r.name, version=r.version, resource=r.any)
            for r in response.resources
        ],
        type_url=response.type_url,
        nonce=response.nonce,
        removed_resources=list(response.removed),
    )


# --- the servicer ---------------------------------------------------------------------------


class _StreamMachine:
    """What both SotwStream and DeltaStream offer the shell."""

    def __init__(self, machine: SotwStream | DeltaStream) -> None:
        self._machine = machine

    def receive(self, event: Event) -> list[Action]:
        if isinstance(self._machine, SotwStream):
            assert not isinstance(event, DeltaRequestReceived)
            return self._machine.receive(event)
        assert not isinstance(event, RequestReceived)
        return self._machine.receive(event)

    def statuses(self) -> list[TypeStatus]:
        return self._machine.statuses()


class AggregatedDiscoveryServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, source: SnapshotSource, board: ProxyStatusBoard) -> None:
        self._source = source
        self._board = board

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        await self._serve(
            request_iterator,
            context,
            "sotw",
            _StreamMachine(SotwStream()),
            sotw_request_from_proto,
            sotw_response_to_proto,
        )

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        await self._serve(
            request_iterator,
            context,
            "delta",
            _StreamMachine(DeltaStream()),
            delta_request_from_proto,
            delta_response_to_proto,
        )

    async def _serve(
        self,
        requests: AsyncIterator[RequestT],
        context: grpc.aio.ServicerContext[Any, Any],
        stream_kind: StreamKind,
        machine: _StreamMachine,
        request_to_event: Callable[[RequestT], RequestReceived | DeltaRequestReceived],
        response_to_proto: Callable[[SendResponse], Any],
    ) -> None:
        try:
            first = await anext(aiter(requests))
        except StopAsyncIteration:
            return
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:
            log.info("xDS stream failed before its first request: %s", exc)
            return
        node = node_from_proto(first.node)
        stream_id = self._board.stream_opened(node, stream_kind)
        try:
            await self._run_stream(
                requests,
                context,
                node,
                stream_id,
                machine,
                first,
                request_to_event,
                response_to_proto,
            )
        except XdsStreamError as exc:
            log.info("xDS stream of %s ended: %s", node.id, exc)
            # Tells a proxy that is still listening why; it reconnects either way.
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details(str(exc))
        finally:
            self._board.stream_closed(stream_id)

    async def _run_stream(
        self,
        requests: AsyncIterator[RequestT],
        context: grpc.aio.ServicerContext[Any, Any],
        node: ProxyNode,
        stream_id: int,
        machine: _StreamMachine,
        first: RequestT,
        request_to_event: Callable[[RequestT], RequestReceived | DeltaRequestReceived],
        response_to_proto: Callable[[SendResponse], Any],
    ) -> None:
        events: asyncio.Queue[Event | _StreamEnded] = asyncio.Queue()
        seen_generation = self._source.generation
        snapshot = self._snapshot_for(node)
        if snapshot is not None:
            events.put_nowait(SnapshotChanged(snapshot))
        events.put_nowait(request_to_event(first))

        reader = asyncio.create_task(self._read(requests, request_to_event, events))
        watcher = asyncio.create_task(self._watch(node, seen_generation, snapshot, events))
        try:
            while True:
                event = await events.get()
                if isinstance(event, _StreamEnded):
                    if event.error is not None:
                        raise event.error
                    return
                for action in machine.receive(event):
                    if isinstance(action, SendResponse):
                        await self._write(context, response_to_proto(action))
                    else:
                        self._log_nack(node, action)
                self._board.stream_updated(stream_id, machine.statuses())
        finally:
            reader.cancel()
            watcher.cancel()
            for task in (reader, watcher):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _snapshot_for(self, node: ProxyNode) -> Snapshot | None:
        try:
            return self._source.snapshot_for(node)
        except Exception as exc:
            # A stream that cannot see its snapshot would serve stale config or nothing;
            # ending it (and only it) makes the proxy reconnect and try again.
            log.exception("snapshot source failed for %s", node.id)
            raise XdsStreamError(f"snapshot source failed for {node.id}: {exc!r}") from exc

    @staticmethod
    async def _write(context: grpc.aio.ServicerContext[Any, Any], message: Any) -> None:
        try:
            await context.write(message)
        except (grpc.RpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
            raise XdsStreamError(f"cannot write response: {exc!r}") from exc

    @staticmethod
    async def _read(
        requests: AsyncIterator[RequestT],
        request_to_event: Callable[[RequestT], RequestReceived | DeltaRequestReceived],
        events: asyncio.Queue[Event | _StreamEnded],
    ) -> None:
        try:
            async for request in requests:
                events.put_nowait(request_to_event(request))
        except (grpc.RpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
            error = XdsStreamError(f"cannot read request: {exc!r}")
            error.__cause__ = exc
            events.put_nowait(_StreamEnded(error))
            return
        events.put_nowait(_StreamEnded())

    async def _watch(
        self,
        node: ProxyNode,
        seen_generation: int,
        last_fed: Snapshot | None,
        events: asyncio.Queue[Event | _StreamEnded],
    ) -> None:
        while True:
            try:
                seen_generation = await self._source.wait_for_change(seen_generation)
            except Exception as exc:
                log.exception("snapshot source failed for %s", node.id)
                error = XdsStreamError(f"snapshot source failed for {node.id}: {exc!r}")
                error.__cause__ = exc
                events.put_nowait(_StreamEnded(error))
                return
            try:
                snapshot = self._snapshot_for(node)
            except XdsStreamError as error:
                events.put_nowait(_StreamEnded(error))
                return
            # None after a snapshot means "nothing complete right now": keep what was sent.
            if snapshot is not None and (last_fed is None or snapshot.version != last_fed.version):
                last_fed = snapshot
                events.put_nowait(SnapshotChanged(snapshot))

    @staticmethod
    def _log_nack(node: ProxyNode, nack: NackReceived) -> None:
        log.warning(
            "NACK from %s for %s version %s: %s",
            node.id,
            type_urls.short_name(nack.type_url),
            nack.rejected_version,
            nack.message,
        )


async def start_xds_server(
    source: SnapshotSource,
    board: ProxyStatusBoard,
    host: str = "127.0.0.1",
    port: int = 0,
) -> tuple[grpc.aio.Server, int]:
    """Start serving ADS; returns the server (stop it with ``await server.stop(grace)``) and
    the port it is bound to (the OS picks one when ``port`` is 0)."""
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
        AggregatedDiscoveryServicer(source, board), server
    )
    bound_port = server.add_insecure_port(f"{host}:{port}")
    if bound_port == 0:
        raise PilotfishError(f"cannot bind the xDS server to {host}:{port}")
    await server.start()
    return server, bound_port
