"""The servicer driven directly with fake gRPC streams: what it does when its source fails or a
node is invalid, and what its subscribers are told."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2
from xds_fakes import CDS, EDS, snapshot

from grpc_fakes import FakeContext, FakeRequests
from pilotfish.model.keepalive import XdsKeepalive
from pilotfish.model.proxy import ProxyNode
from pilotfish.snapshot import Snapshot
from pilotfish.snapshot.type_urls import short_name
from pilotfish.xds import (
    AggregatedDiscoveryServicer,
    DeltaRequestReceived,
    InMemorySnapshotSource,
    NackReceived,
    ProxyStatusBoard,
    RequestReceived,
    SendResponse,
    StreamInfo,
    XdsCallbacks,
    server_keepalive_options,
)

BASE = snapshot({CDS: {"a": "1"}, EDS: {"a": "1"}})
STEP = 5.0  # bounds each wait so that a hang fails the test instead of stalling the suite
DELTA_RESPONSE = discovery_pb2.DeltaDiscoveryResponse


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
    contexts = [*(FakeContext() for _ in range(3)), FakeContext(DELTA_RESPONSE)]
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


async def test_a_node_failing_later_does_not_stop_the_others_following_changes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Snapshots are looked up for every stream before the streams wake: one that fails
    # there must cost its own stream only.
    source = BrokenSnapshotSource(set())
    source.set_snapshot(BASE)
    servicer = AggregatedDiscoveryServicer(source, [ProxyStatusBoard()])
    opened = {name: (FakeRequests(), FakeContext()) for name in ("n1", "n2")}
    streams = {}
    for name, (requests, context) in opened.items():
        requests.send(sotw_request(name))
        streams[name] = asyncio.create_task(
            servicer.StreamAggregatedResources(requests.stream(), context)
        )
        await asyncio.wait_for(context.written.get(), STEP)
    try:
        source.broken_nodes.add("n1")
        with caplog.at_level(logging.INFO, logger="pilotfish.xds"):
            source.set_snapshot(snapshot({CDS: {"a": "2"}}))
            await asyncio.wait_for(streams["n1"], STEP)
        pushed = await asyncio.wait_for(opened["n2"][1].written.get(), STEP)
        assert pushed.type_url == CDS
        assert not streams["n2"].done()
    finally:
        for requests, _ in opened.values():
            requests.send(None)
        await asyncio.wait_for(asyncio.gather(*streams.values()), STEP)
    assert opened["n1"][1].code is grpc.StatusCode.UNAVAILABLE
    assert failure_logs(caplog, "n1")
    assert opened["n2"][1].code is None


def node_with_metadata(node_id: str, metadata: dict[str, object]) -> base_pb2.Node:
    struct = struct_pb2.Struct()
    struct.update(metadata)
    return base_pb2.Node(id=node_id, metadata=struct)


@pytest.mark.parametrize(
    ("field", "value"),
    [("PILOTFISH_KIND", "waypoint"), ("PILOTFISH_APP_PROTOCOL", "http"), ("PILOTFISH_APP_PORT", 0)],
)
async def test_invalid_node_metadata_ends_the_stream_naming_the_field(
    field: str, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    source = InMemorySnapshotSource()
    source.set_snapshot(BASE)
    recorder = Recorder()
    servicer = AggregatedDiscoveryServicer(source, [recorder])
    context = FakeContext()
    request = discovery_pb2.DiscoveryRequest(
        type_url=CDS, node=node_with_metadata("odd", {field: value})
    )
    with caplog.at_level(logging.WARNING, logger="pilotfish.xds"):
        await asyncio.wait_for(
            servicer.StreamAggregatedResources(one_request(request), context), STEP
        )
    assert context.code is grpc.StatusCode.INVALID_ARGUMENT
    assert context.details is not None
    assert field in context.details and repr(value) in context.details
    assert context.written.empty()
    assert recorder.events == []  # never opened: no subscriber ever hears of it
    assert any(field in r.getMessage() and "odd" in r.getMessage() for r in caplog.records)


class Recorder(XdsCallbacks):
    """Writes down every event, in order, as (event, stream id, detail)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, object]] = []

    def stream_opened(self, stream: StreamInfo) -> None:
        self.events.append(("opened", stream.stream_id, stream.node.id))

    def request_received(
        self, stream: StreamInfo, request: RequestReceived | DeltaRequestReceived
    ) -> None:
        self.events.append(("request", stream.stream_id, short_name(request.type_url)))

    def ack_received(self, stream: StreamInfo, acked: SendResponse) -> None:
        self.events.append(("ack", stream.stream_id, (short_name(acked.type_url), acked.nonce)))

    def nack_received(self, stream: StreamInfo, rejected: SendResponse, nack: NackReceived) -> None:
        detail = (short_name(rejected.type_url), rejected.nonce, nack.message)
        self.events.append(("nack", stream.stream_id, detail))

    def response_sent(self, stream: StreamInfo, response: SendResponse) -> None:
        detail = (short_name(response.type_url), response.nonce)
        self.events.append(("sent", stream.stream_id, detail))

    def snapshot_applied(self, stream: StreamInfo, generation: int) -> None:
        self.events.append(("applied", stream.stream_id, generation))

    def stream_closed(self, stream: StreamInfo) -> None:
        self.events.append(("closed", stream.stream_id, stream.node.id))


async def test_every_subscriber_sees_the_same_events_in_order() -> None:
    source = InMemorySnapshotSource()
    source.set_snapshot(BASE)
    first, last = Recorder(), Recorder()
    board = ProxyStatusBoard()
    servicer = AggregatedDiscoveryServicer(source, [first, board, last])
    requests, context = FakeRequests(), FakeContext()
    requests.send(sotw_request("n1"))
    stream = asyncio.create_task(servicer.StreamAggregatedResources(requests.stream(), context))
    try:
        cds = await asyncio.wait_for(context.written.get(), STEP)
        requests.send(
            discovery_pb2.DiscoveryRequest(
                type_url=CDS, version_info=cds.version_info, response_nonce=cds.nonce
            )
        )
        requests.send(discovery_pb2.DiscoveryRequest(type_url=EDS, resource_names=["a"]))
        eds = await asyncio.wait_for(context.written.get(), STEP)
        source.set_snapshot(snapshot({CDS: {"a": "2"}, EDS: {"a": "1"}}))
        pushed = [await asyncio.wait_for(context.written.get(), STEP) for _ in range(2)]
        assert [p.type_url for p in pushed] == [CDS, EDS]  # a changed cluster: EDS again
        rejected = discovery_pb2.DiscoveryRequest(
            type_url=CDS, version_info=cds.version_info, response_nonce=pushed[0].nonce
        )
        rejected.error_detail.message = "bad cluster"
        requests.send(rejected)
        # An answer to the first EDS response comes after the second was sent: not an ACK.
        requests.send(
            discovery_pb2.DiscoveryRequest(
                type_url=EDS,
                resource_names=["a"],
                version_info=eds.version_info,
                response_nonce=eds.nonce,
            )
        )
        requests.send(
            discovery_pb2.DiscoveryRequest(
                type_url=EDS,
                resource_names=["a"],
                version_info=pushed[1].version_info,
                response_nonce=pushed[1].nonce,
            )
        )
        await asyncio.wait_for(board_shows(board, "n1", EDS, pushed[1].version_info), STEP)
    finally:
        requests.send(None)
        await asyncio.wait_for(stream, STEP)

    assert first.events == [
        ("opened", 1, "n1"),
        ("applied", 1, 1),
        ("request", 1, "CDS"),
        ("sent", 1, ("CDS", cds.nonce)),
        ("request", 1, "CDS"),
        ("ack", 1, ("CDS", cds.nonce)),
        ("request", 1, "EDS"),
        ("sent", 1, ("EDS", eds.nonce)),
        ("sent", 1, ("CDS", pushed[0].nonce)),
        ("sent", 1, ("EDS", pushed[1].nonce)),
        ("applied", 1, 2),
        ("request", 1, "CDS"),
        ("nack", 1, ("CDS", pushed[0].nonce, "bad cluster")),
        ("request", 1, "EDS"),
        ("request", 1, "EDS"),
        ("ack", 1, ("EDS", pushed[1].nonce)),
        ("closed", 1, "n1"),
    ]
    assert last.events == first.events
    assert board.proxies() == []


async def board_shows(board: ProxyStatusBoard, node_id: str, type_url: str, acked: str) -> None:
    """Let the stream's task run until the board shows ``acked`` for the type."""
    while True:
        status = board.find(node_id)
        shown = status.type_status(type_url) if status else None
        if shown is not None and shown.acked_version == acked:
            return
        await asyncio.sleep(0)


def test_server_options_follow_the_keepalive_policy() -> None:
    policy = XdsKeepalive(
        proxy_ping_interval=4, proxy_ping_timeout=1, server_ping_interval=6, server_ping_timeout=2
    )
    options = dict(server_keepalive_options(policy))
    assert options["grpc.keepalive_time_ms"] == 6000
    # Both option names grpc knows for the wait for a ping's answer.
    assert options["grpc.keepalive_timeout_ms"] == options["grpc.http2.ping_timeout_ms"] == 2000
    # The proxies' pings, even a little early, are never strikes.
    assert 0 < options["grpc.http2.min_ping_interval_without_data_ms"] < 4000
    assert options["grpc.http2.max_ping_strikes"] == policy.max_ping_strikes
    assert options["grpc.keepalive_permit_without_calls"] == 1


async def test_a_stream_follows_a_generation_that_left_its_snapshot_unchanged() -> None:
    source = InMemorySnapshotSource()
    source.set_snapshot(BASE)
    recorder = Recorder()
    board = ProxyStatusBoard()
    servicer = AggregatedDiscoveryServicer(source, [recorder, board])
    requests, context = FakeRequests(), FakeContext(DELTA_RESPONSE)
    requests.send(delta_request("n1"))
    stream = asyncio.create_task(servicer.DeltaAggregatedResources(requests.stream(), context))
    try:
        cds = await asyncio.wait_for(context.written.get(), STEP)
        requests.send(discovery_pb2.DeltaDiscoveryRequest(type_url=CDS, response_nonce=cds.nonce))
        # Another node's change: n1 has nothing new to get, yet it is up to date with it.
        source.set_snapshot(snapshot({CDS: {"a": "2"}}), node_id="n2")
        assert await asyncio.wait_for(board.wait_until_answered(2, STEP), STEP) is True
    finally:
        requests.send(None)
        await asyncio.wait_for(stream, STEP)
    assert recorder.events[-3:] == [
        ("ack", 1, ("CDS", cds.nonce)),
        ("applied", 1, 2),
        ("closed", 1, "n1"),
    ]
    assert context.written.empty()


async def test_delta_an_answer_to_an_older_response_is_not_taken_for_an_ack_of_the_newer() -> None:
    source = InMemorySnapshotSource()
    source.set_snapshot(BASE)
    recorder = Recorder()
    servicer = AggregatedDiscoveryServicer(source, [recorder])
    requests, context = FakeRequests(), FakeContext(DELTA_RESPONSE)
    requests.send(delta_request("n1"))
    stream = asyncio.create_task(servicer.DeltaAggregatedResources(requests.stream(), context))
    try:
        first = await asyncio.wait_for(context.written.get(), STEP)
        source.set_snapshot(snapshot({CDS: {"a": "2"}, EDS: {"a": "1"}}))
        second = await asyncio.wait_for(context.written.get(), STEP)
        for answered in (first, second):
            requests.send(
                discovery_pb2.DeltaDiscoveryRequest(type_url=CDS, response_nonce=answered.nonce)
            )
        await asyncio.wait_for(recorded(recorder, "ack"), STEP)
    finally:
        requests.send(None)
        await asyncio.wait_for(stream, STEP)
    answers = [e for e in recorder.events if e[0] in ("ack", "nack")]
    assert answers == [("ack", 1, ("CDS", second.nonce))]


async def recorded(recorder: Recorder, event: str) -> None:
    while not any(e[0] == event for e in recorder.events):
        await asyncio.sleep(0)
