"""HTTP/2 keepalive between a real Envoy and our xDS server, with ping periods cut to ~1 s.

An idle mesh must keep one connection per Envoy however many pings go by, and a proxy that
stops answering (SIGSTOP: its kernel still ACKs TCP, so only pings can tell) must leave the
status board within the policy's bound.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pilotfish.agent.admin_client import EnvoyAdmin
from pilotfish.agent.bootstrap import XDS_CLUSTER_NAME, build_bootstrap
from pilotfish.agent.envoy_process import EnvoyProcess
from pilotfish.agent.ports import free_port
from pilotfish.model.keepalive import XdsKeepalive
from pilotfish.model.proxy import ProxyNode
from pilotfish.snapshot import make_snapshot
from pilotfish.xds import ProxyStatus, ProxyStatusBoard, SyncStatus
from pilotfish.xds.server import start_xds_server
from pilotfish.xds.source import InMemorySnapshotSource
from xds_clients import http_resources

pytestmark = pytest.mark.integration

FAST = XdsKeepalive(
    proxy_ping_interval=1.0,
    proxy_ping_timeout=1.0,
    server_ping_interval=1.0,
    server_ping_timeout=1.0,
)
NODE = ProxyNode(id="keepalive-under-test", service="frontend")
# Long enough for Envoy's pings to come several times and for grpc's default policy (2
# strikes) to have closed the connection twice over.
IDLE_PING_PERIODS = 6
# Room for a loaded 2-core machine on top of the policy's own bound.
SLACK_SECONDS = 5.0


@dataclass
class Plane:
    source: InMemorySnapshotSource
    board: ProxyStatusBoard
    port: int


@pytest.fixture
async def plane() -> AsyncIterator[Plane]:
    source = InMemorySnapshotSource()
    # Config that needs nothing to be listening: Envoy never connects to the backend.
    source.set_snapshot(make_snapshot(http_resources(free_port(), free_port())))
    board = ProxyStatusBoard()
    server, port = await start_xds_server(source, [board], keepalive=FAST)
    try:
        yield Plane(source, board, port)
    finally:
        await server.stop(None)


@pytest.fixture
async def envoy(plane: Plane, tmp_path: Path) -> AsyncIterator[EnvoyProcess]:
    bootstrap = build_bootstrap(
        NODE, xds_address=("127.0.0.1", plane.port), admin_port=0, keepalive=FAST
    )
    process = EnvoyProcess(bootstrap, work_dir=tmp_path, name=NODE.id)
    await process.start()
    try:
        yield process
    finally:
        if process.pid is not None and process.running:
            os.kill(process.pid, signal.SIGCONT)  # a stopped Envoy cannot handle SIGTERM
        await process.stop()


async def xds_connections(admin: EnvoyAdmin) -> int:
    name = f"cluster.{XDS_CLUSTER_NAME}.upstream_cx_total"
    stats = (await admin.get(f"/stats?filter=^{name}$")).body
    for line in stats.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return int(value)
    raise AssertionError(f"{name} not in Envoy's stats: {stats!r}")


async def wait_until(condition: Callable[[], bool], what: str, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"not {what} within {timeout:.1f}s")
        await asyncio.sleep(0.05)


async def synced_stream(board: ProxyStatusBoard) -> ProxyStatus:
    def synced() -> bool:
        status = board.find(NODE.id)
        return status is not None and status.overall_status is SyncStatus.SYNCED

    await wait_until(synced, "SYNCED", timeout=30)
    status = board.find(NODE.id)
    assert status is not None
    return status


async def test_an_idle_mesh_keeps_one_connection_per_envoy(
    plane: Plane, envoy: EnvoyProcess
) -> None:
    admin = envoy.admin
    assert admin is not None
    stream_id = (await synced_stream(plane.board)).stream_id
    assert await xds_connections(admin) == 1

    for _ in range(IDLE_PING_PERIODS * 2):
        await asyncio.sleep(FAST.proxy_ping_interval / 2)
        assert await xds_connections(admin) == 1, "Envoy opened a second xDS connection"
        status = plane.board.find(NODE.id)
        assert status is not None and status.stream_id == stream_id, "the stream was replaced"


async def test_a_stopped_envoy_leaves_the_board_within_the_bound(
    plane: Plane, envoy: EnvoyProcess
) -> None:
    first = await synced_stream(plane.board)
    assert envoy.pid is not None
    os.kill(envoy.pid, signal.SIGSTOP)
    await wait_until(
        lambda: plane.board.find(NODE.id) is None,
        "off the board",
        timeout=FAST.dead_proxy_bound + SLACK_SECONDS,
    )

    # Resumed, it finds its connection gone and comes back on a new stream.
    os.kill(envoy.pid, signal.SIGCONT)
    back = await synced_stream(plane.board)
    assert back.stream_id != first.stream_id
