"""The agent against the real Envoy binary and a minimal in-test ADS server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2
from tests.waiting import eventually

from pilotfish.agent.admin_client import EnvoyAdmin
from pilotfish.agent.bootstrap import build_bootstrap
from pilotfish.agent.envoy_process import EnvoyOptions, EnvoyProcess, EnvoyStartError
from pilotfish.agent.ports import free_port, wait_for_port
from pilotfish.agent.supervisor import RestartPolicy, Sidecar
from pilotfish.model.proxy import ProxyNode

pytestmark = pytest.mark.integration

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
SRC = Path(__file__).resolve().parents[2] / "src"


def hello_listener(port: int) -> listener_pb2.Listener:
    """A listener answering every request with 200 "hello", needing no cluster."""
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"),
        direct_response=route_components_pb2.DirectResponseAction(
            status=200, body=base_pb2.DataSource(inline_string="hello")
        ),
    )
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix="hello",
        route_config=route_pb2.RouteConfiguration(
            name="hello",
            virtual_hosts=[
                route_components_pb2.VirtualHost(name="all", domains=["*"], routes=[route])
            ],
        ),
        http_filters=[hcm_pb2.HttpFilter(name="router", typed_config=pack(router_pb2.Router()))],
    )
    return listener_pb2.Listener(
        name="hello",
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name="hcm", typed_config=pack(manager))]
            )
        ],
    )


def pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


class FakeAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Answers the first request of each stream per type: no clusters, one hello listener."""

    def __init__(self, listener_port: int) -> None:
        self.listener_port = listener_port
        self.resources = {LISTENER_TYPE: [hello_listener(listener_port)], CLUSTER_TYPE: []}
        self.streams = 0

    async def StreamAggregatedResources(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], context: object
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        self.streams += 1
        answered: set[str] = set()
        async for request in requests:
            if request.type_url in self.resources and request.type_url not in answered:
                answered.add(request.type_url)
                yield discovery_pb2.DiscoveryResponse(
                    version_info="1",
                    type_url=request.type_url,
                    nonce=f"{request.type_url}-1",
                    resources=[pack(r) for r in self.resources[request.type_url]],
                )

    async def DeltaAggregatedResources(
        self, requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest], context: object
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        self.streams += 1
        answered: set[str] = set()
        async for request in requests:
            if request.type_url in self.resources and request.type_url not in answered:
                answered.add(request.type_url)
                yield discovery_pb2.DeltaDiscoveryResponse(
                    type_url=request.type_url,
                    nonce=f"{request.type_url}-1",
                    system_version_info="1",
                    resources=[
                        discovery_pb2.Resource(name=r.name, version="1", resource=pack(r))
                        for r in self.resources[request.type_url]
                    ],
                )


class AdsServer:
    def __init__(self, servicer: FakeAds, port: int, server: grpc.aio.Server) -> None:
        self.servicer = servicer
        self.port = port
        self.server = server

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


@pytest.fixture
async def ads() -> AsyncIterator[AdsServer]:
    servicer = FakeAds(free_port())
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield AdsServer(servicer, port, server)
    finally:
        await server.stop(grace=None)


def listener_port(ads: AdsServer) -> int:
    return ads.servicer.listener_port


async def fetch(port: int) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            return response.status, response.read().decode()

    return await asyncio.to_thread(get)


def process_exists(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z"


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def sidecar_node(node_id: str = "sidecar-test") -> ProxyNode:
    return ProxyNode(id=node_id, service="web", labels={"app": "web"}, app_port=1)


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_envoy_gets_its_listener_over_ads_and_serves(
    ads: AdsServer, tmp_path: Path, delta: bool
) -> None:
    sidecar = Sidecar(
        sidecar_node(), xds_address=ads.address, work_dir=tmp_path, admin_port=0, delta=delta
    )
    try:
        await sidecar.start()
        assert sidecar.admin_url is not None
        await wait_for_port("127.0.0.1", listener_port(ads), timeout=10)
        assert await fetch(listener_port(ads)) == (200, "hello")
    finally:
        await sidecar.shutdown(drain_seconds=1)
    assert sidecar.pid is None


async def test_supervisor_restarts_envoy_killed_with_sigkill(
    ads: AdsServer, tmp_path: Path
) -> None:
    admin_port = free_port()
    lines: list[str] = []
    sidecar = Sidecar(
        sidecar_node(),
        xds_address=ads.address,
        work_dir=tmp_path,
        admin_port=admin_port,
        on_line=lines.append,
        restart_policy=RestartPolicy(first_delay=0.05),
    )
    run = asyncio.create_task(sidecar.run())
    try:
        await asyncio.wait_for(sidecar.ready.wait(), 30)
        first_pid = sidecar.pid
        assert first_pid is not None
        await wait_for_port("127.0.0.1", listener_port(ads), timeout=10)

        os.kill(first_pid, signal.SIGKILL)
        await eventually(
            lambda: sidecar.restarts == 1 and sidecar.ready.is_set(), "a restart", timeout=30
        )

        assert sidecar.pid not in (None, first_pid)
        assert not process_exists(first_pid)
        assert sidecar.admin_url == f"http://127.0.0.1:{admin_port}"
        await wait_for_port("127.0.0.1", listener_port(ads), timeout=10)
        assert await fetch(listener_port(ads)) == (200, "hello")
        assert ads.servicer.streams >= 2
    finally:
        await sidecar.shutdown(drain_seconds=1)
        await asyncio.wait_for(run, 10)
    assert sidecar.pid is None


async def test_drain_closes_open_connections_then_stops_envoy(
    ads: AdsServer, tmp_path: Path
) -> None:
    process = EnvoyProcess(sidecar_bootstrap(ads), work_dir=tmp_path, name="drain-test")
    await process.start()
    try:
        port = listener_port(ads)
        await wait_for_port("127.0.0.1", port, timeout=10)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        first = await keepalive_get(reader, writer)
        assert "connection: close" not in first

        # A long grace: drain() must return because the last connection closed, not because
        # the grace ran out.
        draining = asyncio.create_task(process.drain(grace_seconds=120))
        assert process.admin is not None
        admin = process.admin
        await eventually(lambda: server_state_is(admin, "DRAINING"), "DRAINING", timeout=10)
        second = await keepalive_get(reader, writer)
        assert "connection: close" in second  # Envoy asks the client to go away
        writer.close()
        await writer.wait_closed()
        code = await asyncio.wait_for(draining, 60)
        pid = process.pid
    finally:
        await process.stop()
    assert code == 0  # SIGTERM after the drain: a clean exit
    assert pid is not None and not process_exists(pid)


async def keepalive_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    """One GET on a kept-alive connection; the response head, lower-cased."""
    writer.write(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
    length = int(head.split("content-length:")[1].split("\r\n")[0])
    assert await reader.readexactly(length) == b"hello"
    return head


async def server_state_is(admin: EnvoyAdmin, state: str) -> bool:
    info = json.loads((await admin.get("/server_info")).body)
    return bool(info["state"] == state)


def sidecar_bootstrap(ads: AdsServer) -> dict[str, Any]:
    return build_bootstrap(sidecar_node(), xds_address=ads.address, admin_port=0)


async def test_a_bad_bootstrap_fails_with_envoys_own_message(tmp_path: Path) -> None:
    bootstrap = build_bad_bootstrap()
    process = EnvoyProcess(bootstrap, work_dir=tmp_path, name="bad")
    with pytest.raises(EnvoyStartError) as raised:
        await process.start()
    message = str(raised.value)
    assert "before it was ready" in message
    assert "no-such-cluster" in message  # Envoy names the cluster it cannot find
    assert process.pid is not None and not process_exists(process.pid)


def build_bad_bootstrap() -> dict[str, Any]:
    bootstrap = build_bootstrap(sidecar_node(), xds_address=("127.0.0.1", 1), admin_port=0)
    ads_config = bootstrap["dynamic_resources"]["ads_config"]
    ads_config["grpc_services"][0]["envoy_grpc"]["cluster_name"] = "no-such-cluster"
    return bootstrap


async def test_a_missing_binary_is_a_start_error(tmp_path: Path) -> None:
    options = EnvoyOptions(binary=tmp_path / "no-envoy-here")
    process = EnvoyProcess(build_bad_bootstrap(), work_dir=tmp_path, options=options)
    with pytest.raises(EnvoyStartError, match="cannot run"):
        await process.start()


@pytest.fixture
def agent_command(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


async def test_agent_command_exits_zero_on_sigterm_and_leaves_no_envoy(
    ads: AdsServer, tmp_path: Path, agent_command: list[subprocess.Popen[str]]
) -> None:
    admin_port = free_port()
    env = dict(os.environ, PYTHONPATH=str(SRC))
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pilotfish.agent.cli",
            "--xds",
            f"127.0.0.1:{ads.port}",
            "--node-id",
            "agent-test",
            "--service",
            "web",
            "--label",
            "app=web",
            "--label",
            "version=v1",
            "--admin-port",
            str(admin_port),
            "--work-dir",
            str(tmp_path / "agent"),
            "--drain-seconds",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    agent_command.append(agent)
    assert agent.stdout is not None and agent.stderr is not None
    announcement = await asyncio.to_thread(agent.stdout.readline)
    assert f"ready, admin http://127.0.0.1:{admin_port}" in announcement
    await wait_for_port("127.0.0.1", listener_port(ads), timeout=30)
    assert await fetch(listener_port(ads)) == (200, "hello")
    envoys = children_of(agent.pid)
    assert len(envoys) == 1

    agent.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(agent.wait, 30)
    assert code == 0, agent.stderr.read()
    assert not process_exists(envoys[0])


async def test_agent_command_reports_envoys_error_and_exits_one(
    tmp_path: Path, agent_command: list[subprocess.Popen[str]]
) -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pilotfish.agent.cli",
            "--xds",
            "127.0.0.1:1",
            "--concurrency",
            "-3",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    agent_command.append(agent)
    code = await asyncio.to_thread(agent.wait, 30)
    assert agent.stderr is not None
    stderr = agent.stderr.read()
    assert code == 1
    assert "pilotfish agent:" in stderr and "before it was ready" in stderr


ORPHAN_SCRIPT = """
import asyncio, sys
from pathlib import Path
from pilotfish.agent.bootstrap import build_bootstrap
from pilotfish.agent.envoy_process import EnvoyProcess
from pilotfish.model.proxy import ProxyNode

async def main():
    bootstrap = build_bootstrap(
        ProxyNode(id="orphan"), xds_address=("127.0.0.1", int(sys.argv[1])), admin_port=0
    )
    process = EnvoyProcess(bootstrap, work_dir=Path(sys.argv[2]))
    await process.start()
    print(process.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_envoy_dies_when_its_parent_is_killed(
    ads: AdsServer, tmp_path: Path, agent_command: list[subprocess.Popen[str]]
) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, str(ads.port), str(tmp_path)],
        env=dict(os.environ, PYTHONPATH=str(SRC)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    agent_command.append(parent)
    assert parent.stdout is not None
    envoy_pid = int(await asyncio.to_thread(parent.stdout.readline))
    assert process_exists(envoy_pid)

    try:
        parent.kill()  # no chance to clean up: only the kernel can stop Envoy now
        await asyncio.to_thread(parent.wait, 10)
        await eventually(lambda: not process_exists(envoy_pid), "Envoy to die", timeout=10)
    finally:
        if process_exists(envoy_pid):
            os.kill(envoy_pid, signal.SIGKILL)
