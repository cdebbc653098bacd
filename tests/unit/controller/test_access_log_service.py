"""The access-log service's stream handling: the identifier, the reporting node, bad input."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from envoy.data.accesslog.v3 import accesslog_pb2

from als_entries import first_message, http_entry, later_message, tcp_entry, tcp_message
from grpc_fakes import FakeRequests
from pilotfish.controller.access_log_service import CHUNK_ENTRIES, AccessLogService
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.telemetry import ALS_LOG_INBOUND, ALS_LOG_OUTBOUND
from pilotfish.telemetry.hub import TelemetryHub
from pilotfish.telemetry.nodes import NodeDirectory
from pilotfish.telemetry.records import ConnectionRecord, RequestRecord

NODE = ProxyNode(id="web-0", service="web", inbound_port=15006, workload="web")


class Aborted(Exception):
    pass


class AbortingContext:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted(details)


class Collected:
    def __init__(self) -> None:
        self.batches: list[list[RequestRecord]] = []

    def add(self, records: Sequence[RequestRecord]) -> None:
        self.batches.append(list(records))


class CollectedConnections:
    def __init__(self) -> None:
        self.batches: list[list[ConnectionRecord]] = []

    def add_connections(self, records: Sequence[ConnectionRecord]) -> None:
        self.batches.append(list(records))


def service(
    connections: CollectedConnections | None = None,
) -> tuple[AccessLogService, NodeDirectory, Collected]:
    hub = TelemetryHub()
    sink = Collected()
    hub.add_sink(sink)
    if connections is not None:
        hub.add_connection_sink(connections)
    nodes = NodeDirectory()
    return AccessLogService(hub, nodes), nodes, sink


async def run(als: AccessLogService, messages: list[Any], context: Any = None) -> None:
    requests = FakeRequests()
    for message in [*messages, None]:
        requests.send(message)
    await als.StreamAccessLogs(requests.stream(), context or AbortingContext())  # type: ignore[arg-type]


async def test_each_batch_becomes_records_of_the_stream_reporter_and_node() -> None:
    als, _, sink = service()
    await run(
        als,
        [first_message(NODE, ALS_LOG_INBOUND, [http_entry()]), later_message([http_entry()] * 2)],
    )
    assert [len(batch) for batch in sink.batches] == [1, 2]
    record = sink.batches[1][0]
    assert record.reporter == "destination"
    assert record.proxy == "web-0"
    assert record.destination.workload == "web"  # read from the identifier's node metadata
    assert record.destination_service == "web.default.svc.cluster.local"
    assert als.streams_open == 0


async def test_the_node_its_xds_stream_announced_is_preferred() -> None:
    als, nodes, sink = service()
    nodes.connected(ProxyNode(id="web-0", service="web", workload="web-canary"))
    await run(als, [first_message(NODE, ALS_LOG_OUTBOUND, [http_entry()])])
    assert sink.batches[0][0].source.workload == "web-canary"


async def test_a_stream_without_identifier_is_refused() -> None:
    als, _, sink = service()
    context = AbortingContext()
    with pytest.raises(Aborted):
        await run(als, [later_message([http_entry()])], context)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "identifier" in context.details
    assert sink.batches == []
    assert als.streams_open == 0


async def test_an_unknown_log_name_is_warned_about_and_not_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    als, _, sink = service()
    await run(als, [first_message(NODE, "mine", [http_entry()]), later_message([http_entry()])])
    assert sink.batches == []
    assert als.entries_rejected == 2
    assert "log_name 'mine'" in caplog.text
    assert "not counted" in caplog.text


async def test_a_large_batch_is_decoded_in_chunks_between_which_the_loop_runs() -> None:
    als, _, sink = service()
    seen: set[int] = set()

    async def other_work() -> None:
        while True:
            seen.add(len(sink.batches))
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    await run(als, [first_message(NODE, ALS_LOG_INBOUND, [http_entry()] * (CHUNK_ENTRIES * 2 + 7))])
    other.cancel()
    assert [len(batch) for batch in sink.batches] == [CHUNK_ENTRIES, CHUNK_ENTRIES, 7]
    assert {1, 2} <= seen  # the loop ran other work between the chunks


async def test_intermediate_entries_of_a_long_stream_are_not_counted() -> None:
    als, _, sink = service()
    periodic = http_entry(code=None)
    periodic.common_properties.intermediate_log_entry = True
    await run(als, [first_message(NODE, ALS_LOG_INBOUND, [periodic, http_entry()])])
    assert [[r.response_code for r in batch] for batch in sink.batches] == [[200]]


async def test_tcp_entries_become_connection_records_with_steps_of_bytes() -> None:
    connections = CollectedConnections()
    als, _, sink = service(connections)
    connected = tcp_entry(event=accesslog_pb2.TcpUpstreamConnected)
    periodic = tcp_entry(event=accesslog_pb2.TcpPeriodic, received=100, sent=50)
    closed = tcp_entry(received=150, sent=50)
    await run(
        als,
        [
            tcp_message([connected, periodic], NODE, ALS_LOG_INBOUND),
            later_message([http_entry()]),
            tcp_message([closed]),
        ],
    )
    assert [len(batch) for batch in sink.batches] == [1]
    assert [[(r.event, r.received_delta) for r in b] for b in connections.batches] == [
        [("connected", 0), ("periodic", 100)],
        [("closed", 50)],
    ]
    record = connections.batches[1][0]
    assert record.reporter == "destination" and record.proxy == "web-0"
    assert record.destination_service == "web.default.svc.cluster.local"
    assert als.connections.open_connections == 0
    assert als.entries_rejected == 0


async def test_tcp_entries_of_an_unknown_log_name_are_not_counted() -> None:
    connections = CollectedConnections()
    als, _, _ = service(connections)
    await run(als, [tcp_message([tcp_entry()] * 3, NODE, "mine")])
    assert connections.batches == []
    assert als.entries_rejected == 3
