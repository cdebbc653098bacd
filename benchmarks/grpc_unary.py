"""gRPC unary calls through the mesh's sidecar pair vs direct: latency and CPU per call.

A grpcio server (a subprocess of this script, one generic unary method that answers with the
request's bytes) and a grpcio client (this process) making ``--calls`` calls one after the
other, each with a ``--payload``-byte message; latency of each call from the client's
``perf_counter_ns``. ``--pairs mesh`` (the default, ``mesh_pair``): two `pilotfish up` meshes
(PeerAuthentication DISABLE and STRICT) where the server runs twice as Workloads: as a TCP
port the client reaches through its sidecar's ``upstreams`` port (the calls ride one TCP
connection through both sidecars), and, in the mTLS mesh, as a GRPC port the client reaches
as ``grpcapi:7001`` through its sidecar's outbound listener (grpcio's ``grpc.http_proxy``:
CONNECT, then HTTP/2 routed at both sidecars). ``--pairs static``: ``sidecar_pair``'s
hand-written TCP pairs and an HTTP/2 pair. CPU per call: utime + stime (/proc) of the client
process, the server process and the Envoys over the calls, divided by the calls. Envoys on
CPU 0; client, server and the control plane on CPU 1; the targets interleaved,
``--repetitions`` times, medians reported with the ratio to direct measured in the same run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from bench_report import (
    cpu_seconds,
    die_with_parent,
    format_table,
    machine_facts,
    median,
    percentile,
    pin_to_cpu,
    start_control_plane,
    terminate_on_sigterm,
    write_results,
)
from mesh_pair import CONFIG_SOURCE as MESH_SOURCE
from mesh_pair import MESH_PAIRS, MeshPair
from sidecar_pair import CONFIG_SOURCE, PAIRS, SidecarPair

METHOD = "/pilotfish.bench.Echo/Unary"
MESH = "apiVersion: pilotfish.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {}\n"
ENVOY_CPU, LOAD_CPU = 0, 1
WARMUP_CALLS = 200


def serve(ports_file: Path | None) -> None:
    """The echo server on a free port written to ``ports_file``; None: on ``$PORT``, as a
    mesh Workload runs it."""

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "pilotfish.bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"127.0.0.1:{os.environ['PORT'] if ports_file is None else 0}")
    server.start()
    if ports_file is not None:
        ports_file.write_text(json.dumps({"grpc": port}))
    threading.Event().wait()


def start_server(folder: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    ports_file = folder / "server.json"
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(ports_file)], preexec_fn=die_with_parent
    )
    deadline = time.monotonic() + 30
    while not ports_file.exists() or not ports_file.read_text():
        if child.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the gRPC server did not start")
        time.sleep(0.05)
    return child, json.loads(ports_file.read_text())


@dataclass(frozen=True)
class Target:
    address: str
    """What the channel is for: ``127.0.0.1:<port>``, or ``service:port`` through a proxy."""
    proxy: str | None
    """The client sidecar's outbound listener (grpcio sends CONNECT to it), or None."""
    envoys: tuple[int, ...]
    server: int

    def channel(self) -> grpc.Channel:
        if self.proxy is None:
            return grpc.insecure_channel(self.address, options=[("grpc.enable_http_proxy", 0)])
        return grpc.insecure_channel(self.address, options=[("grpc.http_proxy", self.proxy)])


def answers(target: Target) -> bool:
    with target.channel() as channel:
        try:
            return bool(channel.unary_unary(METHOD)(b"ping", timeout=2) == b"ping")
        except grpc.RpcError:
            return False


def calls(target: Target, count: int, payload: int) -> dict[str, float]:
    pids, server_pid = target.envoys, target.server
    message = b"x" * payload
    with target.channel() as channel:
        unary = channel.unary_unary(METHOD)
        for _ in range(WARMUP_CALLS):
            unary(message, timeout=10)
        samples = []
        before = {pid: cpu_seconds(pid) for pid in (os.getpid(), server_pid, *pids)}
        for _ in range(count):
            started = time.perf_counter_ns()
            if unary(message, timeout=10) != message:
                raise RuntimeError(f"{target.address}: the answer is not the request")
            samples.append((time.perf_counter_ns() - started) / 1e3)
        spent = {pid: cpu_seconds(pid) - before[pid] for pid in before}
    envoys = sum(spent[pid] for pid in pids)
    return {
        "p50_us": percentile(samples, 0.50),
        "p99_us": percentile(samples, 0.99),
        "client_cpu_us": spent[os.getpid()] * 1e6 / count,
        "server_cpu_us": spent[server_pid] * 1e6 / count,
        "envoy_cpu_us": envoys * 1e6 / count,
        "total_cpu_us": sum(spent.values()) * 1e6 / count,
    }


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}" if baseline else "n/a"


def tables(
    runs: Mapping[str, list[dict[str, float]]], args: argparse.Namespace, config: str
) -> str:
    def med(target: str, key: str) -> float:
        return median([run[key] for run in runs[target]])

    rows = [
        (
            target,
            med(target, "p50_us"),
            med(target, "p99_us"),
            ratio(med(target, "p50_us"), med("direct", "p50_us")),
            ratio(med(target, "p99_us"), med("direct", "p99_us")),
            med(target, "client_cpu_us"),
            med(target, "server_cpu_us"),
            med(target, "envoy_cpu_us") if target != "direct" else "-",
            med(target, "total_cpu_us"),
            ratio(med(target, "total_cpu_us"), med("direct", "total_cpu_us")),
        )
        for target in runs
    ]
    header = (
        "target",
        "p50 us",
        "p99 us",
        "p50 / direct",
        "p99 / direct",
        "client CPU us",
        "server CPU us",
        "Envoy CPU us",
        "CPU us/call",
        "CPU / direct",
    )
    return (
        f"Sidecar pairs: {config}. Through a TCP upstream port gRPC rides one TCP connection; "
        f"an HTTP/2 pair (a GRPC port: CONNECT to the outbound listener in the mesh) routes "
        f"each call at both sidecars, with its request log to the control plane.\n"
        f"Envoys on CPU {ENVOY_CPU}; client, server and control plane on CPU {LOAD_CPU}; "
        f"medians of {args.repetitions} interleaved repetitions of {args.calls} sequential "
        f"unary calls ({args.payload}-byte messages, after {WARMUP_CALLS} warm-up calls); "
        f"CPU is per call (/proc ticks are 10 ms).\n{format_table(header, rows)}\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument(
        "--pairs",
        choices=("mesh", "static", "both"),
        default="mesh",
        help="pilotfish up's sidecars, hand-written bootstraps around the mesh's filters, or both",
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-workload", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None or args.serve_workload is not None:
        serve(args.serve)
        return 0
    facts = machine_facts()
    runs: dict[str, list[dict[str, float]]] = {}
    config = {
        "mesh": MESH_SOURCE,
        "static": CONFIG_SOURCE,
        "both": f"{MESH_SOURCE}; and (static pairs) {CONFIG_SOURCE}",
    }[args.pairs]
    with terminate_on_sigterm(), tempfile.TemporaryDirectory(prefix="bench-grpc-") as temp:
        work = Path(temp)
        children: list[subprocess.Popen[bytes]] = []
        pairs: list[SidecarPair | MeshPair] = []
        try:
            server, server_ports = start_server(work)
            children.append(server)
            load = [server.pid, os.getpid()]
            targets = {"direct": Target(f"127.0.0.1:{server_ports['grpc']}", None, (), server.pid)}
            if args.pairs in ("static", "both"):
                targets |= static_targets(work, server, server_ports, pairs, children, load)
            if args.pairs in ("mesh", "both"):
                targets |= mesh_targets(work, pairs, load)
            for pid in load:
                pin_to_cpu(pid, LOAD_CPU)
            for target in targets.values():
                for pid in target.envoys:
                    pin_to_cpu(pid, ENVOY_CPU)
            runs = {name: [] for name in targets}
            for repetition in range(args.repetitions):
                for name, target in targets.items():
                    print(f"repetition {repetition + 1}: {name}", flush=True)
                    runs[name].append(calls(target, args.calls, args.payload))
        finally:
            for pair in pairs:
                pair.stop()
            for child in children:
                child.terminate()
                child.wait(10)
    table = tables(runs, args, config)
    print(table)
    path = write_results("grpc_unary", facts, {"runs": runs, "config": config}, table)
    print(f"results: {path}")
    return 0


def static_targets(
    work: Path,
    server: subprocess.Popen[bytes],
    server_ports: Mapping[str, int],
    pairs: list[SidecarPair | MeshPair],
    children: list[subprocess.Popen[bytes]],
    load: list[int],
) -> dict[str, Target]:
    """The hand-written TCP pairs and the HTTP/2 pair, reporting to a control plane of their
    own; appends what it starts to ``pairs``, ``children`` and ``load``."""
    (work / "mesh").mkdir()
    (work / "mesh" / "mesh.yaml").write_text(MESH)
    control_plane, xds_port = start_control_plane(work / "mesh")
    children.append(control_plane)
    load.append(control_plane.pid)
    targets = {}
    kinds = [(name, label, tls, False) for name, label, tls in PAIRS]
    kinds.append(("pair-http2", "static HTTP/2 pair (mTLS)", True, True))
    for name, label, tls, http2 in kinds:
        pair = SidecarPair(name, server_ports, work, xds_port, tls=tls, http2=http2)
        pairs.append(pair)
        target = Target(f"127.0.0.1:{pair.ports['grpc']}", None, tuple(pair.pids), server.pid)
        pair.wait_ready(functools.partial(answers, target))
        targets[label] = target
    return targets


def mesh_targets(
    work: Path, pairs: list[SidecarPair | MeshPair], load: list[int]
) -> dict[str, Target]:
    """Two `pilotfish up` meshes (plaintext, mTLS), each with the server twice: as a TCP
    Workload reached through the client sidecar's upstream port, and as a GRPC Workload
    reached by ``service:port`` through the client sidecar's outbound listener (CONNECT)."""
    backends = {
        name: [sys.executable, __file__, "--serve-workload", name] for name in ("grpc", "grpcapi")
    }
    targets = {}
    for name, label, tls in MESH_PAIRS:
        pair = MeshPair(name, backends, work, tls=tls, protocols={"grpcapi": "GRPC"})
        pairs.append(pair)
        tcp = Target(f"127.0.0.1:{pair.ports['grpc']}", None, (), 0)
        pair.wait_ready(functools.partial(answers, tcp))
        envoys = tuple(pair.pids)
        targets[f"{label}, TCP upstream port"] = Target(
            tcp.address, None, envoys, pair.app_pid("grpc")
        )
        if tls:
            connect = Target(f"grpcapi:{pair.services['grpcapi']}", pair.http_proxy, envoys, 0)
            pair.wait_ready(functools.partial(answers, connect))
            targets[f"{label}, GRPC port via CONNECT"] = Target(
                connect.address, connect.proxy, envoys, pair.app_pid("grpcapi")
            )
        load.extend(pair.load_pids)
    return targets


if __name__ == "__main__":
    raise SystemExit(main())
