"""The servicer driven directly with fake gRPC streams: what it does when its source fails."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from xds_fakes import CDS, EDS, snapshot

from pilotfish.model.proxy import ProxyNode
from pilotfish.snapshot import Snapshot
from pilotfish.xds import AggregatedDiscoveryServicer, InMemorySnapshotSource, ProxyStatusBoard

BASE = snapshot({CDS: {"a": "1"}, EDS: {"a": "1"}})
STEP = 5.0  # bounds each wait so that a hang fails the test instead of stalling the suite


class FakeContext:
    """The part of grpc.aio.ServicerContext the servicer uses."""

    def __init__(self) -> None:
        self.written: asyncio.Queue[Any] = asyncio.Queue()
        self.code: grpc.StatusCode | None = None
        self.details: str | None = None

    async def write(self, message: Any) -> None:
        self.written.put_nowait(message)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


class FakeRequests:
    """A request stream that ends when told to (``None``)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def send(self, request: Any) -> None:
        self.queue.put_nowait(request)

    async def stream(self) -> AsyncIterator[Any]:
        while (request := await self.queue.get()) is not None:
            yield request


class BrokenSnapshotSource(InMemorySnapshotSource):
    """Raises for the nodes named in ``broken_nodes``, serves the others."""

    def __init__(self, broken_nodes: set[str]) -> None:
        super().__init__()
        self.broken_nodes = broken_nodes

    def snapshot_for(self, node: ProxyNode) -> Snapshot | None:
        if node.id in self.broken_nodes:
            raise RuntimeError("registry unreachable")
        return super().snapshot_for(node)


def sotw_request(node_id: str, type_url: str = CDS) -> discovery_pb2.DiscoveryRequest:
    return discovery_pb2.DiscoveryRequest(type_url=type_url, node=base_pb2.Node(id=node_id))


def delta_request(node_id: str) -> discovery_pb2.DeltaDiscoveryRequest:
    return discovery_pb2.DeltaDiscoveryRequest(type_url=CDS, node=base_pb2.Node(id=node_id))


async def one_request(request: Any) -> AsyncIterator[Any]:
    # The stream must end on its own; a hanging stream fails the test's wait_for.
    yield request
    await asyncio.Event().wait()


def failure_logs(caplog: pytest.LogCaptureFixture, node_id: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "pilotfish.xds" and node_id in r.getMessage() and r.exc_info is not None
    ]


async def test_failed_connects_leave_no_stream_on_the_board(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = BrokenSnapshotSource({"n1"})
    source.set_snapshot(BASE)
    board = ProxyStatusBoard()
    servicer = AggregatedDiscoveryServicer(source, [board])
    contexts = [FakeContext() for _ in range(4)]
    with caplog.at_level(logging.INFO, logger="pilotfish.xds"):
        for context in contexts[:3]:
            await asyncio.wait_for(
                servicer.StreamAggregatedResources(one_request(sotw_request("n1")), context),
                STEP,
            )
        await asyncio.wait_for(
            servicer.DeltaAggregatedResources(one_request(delta_request("n1")), contexts[3]),
            STEP,
        )
    assert board.proxies() == []
    assert [c.code for c in contexts] == [grpc.StatusCode.UNAVAILABLE] * 4
    assert all(c.written.empty() for c in contexts)
    assert len(failure_logs(caplog, "n1")) == 4


async def test_a_failing_node_ends_only_its_own_stream(caplog: pytest.LogCaptureFixture) -> None:
    source = BrokenSnapshotSource({"bad"})
    source.set_snapshot(BASE)
    board = ProxyStatusBoard()
    servicer = AggregatedDiscoveryServicer(source, [board])
    good_requests, good_context = FakeRequests(), FakeContext()
    good_requests.send(sotw_request("good"))
    good = asyncio.create_task(
        servicer.StreamAggregatedResources(good_requests.stream(), good_context)
    )
    try:
        first = await asyncio.wait_for(good_context.written.get(), STEP)
        assert first.type_url == CDS

        bad_context = FakeContext()
        with caplog.at_level(logging.INFO, logger="pilotfish.xds"):
            await asyncio.wait_for(
                servicer.StreamAggregatedResources(one_request(sotw_request("bad")), bad_context),
                STEP,
            )
        assert bad_context.code is grpc.StatusCode.UNAVAILABLE
        assert failure_logs(caplog, "bad")
        assert [p.node_id for p in board.proxies()] == ["good"]

        # The healthy stream still follows changes.
        source.set_snapshot(snapshot({CDS: {"a": "2"}, EDS: {"a": "1"}}))
        pushed = await asyncio.wait_for(good_context.written.get(), STEP)
        assert pushed.type_url == CDS and pushed.version_info != first.version_info
        assert not good.done()
    finally:
        good_requests.send(None)
        await asyncio.wait_for(good, STEP)
    assert good_context.code is None
    assert board.proxies() == []


async def test_a_source_failing_later_ends_the_stream_and_leaves_the_board(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = BrokenSnapshotSource(set())
    source.set_snapshot(BASE)
    board = ProxyStatusBoard()
    servicer = AggregatedDiscoveryServicer(source, [board])
    requests, context = FakeRequests(), FakeContext()
    requests.send(sotw_request("n1"))
    stream = asyncio.create_task(servicer.StreamAggregatedResources(requests.stream(), context))
    try:
        await asyncio.wait_for(context.written.get(), STEP)
        assert [p.node_id for p in board.proxies()] == ["n1"]
        source.broken_nodes.add("n1")
        with caplog.at_level(logging.INFO, logger="pilotfish.xds"):
            source.set_snapshot(snapshot({CDS: {"a": "2"}}))
            await asyncio.wait_for(stream, STEP)
    finally:
        requests.send(None)
        if not stream.done():
            stream.cancel()
    assert context.code is grpc.StatusCode.UNAVAILABLE
    assert failure_logs(caplog, "n1")
    assert board.proxies() == []
