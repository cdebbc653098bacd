"""The ADS server over real grpcio, driven by our minimal SotW and Delta clients."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import cast

import grpc
import pytest
from tests.waiting import eventually

from pilotfish.model.proxy import ProxyKind, ProxyNode
from pilotfish.snapshot import PackingCache, Snapshot, make_snapshot, type_urls
from pilotfish.xds.server import start_xds_server
from pilotfish.xds.source import InMemorySnapshotSource
from pilotfish.xds.status_board import ProxyStatusBoard
from xds_clients import (
    DeltaClient,
    SotwClient,
    http_resources,
    load_assignment,
)

pytestmark = pytest.mark.integration

CDS, EDS, LDS, RDS = type_urls.CLUSTER, type_urls.ENDPOINT, type_urls.LISTENER, type_urls.ROUTE
NODE = ProxyNode(id="sidecar-1", service="reviews", outbound_port=15001)


@dataclass
class Plane:
    source: InMemorySnapshotSource
    board: ProxyStatusBoard
    target: str


@pytest.fixture
async def plane() -> AsyncIterator[Plane]:
    source = InMemorySnapshotSource()
    board = ProxyStatusBoard()
    server, port = await start_xds_server(source, [board])
    try:
        yield Plane(source, board, f"127.0.0.1:{port}")
    finally:
        await server.stop(None)


def snapshot_with_backend_port(port: int) -> Snapshot:
    return make_snapshot(http_resources(listener_port=1, backend_port=port), PackingCache())


async def test_sotw_initial_fetch_push_on_change_and_ack_is_not_answered(plane: Plane) -> None:
    plane.source.set_snapshot(snapshot_with_backend_port(8000))
    async with SotwClient(plane.target, NODE) as client:
        client.request(CDS)
        cds = await client.receive()
        assert cds.type_url == CDS and len(cds.resources) == 1
        client.ack(cds)
        client.request(EDS, ["backend"])
        eds = await client.receive()
        # Had the ACK been answered, that answer would have come before this one.
        assert eds.type_url == EDS
        client.ack(eds, ["backend"])

        plane.source.set_snapshot(snapshot_with_backend_port(8001))
        pushed = await client.receive()
        assert pushed.type_url == EDS and pushed.version_info != eds.version_info
        client.ack(pushed, ["backend"])
        client.request(LDS)
        assert (await client.receive()).type_url == LDS

        status = plane.board.find(NODE.id)
        assert status is not None and status.stream_kind == "sotw"
        eds_status = status.type_status(EDS)
        assert eds_status is not None
        assert (eds_status.status.value, eds_status.acked_version) == (
            "SYNCED",
            pushed.version_info,
        )
        assert status.to_json()["service"] == "reviews"


async def test_sotw_waits_while_there_is_no_snapshot(plane: Plane) -> None:
    async with SotwClient(plane.target, NODE) as client:
        client.request(CDS)
        client.request(LDS)
        plane.source.set_snapshot(snapshot_with_backend_port(8000))
        first = await client.receive()
        # Anything sent before the snapshot existed would have been an empty answer.
        assert first.type_url == CDS and len(first.resources) == 1


async def test_sotw_nack_is_recorded_shown_and_logged(
    plane: Plane, caplog: pytest.LogCaptureFixture
) -> None:
    plane.source.set_snapshot(snapshot_with_backend_port(8000))
    async with SotwClient(plane.target, NODE) as client:
        client.request(CDS)
        cds = await client.receive()
        client.nack(cds, "", "cluster backend: bad connect_timeout")
        client.request(LDS)
        with caplog.at_level(logging.WARNING, logger="pilotfish.xds"):
            assert (await client.receive()).type_url == LDS
        status = plane.board.find(NODE.id)
        assert status is not None
        cds_status = status.type_status(CDS)
        assert cds_status is not None
        assert cds_status.status.value == "NACKED"
        assert "bad connect_timeout" in str(plane.board.to_json())
    assert any(
        NODE.id in record.getMessage() and "bad connect_timeout" in record.getMessage()
        for record in caplog.records
    )


async def test_sotw_stale_nonce_is_ignored(plane: Plane) -> None:
    plane.source.set_snapshot(snapshot_with_backend_port(8000))
    async with SotwClient(plane.target, NODE) as client:
        client.request(EDS, ["backend"])
        first = await client.receive()
        plane.source.set_snapshot(snapshot_with_backend_port(8001))
        second = await client.receive()
        # A NACK of the older response arrives after the newer one was ACKed: it is stale and
        # must neither count nor be answered.
        client.ack(second, ["backend"])
        client.nack(first, "", "too late", ["backend"])
        client.request(LDS)
        assert (await client.receive()).type_url == LDS
        status = plane.board.find(NODE.id)
        assert status is not None
        eds_status = status.type_status(EDS)
        assert eds_status is not None and eds_status.status.value == "SYNCED"


async def test_delta_initial_fetch_changes_only_and_nack(plane: Plane) -> None:
    base = http_resources(listener_port=1, backend_port=8000)
    plane.source.set_snapshot(make_snapshot(base, PackingCache()))
    async with DeltaClient(plane.target, NODE) as client:
        client.request(CDS)
        cds = await client.receive()
        assert [r.name for r in cds.resources] == ["backend"]
        client.ack(cds)
        client.request(EDS, subscribe=["backend"])
        eds = await client.receive()
        assert eds.type_url == EDS
        client.ack(eds)

        plane.source.set_snapshot(
            make_snapshot(
                replace(base, load_assignments=(load_assignment("backend", 8002),)),
                PackingCache(),
            )
        )
        pushed = await client.receive()
        assert pushed.type_url == EDS
        assert [r.name for r in pushed.resources] == ["backend"]
        client.nack(pushed, "endpoint rejected")
        client.request(LDS)
        assert (await client.receive()).type_url == LDS
        status = plane.board.find(NODE.id)
        assert status is not None and status.stream_kind == "delta"
        eds_status = status.type_status(EDS)
        assert eds_status is not None
        assert (eds_status.status.value, eds_status.nack_message) == (
            "NACKED",
            "endpoint rejected",
        )


async def test_delta_reconnect_with_current_versions_gets_nothing_new(plane: Plane) -> None:
    plane.source.set_snapshot(snapshot_with_backend_port(8000))
    async with DeltaClient(plane.target, NODE) as client:
        client.request(CDS)
        cds = await client.receive()
        client.ack(cds)
    versions = {r.name: r.version for r in cds.resources}
    async with DeltaClient(plane.target, NODE) as client:
        client.request(CDS, initial_resource_versions=versions)
        client.request(LDS)
        assert (await client.receive()).type_url == LDS


async def test_client_gone_leaves_the_board(plane: Plane) -> None:
    plane.source.set_snapshot(snapshot_with_backend_port(8000))
    async with SotwClient(plane.target, NODE) as client:
        client.request(CDS)
        await client.receive()
        assert [p.node_id for p in plane.board.proxies()] == [NODE.id]
    await eventually(lambda: plane.board.proxies() == [])


class BrokenForSomeNodes(InMemorySnapshotSource):
    def __init__(self, broken_nodes: set[str]) -> None:
        super().__init__()
        self.broken_nodes = broken_nodes

    def snapshot_for(self, node: ProxyNode) -> Snapshot | None:
        if node.id in self.broken_nodes:
            raise RuntimeError("registry unreachable")
        return super().snapshot_for(node)


async def test_failing_source_ends_only_that_nodes_streams_and_leaves_no_ghosts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = BrokenForSomeNodes({"n1"})
    source.set_snapshot(snapshot_with_backend_port(8000))
    board = ProxyStatusBoard()
    server, port = await start_xds_server(source, [board])
    target = f"127.0.0.1:{port}"
    try:
        async with SotwClient(target, NODE) as healthy:
            healthy.request(CDS)
            await healthy.receive()
            with caplog.at_level(logging.INFO, logger="pilotfish.xds"):
                for _ in range(3):
                    async with SotwClient(target, ProxyNode(id="n1")) as failing:
                        failing.request(CDS)
                        with pytest.raises(grpc.aio.AioRpcError) as ended:
                            await failing.receive()
                        assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
            await eventually(lambda: [p.node_id for p in board.proxies()] == [NODE.id])
            source.set_snapshot(snapshot_with_backend_port(8001))
            healthy.request(EDS, ["backend"])
            assert (await healthy.receive()).type_url == EDS
        await eventually(lambda: board.proxies() == [])
    finally:
        await server.stop(None)
    logged = [r for r in caplog.records if "n1" in r.getMessage() and r.exc_info is not None]
    assert len(logged) == 3


async def test_a_node_with_an_unknown_kind_is_refused_naming_the_field(
    plane: Plane, caplog: pytest.LogCaptureFixture
) -> None:
    plane.source.set_snapshot(snapshot_with_backend_port(8000))
    odd = ProxyNode(id="odd-1", kind=cast(ProxyKind, "waypoint"))
    with caplog.at_level(logging.WARNING, logger="pilotfish.xds"):
        async with DeltaClient(plane.target, odd) as client:
            client.request(CDS)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await client.receive()
    assert ended.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "PILOTFISH_KIND" in ended.value.details() and "'waypoint'" in ended.value.details()
    assert plane.board.proxies() == []
    assert any("PILOTFISH_KIND" in r.getMessage() for r in caplog.records)


class CountingWaiters(InMemorySnapshotSource):
    """Counts who is waiting for the next generation right now."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0

    async def wait_for_change(self, seen_generation: int) -> int:
        self.waiting += 1
        try:
            return await super().wait_for_change(seen_generation)
        finally:
            self.waiting -= 1


async def test_one_waiter_tells_every_stream_of_a_change_and_leaves_with_the_last() -> None:
    source = CountingWaiters()
    source.set_snapshot(snapshot_with_backend_port(8000))
    server, port = await start_xds_server(source, [ProxyStatusBoard()])
    target = f"127.0.0.1:{port}"
    try:
        clients = [DeltaClient(target, replace(NODE, id=f"sidecar-{i}")) for i in range(5)]
        for client in clients:
            await client.__aenter__()
        try:
            for client in clients:
                client.request(EDS, subscribe=["backend"])
                client.ack(await client.receive())
            assert source.waiting == 1, "one waiter for all five streams"
            source.set_snapshot(snapshot_with_backend_port(8001))
            for client in clients:
                pushed = await client.receive()
                assert pushed.type_url == EDS and [r.name for r in pushed.resources] == ["backend"]
        finally:
            for client in clients:
                await client.__aexit__(None, None, None)
        await eventually(lambda: source.waiting == 0, "the waiter to go with the last stream")
    finally:
        await server.stop(None)
