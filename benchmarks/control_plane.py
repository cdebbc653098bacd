"""Control-plane benchmark: time from a config change to every proxy having ACKed it.

Two parts, each printed as a table and written under benchmarks/results/:

1. real Envoys: an in-process ControlPlane serving a few Envoy sidecars (started by the agent's
   Sidecar supervisor); endpoint changes through ``InMemoryRegistry.set_endpoint`` and routing
   weight edits through the YAML folder; "done" is read from the ProxyStatusBoard (every proxy
   SYNCED, with a new EDS or RDS version ACKed).
2. scale: the control plane in a subprocess pinned to one CPU (the first this process may
   use), serving a generated mesh of 1,000 ServiceEntry services; hundreds of simulated ADS
   clients (Delta and SotW in separate runs) in this process on another (the second),
   subscribing like Envoy (CDS/LDS wildcard, then EDS for every EDS cluster, RDS for every
   route name) and ACKing every response; 1% of the services change endpoints at a time.

Run: ``.venv/bin/python benchmarks/control_plane.py`` (about 5 minutes), ``--quick`` (1-2 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_report import (
    REPO,
    cpu_seconds,
    die_with_parent,
    format_table,
    machine_facts,
    median,
    peak_rss_mb,
    percentile,
    pin_to_cpu,
    rss_mb,
    terminate_on_sigterm,
    write_results,
)

sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from pilotfish.agent.ports import free_port
from pilotfish.agent.supervisor import Sidecar
from pilotfish.controller.collector import pace_collector_for_control_plane
from pilotfish.controller.control_plane import ControlPlane, ControlPlaneSettings
from pilotfish.controller.mesh_controller import MeshController
from pilotfish.discovery import InMemoryRegistry
from pilotfish.model.diagnostics import SourceMap
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.resources import (
    MeshConfig,
    Meta,
    ServiceEntry,
    ServicePort,
    WorkloadEntrySpec,
)
from pilotfish.model.services import Endpoint
from pilotfish.snapshot import type_urls
from pilotfish.xds.protocol import SyncStatus
from pilotfish.xds.server import start_xds_server
from pilotfish.xds.status_board import ProxyStatusBoard
from xds_clients import DeltaClient, SotwClient

# The targets for 200 proxies: Delta streams p99 < 100 ms, state-of-the-world (which
# must resend every subscribed assignment) p99 < 300 ms.
TARGET_P99_MS = {"delta": 100.0, "sotw": 300.0}
TARGET_RSS_MB = 300.0
SERVICE_PORT = 8080
CHANGE_TIMEOUT_SECONDS = 60.0
SYNC_TIMEOUT_SECONDS = 180.0
SCALE_HOST_SUFFIX = "bench.svc.cluster.local"


# --- shared: waiting on the status board ------------------------------------------------------


def acked_versions(board: ProxyStatusBoard, type_url: str) -> dict[int, str | None]:
    """The version of ``type_url`` each open stream has ACKed."""
    versions: dict[int, str | None] = {}
    for proxy in board.proxies():
        status = proxy.type_status(type_url)
        versions[proxy.stream_id] = status.acked_version if status else None
    return versions


def acked_everywhere(
    board: ProxyStatusBoard, type_url: str, before: dict[int, str | None]
) -> Callable[[], bool]:
    return lambda: all_acked_new_version(board, type_url, before)


def all_acked_new_version(
    board: ProxyStatusBoard, type_url: str, before: dict[int, str | None]
) -> bool:
    """Every stream open before the change is SYNCED on ``type_url`` at a version it did not
    have before the change."""
    proxies = {p.stream_id: p for p in board.proxies()}
    for stream_id, old_version in before.items():
        proxy = proxies.get(stream_id)
        if proxy is None:
            return False
        status = proxy.type_status(type_url)
        if status is None or status.status is not SyncStatus.SYNCED:
            return False
        if status.acked_version == old_version:
            return False
    return True


async def wait_until_answered(
    board: ProxyStatusBoard, controller: MeshController, generation_before: int
) -> float | None:
    """The monotonic time every stream had answered the generation after ``generation_before``
    (woken by the board, not polling it: at hundreds of streams a poll costs the control
    plane more than a millisecond), or None after ``CHANGE_TIMEOUT_SECONDS``."""
    try:
        generation = await asyncio.wait_for(
            controller.wait_for_change(generation_before), CHANGE_TIMEOUT_SECONDS
        )
    except TimeoutError:
        return None
    if not await board.wait_until_answered(generation, CHANGE_TIMEOUT_SECONDS):
        return None
    return time.monotonic()


async def wait_until_board(
    condition: Callable[[], bool], timeout: float, interval: float = 0.001
) -> float:
    """Poll ``condition`` and return the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        await asyncio.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout:.0f}s")


def summarize_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    ms = [value * 1000 for value in latencies_s]
    return {
        "n": float(len(ms)),
        "p50_ms": percentile(ms, 0.50),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms) if ms else float("nan"),
        "median_ms": median(ms),
    }


# --- part 1: real Envoys ------------------------------------------------------------------


def envoy_mesh_yaml(services: int, weight: int) -> tuple[str, str]:
    entries = []
    for index in range(services):
        entries.append(
            f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc-{index}}}
spec:
  hosts: [svc-{index}.bench.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {SERVICE_PORT}, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {20000 + index}}}}}]
"""
        )
    split = f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: split}}
spec:
  hosts: [svc-0.bench.local]
  http:
  - route:
    - destination: {{host: svc-0.bench.local, port: {{number: {SERVICE_PORT}}}}}
      weight: {weight}
    - destination: {{host: svc-1.bench.local, port: {{number: {SERVICE_PORT}}}}}
      weight: {100 - weight}
"""
    return "---\n".join(entries), split


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


@dataclass
class EnvoyRun:
    stream: str
    envoys: int
    services: int
    startup_sync_s: float
    endpoint_changes_s: list[float] = field(default_factory=list)
    weight_edits_s: list[float] = field(default_factory=list)


async def bench_real_envoys(
    envoys: int, services: int, endpoint_changes: int, weight_edits: int, delta: bool
) -> EnvoyRun:
    work = Path(tempfile.mkdtemp(prefix="pilotfish-bench-cp-"))
    config_dir = work / "mesh"
    config_dir.mkdir()
    entries_yaml, split_yaml = envoy_mesh_yaml(services, 50)
    (config_dir / "services.yaml").write_text(entries_yaml)
    write_atomically(config_dir / "split.yaml", split_yaml)
    replicas = InMemoryRegistry()
    control_plane = ControlPlane(config_dir, ControlPlaneSettings(), registries=(replicas,))
    sidecars: list[Sidecar] = []
    try:
        await control_plane.start()
        board = control_plane.board
        started = time.monotonic()
        for index in range(envoys):
            node = ProxyNode(
                id=f"sidecar-{index}",
                kind="sidecar",
                service=None,
                outbound_port=free_port(),
                inbound_port=free_port(),
                app_port=free_port(),
            )
            sidecars.append(
                Sidecar(
                    node,
                    xds_address=("127.0.0.1", control_plane.xds_port),
                    work_dir=work / node.id,
                    admin_port=free_port(),
                    delta=delta,
                    log_level="warning",
                    on_line=lambda line: None,
                )
            )
        await asyncio.gather(*(sidecar.start() for sidecar in sidecars))

        def everyone_synced() -> bool:
            proxies = board.proxies()
            return len(proxies) == envoys and all(
                p.overall_status is SyncStatus.SYNCED and len(p.types) == 4 for p in proxies
            )

        synced_at = await wait_until_board(everyone_synced, SYNC_TIMEOUT_SECONDS)
        run = EnvoyRun("delta" if delta else "sotw", envoys, services, synced_at - started)
        rng = random.Random(7)
        for change in range(endpoint_changes):
            before = acked_versions(board, type_urls.ENDPOINT)
            hostname = f"svc-{rng.randrange(services)}.bench.local"
            endpoint = Endpoint("127.0.0.1", {SERVICE_PORT: 30000 + change}, name="churn")
            changed_at = time.monotonic()
            replicas.set_endpoint(hostname, "churn", endpoint)
            done = await wait_until_board(
                acked_everywhere(board, type_urls.ENDPOINT, before),
                CHANGE_TIMEOUT_SECONDS,
            )
            run.endpoint_changes_s.append(done - changed_at)
            await asyncio.sleep(0.05 + rng.random() * 0.05)
        for edit in range(weight_edits):
            before = acked_versions(board, type_urls.ROUTE)
            weight = 10 + (edit * 7) % 80
            _, split_yaml = envoy_mesh_yaml(services, weight)
            edited_at = time.monotonic()
            write_atomically(config_dir / "split.yaml", split_yaml)
            done = await wait_until_board(
                acked_everywhere(board, type_urls.ROUTE, before),
                CHANGE_TIMEOUT_SECONDS,
            )
            run.weight_edits_s.append(done - edited_at)
            await asyncio.sleep(0.05 + rng.random() * 0.1)
        return run
    finally:
        await asyncio.gather(
            *(sidecar.shutdown(0.0) for sidecar in sidecars), return_exceptions=True
        )
        await control_plane.stop(0.0)
        shutil.rmtree(work, ignore_errors=True)


# --- part 2: scale, control plane side (runs as a subprocess) -----------------------------


def scale_hostname(index: int) -> str:
    return f"svc-{index}.{SCALE_HOST_SUFFIX}"


def scale_mesh_config(services: int, endpoints_per_service: int) -> MeshConfig:
    source = SourceMap("generated")
    entries = []
    for index in range(services):
        entries.append(
            ServiceEntry(
                meta=Meta("ServiceEntry", f"svc-{index}", "bench", source),
                hosts=(scale_hostname(index),),
                ports=(ServicePort(SERVICE_PORT, "http", "HTTP"),),
                location="MESH_INTERNAL",
                resolution="STATIC",
                endpoints=tuple(
                    WorkloadEntrySpec(
                        address="127.0.0.1",
                        ports={"http": 20000 + (index * endpoints_per_service + e) % 40000},
                    )
                    for e in range(endpoints_per_service)
                ),
            )
        )
    return MeshConfig(service_entries=tuple(entries))


async def serve_scale(
    services: int, endpoints_per_service: int, profiler: cProfile.Profile | None = None
) -> None:
    """Serve xDS for a generated mesh and apply changes asked for on stdin (one JSON a line).

    Every reply is one JSON line on stdout. Times are ``time.monotonic()``, which is one clock
    for every process on the machine, so the parent can compare them with its own.
    """
    die_with_parent()
    built = time.monotonic()
    replicas = InMemoryRegistry()
    controller = MeshController(
        [replicas], debounce_seconds=ControlPlaneSettings().debounce_seconds
    )
    controller.apply_config(scale_mesh_config(services, endpoints_per_service), ())
    controller.publish_now()
    board = ProxyStatusBoard()
    server, port = await start_xds_server(controller, [board])
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    reply({"xds_port": port, "pid": os.getpid(), "build_s": time.monotonic() - built})
    try:
        while line := await stdin.readline():
            command = json.loads(line)
            if command["op"] == "status":
                proxies = board.proxies()
                synced = sum(
                    1
                    for p in proxies
                    if p.overall_status is SyncStatus.SYNCED and len(p.types) == 4
                )
                reply({"streams": len(proxies), "synced": synced})
            elif command["op"] == "change":
                if profiler is not None:
                    profiler.enable()
                    profiler = None  # enabled once; main() disables and dumps it
                before = acked_versions(board, type_urls.ENDPOINT)
                generation_before = controller.generation
                cpu_before = cpu_seconds(os.getpid())
                changed_at = time.monotonic()
                for hostname in command["hosts"]:
                    endpoint = Endpoint("127.0.0.1", {SERVICE_PORT: command["port"]}, name="churn")
                    replicas.set_endpoint(hostname, "churn", endpoint)
                acked_at = await wait_until_answered(board, controller, generation_before)
                # Answered may be a NACK: only a new version ACKed everywhere counts.
                if not all_acked_new_version(board, type_urls.ENDPOINT, before):
                    acked_at = None
                reply(
                    {
                        "changed_at": changed_at,
                        "acked_at": acked_at,
                        "streams": len(before),
                        "cpu_s": cpu_seconds(os.getpid()) - cpu_before,
                    }
                )
            elif command["op"] == "stats":
                reply(
                    {
                        "cpu_s": cpu_seconds(os.getpid()),
                        "peak_rss_mb": peak_rss_mb(os.getpid()),
                        "rss_mb": rss_mb(os.getpid()),
                    }
                )
            elif command["op"] == "quit":
                break
    finally:
        await server.stop(0)


# --- part 2: scale, client side -------------------------------------------------------------


@dataclass
class SimulatedProxy:
    """One fake Envoy: what it subscribed to and when each EDS response reached it."""

    index: int
    eds_names: tuple[str, ...] = ()
    route_names: tuple[str, ...] = ()
    eds_seen: set[str] = field(default_factory=set)
    eds_arrivals: list[float] = field(default_factory=list)
    routes_seen: bool = False
    error: str | None = None

    @property
    def node(self) -> ProxyNode:
        # Ports are only announced, never bound: no Envoy listens behind a simulated proxy.
        base = 40000 + 3 * self.index
        return ProxyNode(
            id=f"sim-{self.index}",
            kind="sidecar",
            namespace="bench",
            outbound_port=base,
            inbound_port=base + 1,
            app_port=base + 2,
        )

    @property
    def synced(self) -> bool:
        return bool(self.eds_names) and self.routes_seen and self.eds_seen >= set(self.eds_names)


def eds_cluster_names(resources: Sequence[Any]) -> tuple[str, ...]:
    names = []
    for packed in resources:
        cluster = cluster_pb2.Cluster.FromString(packed.value)
        if cluster.type == cluster_pb2.Cluster.EDS:
            names.append(cluster.name)
    return tuple(sorted(names))


def route_config_names(resources: Sequence[Any]) -> tuple[str, ...]:
    names = set()
    for packed in resources:
        listener = listener_pb2.Listener.FromString(packed.value)
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                if network_filter.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                    manager = hcm_pb2.HttpConnectionManager()
                    network_filter.typed_config.Unpack(manager)
                    if manager.HasField("rds"):
                        names.add(manager.rds.route_config_name)
    return tuple(sorted(names))


class Arrivals:
    """Wakes the benchmark when every simulated proxy has seen one more EDS response."""

    def __init__(self, proxies: Sequence[SimulatedProxy]) -> None:
        self.proxies = proxies
        self.changed = asyncio.Event()

    def note(self) -> None:
        self.changed.set()

    async def wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))


async def run_delta_proxy(target: str, proxy: SimulatedProxy, arrivals: Arrivals) -> None:
    async with DeltaClient(target, proxy.node) as client:
        client.request(type_urls.CLUSTER)
        client.request(type_urls.LISTENER)
        while True:
            response = await client.receive(timeout=3600)
            received = time.monotonic()
            if response.type_url == type_urls.CLUSTER:
                names = eds_cluster_names([r.resource for r in response.resources])
                new = sorted(set(names) - set(proxy.eds_names))
                proxy.eds_names = tuple(sorted(set(proxy.eds_names) | set(names)))
                if new:
                    client.request(type_urls.ENDPOINT, subscribe=new)
            elif response.type_url == type_urls.LISTENER:
                routes = route_config_names([r.resource for r in response.resources])
                new = sorted(set(routes) - set(proxy.route_names))
                proxy.route_names = tuple(sorted(set(proxy.route_names) | set(routes)))
                if new:
                    client.request(type_urls.ROUTE, subscribe=new)
            elif response.type_url == type_urls.ENDPOINT:
                proxy.eds_seen.update(r.name for r in response.resources)
                proxy.eds_arrivals.append(received)
            elif response.type_url == type_urls.ROUTE:
                proxy.routes_seen = True
            client.ack(response)
            arrivals.note()


async def run_sotw_proxy(target: str, proxy: SimulatedProxy, arrivals: Arrivals) -> None:
    async with SotwClient(target, proxy.node) as client:
        client.request(type_urls.CLUSTER)
        client.request(type_urls.LISTENER)
        while True:
            response = await client.receive(timeout=3600)
            received = time.monotonic()
            if response.type_url == type_urls.CLUSTER:
                names = eds_cluster_names(response.resources)
                if names != proxy.eds_names:
                    proxy.eds_names = names
                    client.request(type_urls.ENDPOINT, names)
                client.ack(response)
            elif response.type_url == type_urls.LISTENER:
                routes = route_config_names(response.resources)
                if routes != proxy.route_names:
                    proxy.route_names = routes
                    client.request(type_urls.ROUTE, routes)
                client.ack(response)
            elif response.type_url == type_urls.ENDPOINT:
                # SotW answers carry every subscribed resource; names are all we need here.
                proxy.eds_seen = set(proxy.eds_names)
                proxy.eds_arrivals.append(received)
                client.ack(response, proxy.eds_names)
            elif response.type_url == type_urls.ROUTE:
                proxy.routes_seen = True
                client.ack(response, proxy.route_names)
            arrivals.note()


async def guarded(
    run: Callable[[str, SimulatedProxy, Arrivals], Any],
    target: str,
    proxy: SimulatedProxy,
    arrivals: Arrivals,
) -> None:
    try:
        await run(target, proxy, arrivals)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        proxy.error = repr(exc)
        arrivals.note()


@dataclass
class ScaleRun:
    stream: str
    clients: int
    services: int
    changes_requested: int
    services_per_change: int
    debounce_s: float
    connect_sync_s: float | None = None
    board_all_acked_s: list[float] = field(default_factory=list)
    clients_all_received_s: list[float] = field(default_factory=list)
    server_cpu_per_change_s: list[float] = field(default_factory=list)
    server_cpu_total_s: float | None = None
    server_peak_rss_mb: float | None = None
    server_rss_mb: float | None = None
    failed_clients: int = 0
    # The CPUs the control plane process and the clients were allowed to run on.
    control_plane_cpus: list[int] = field(default_factory=list)
    client_cpus: list[int] = field(default_factory=list)
    note: str = ""


class ControlPlaneProcess:
    """The scale run's control plane, in its own process on its own CPU."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(
        cls,
        services: int,
        endpoints_per_service: int,
        profile_to: Path | None = None,
        python_default_gc: bool = False,
        cpu: int | None = None,
    ) -> ControlPlaneProcess:
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve-scale",
            "--services",
            str(services),
            "--endpoints-per-service",
            str(endpoints_per_service),
        ]
        if profile_to is not None:
            argv += ["--profile-control-plane", str(profile_to)]
        if python_default_gc:
            argv.append("--python-default-gc")
        if cpu is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(cpu), *argv]
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        return cls(process)

    async def ask(self, command: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()
        return await self.read(timeout)

    async def read(self, timeout: float = 120.0) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError("the control plane process exited")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(Exception):
                assert self.process.stdin is not None
                self.process.stdin.write(b'{"op": "quit"}\n')
                await self.process.stdin.drain()
                await asyncio.wait_for(self.process.wait(), 5)
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def bench_scale(
    stream: str,
    clients: int,
    services: int,
    endpoints_per_service: int,
    changes: int,
    budget_s: float,
    profile_dir: Path | None = None,
    python_default_gc: bool = False,
    control_plane_cpu: int | None = None,
) -> ScaleRun:
    per_change = max(1, services // 100)
    run = ScaleRun(
        stream,
        clients,
        services,
        changes,
        per_change,
        ControlPlaneSettings().debounce_seconds,
    )
    profile_to = None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        profile_to = profile_dir / f"control-plane-{clients}-{stream}.pstats"
    control_plane = await ControlPlaneProcess.start(
        services, endpoints_per_service, profile_to, python_default_gc, control_plane_cpu
    )
    proxies = [SimulatedProxy(index) for index in range(clients)]
    arrivals = Arrivals(proxies)
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    try:
        hello = await control_plane.read(timeout=120)
        target = f"127.0.0.1:{hello['xds_port']}"
        pid = int(hello["pid"])
        run.control_plane_cpus = sorted(os.sched_getaffinity(pid))
        run.client_cpus = sorted(os.sched_getaffinity(0))
        runner = run_delta_proxy if stream == "delta" else run_sotw_proxy
        connect_started = time.monotonic()
        tasks = [asyncio.create_task(guarded(runner, target, p, arrivals)) for p in proxies]
        try:
            await arrivals.wait(
                lambda: all(p.synced or p.error for p in proxies), SYNC_TIMEOUT_SECONDS
            )
        except TimeoutError:
            run.note = f"only {sum(p.synced for p in proxies)} of {clients} clients synced"
            return run
        run.failed_clients = sum(1 for p in proxies if p.error)
        live = [p for p in proxies if not p.error]
        status = await control_plane.ask({"op": "status"})
        deadline = time.monotonic() + 30
        while status["synced"] < len(live) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            status = await control_plane.ask({"op": "status"})
        run.connect_sync_s = time.monotonic() - connect_started
        cpu_start = cpu_seconds(pid)
        rng = random.Random(11)
        for change in range(changes):
            if time.monotonic() - started > budget_s:
                run.note = f"stopped after {change} changes: time budget {budget_s:.0f}s spent"
                break
            await asyncio.sleep(0.1 + rng.random() * 0.1)
            marks = {p.index: len(p.eds_arrivals) for p in live}
            hosts = [scale_hostname(i) for i in rng.sample(range(services), per_change)]
            answer = await control_plane.ask(
                {"op": "change", "hosts": hosts, "port": 30000 + change},
                timeout=CHANGE_TIMEOUT_SECONDS + 10,
            )

            def everyone_received(marks: dict[int, int] = marks) -> bool:
                return all(len(p.eds_arrivals) > marks[p.index] or p.error for p in live)

            try:
                await arrivals.wait(everyone_received, CHANGE_TIMEOUT_SECONDS)
            except TimeoutError:
                run.note = f"change {change}: not every client received it within 60s"
                break
            changed_at = float(answer["changed_at"])
            last_arrival = max(p.eds_arrivals[marks[p.index]] for p in live if not p.error)
            run.clients_all_received_s.append(last_arrival - changed_at)
            if answer["acked_at"] is not None:
                run.board_all_acked_s.append(float(answer["acked_at"]) - changed_at)
            run.server_cpu_per_change_s.append(float(answer["cpu_s"]))
        stats = await control_plane.ask({"op": "stats"})
        run.server_cpu_total_s = float(stats["cpu_s"]) - cpu_start
        run.server_peak_rss_mb = float(stats["peak_rss_mb"])
        run.server_rss_mb = float(stats["rss_mb"])
        run.failed_clients = sum(1 for p in proxies if p.error)
        return run
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await control_plane.stop()


# --- report -------------------------------------------------------------------------------


def envoy_table(runs: Sequence[EnvoyRun]) -> str:
    rows: list[list[object]] = []
    for run in runs:
        for what, samples in (
            ("endpoint change (registry)", run.endpoint_changes_s),
            ("weight edit (YAML file)", run.weight_edits_s),
        ):
            stats = summarize_ms(samples)
            rows.append(
                [
                    f"{run.envoys} Envoys, {run.stream}",
                    what,
                    len(samples),
                    stats["p50_ms"],
                    stats["p99_ms"],
                    stats["max_ms"],
                ]
            )
    return format_table(
        ["proxies", "change", "n", "p50 ms", "p99 ms", "max ms"],
        rows,
    )


def _cpu_list(cpus: Sequence[int]) -> str:
    return ",".join(map(str, cpus)) or "?"


def scale_table(runs: Sequence[ScaleRun]) -> str:
    rows: list[list[object]] = []
    for run in runs:
        board = summarize_ms(run.board_all_acked_s)
        received = summarize_ms(run.clients_all_received_s)
        cpu_per_change = median(run.server_cpu_per_change_s) * 1000
        rows.append(
            [
                f"{run.clients} x {run.stream}",
                run.services,
                len(run.board_all_acked_s),
                board["p50_ms"],
                board["p99_ms"],
                f"{board['p99_ms']:.0f} vs < {TARGET_P99_MS[run.stream]:.0f}",
                received["p50_ms"],
                received["p99_ms"],
                cpu_per_change,
                cpu_per_change * 1000 / run.clients,
                run.server_cpu_total_s if run.server_cpu_total_s is not None else float("nan"),
                f"{run.server_peak_rss_mb or float('nan'):.0f} vs < {TARGET_RSS_MB:.0f}",
                run.server_rss_mb if run.server_rss_mb is not None else float("nan"),
                run.connect_sync_s if run.connect_sync_s is not None else float("nan"),
                f"{_cpu_list(run.control_plane_cpus)} / {_cpu_list(run.client_cpus)}",
            ]
        )
    table = format_table(
        [
            "clients",
            "services",
            "changes",
            "all ACKed p50 ms",
            "p99 ms",
            "p99 vs target",
            "all received p50 ms",
            "p99 ms",
            "CP CPU ms/change",
            "us/change/client",
            "CP CPU s total",
            "CP peak RSS MB vs target",
            "RSS MB at end",
            "connect+sync s",
            "CPUs CP / clients",
        ],
        rows,
    )
    notes = [f"  {run.clients} x {run.stream}: {run.note}" for run in runs if run.note]
    failed = [
        f"  {run.clients} x {run.stream}: {run.failed_clients} clients failed"
        for run in runs
        if run.failed_clients
    ]
    return "\n".join([table, *notes, *failed])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute run")
    parser.add_argument(
        "--clients",
        default=None,
        help="comma-separated simulated client counts (default 50,200,500; quick 50)",
    )
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints-per-service", type=int, default=3)
    parser.add_argument("--changes", type=int, default=None, help="default 20 (quick 5)")
    parser.add_argument("--envoys", type=int, default=4)
    parser.add_argument("--skip-envoys", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--streams", default="delta,sotw", help="delta, sotw or both")
    parser.add_argument(
        "--profile-control-plane",
        type=Path,
        default=None,
        help="scale runs: cProfile the control plane process, write .pstats files here",
    )
    parser.add_argument(
        "--python-default-gc",
        action="store_true",
        help="keep Python's garbage-collector thresholds (the baseline): by default the "
        "control plane is paced as `pilotfish up` paces it",
    )
    parser.add_argument(
        "--one-cpu",
        action="store_true",
        help="scale runs: the control plane and the clients share one CPU, as they did "
        "(unintentionally) for every scale number measured before 2026-12-02",
    )
    parser.add_argument("--serve-scale", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def split_cpus(allowed: Sequence[int], one_cpu: bool) -> tuple[int | None, int | None]:
    """(the control plane's CPU, the clients' CPU): two different ones where there are two,
    so that neither side's cost lands in the other's latency; ``one_cpu`` shares one."""
    if len(allowed) < 2:
        return None, None
    if one_cpu:
        return allowed[1], allowed[1]
    return allowed[0], allowed[1]


async def run_benchmarks(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    changes = args.changes or (5 if args.quick else 20)
    clients = [int(c) for c in (args.clients or ("50" if args.quick else "50,200,500")).split(",")]
    streams = [s.strip() for s in args.streams.split(",") if s.strip()]
    results: dict[str, Any] = {"settings": vars(args) | {"changes": changes}}
    sections: list[str] = []
    failures: list[str] = []

    if not args.skip_envoys:
        envoy_runs = []
        for stream in streams:
            print(f"real Envoys: {args.envoys} sidecars over {stream} ...", flush=True)
            try:
                envoy_runs.append(
                    await bench_real_envoys(
                        args.envoys, 20, changes, max(3, changes // 2), delta=stream == "delta"
                    )
                )
            except Exception as exc:  # one broken protocol must not hide the other's numbers
                failures.append(f"real Envoys over {stream} failed: {exc!r}")
                print(failures[-1], flush=True)
        results["real_envoys"] = [vars(run) for run in envoy_runs]
        sections.append(
            "Change -> every Envoy ACKed (ProxyStatusBoard, in-process control plane; "
            "includes the controller's debounce; YAML edits include the folder watcher)\n"
            + envoy_table(envoy_runs)
        )
        print(sections[-1], flush=True)

    if not args.skip_scale:
        control_plane_cpu, clients_cpu = split_cpus(sorted(os.sched_getaffinity(0)), args.one_cpu)
        if clients_cpu is not None:
            pin_to_cpu(os.getpid(), clients_cpu)
        budget = 120.0 if args.quick else 150.0
        scale_runs = []
        for count in clients:
            for stream in streams:
                print(f"scale: {count} simulated {stream} clients x {args.services} services ...")
                try:
                    scale_runs.append(
                        await bench_scale(
                            stream,
                            count,
                            args.services,
                            args.endpoints_per_service,
                            changes,
                            budget,
                            args.profile_control_plane,
                            args.python_default_gc,
                            control_plane_cpu,
                        )
                    )
                except Exception as exc:
                    failures.append(f"scale {count} x {stream} failed: {exc!r}")
                    print(failures[-1], flush=True)
                    continue
                print(scale_table(scale_runs[-1:]), flush=True)
        results["scale"] = [vars(run) for run in scale_runs]
        sections.append(
            f"1% endpoint churn ({max(1, args.services // 100)} services per change) -> every "
            "simulated client: 'all ACKed' from the control plane's ProxyStatusBoard, "
            "'all received' from the clients' receive timestamps; both from the moment "
            "the registry changed (debounce included)\n" + scale_table(scale_runs)
        )
    results["failures"] = failures
    if failures:
        sections.append("Failures\n" + "\n".join(f"  {line}" for line in failures))
    return results, "\n\n".join(sections)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.python_default_gc:
        # Both control planes measured here (the scale run's process, and this one for the
        # real Envoys) run as `pilotfish up` and `pilotfish control-plane` run them.
        pace_collector_for_control_plane()
    if args.serve_scale:
        # Profiles the changes only (enabled at the first one): the initial sync is not
        # what a change costs.
        profiler = cProfile.Profile() if args.profile_control_plane else None
        try:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(serve_scale(args.services, args.endpoints_per_service, profiler))
        finally:
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile_control_plane)
        return 0
    facts = machine_facts()
    with terminate_on_sigterm():
        try:
            results, table = asyncio.run(run_benchmarks(args))
        except KeyboardInterrupt:
            print("interrupted; every process this benchmark started has been stopped")
            return 130
    print()
    print(table)
    path = write_results("control_plane", facts, results, table)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
