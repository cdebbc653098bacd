"""gRPC unary calls through the mesh's sidecar pair vs direct: latency and CPU per call.

A grpcio server (a subprocess of this script, one generic unary method that answers with the
request's bytes) and a grpcio client (this process) making ``--calls`` calls one after the
other, each with a ``--payload``-byte message; latency of each call from the client's
``perf_counter_ns``. Through the pair, the client's channel goes to its sidecar's local port
for the service, as an ``upstreams`` port gives it (``sidecar_pair``: the mesh's TCP
proxies with their access loggers; the pair plaintext, and with mTLS between the sidecars),
so the gRPC calls ride one TCP connection through both sidecars. CPU per call: utime + stime
(/proc) of the client process, the server process and the two Envoys over the calls, divided
by the calls. Envoys on CPU 0; client, server and the control plane (the access logs' sink)
on CPU 1; the targets interleaved, ``--repetitions`` times, medians reported with the ratio
to direct measured in the same run.
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
from sidecar_pair import CONFIG_SOURCE, PAIRS, SidecarPair

METHOD = "/pilotfish.bench.Echo/Unary"
MESH = "apiVersion: pilotfish.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {}\n"
ENVOY_CPU, LOAD_CPU = 0, 1
WARMUP_CALLS = 200


def serve(ports_file: Path) -> None:
    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "pilotfish.bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
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


def answers(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            return bool(channel.unary_unary(METHOD)(b"ping", timeout=2) == b"ping")
        except grpc.RpcError:
            return False


def calls(
    port: int, count: int, payload: int, pids: Sequence[int], server_pid: int
) -> dict[str, float]:
    message = b"x" * payload
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary = channel.unary_unary(METHOD)
        for _ in range(WARMUP_CALLS):
            unary(message, timeout=10)
        samples = []
        before = {pid: cpu_seconds(pid) for pid in (os.getpid(), server_pid, *pids)}
        for _ in range(count):
            started = time.perf_counter_ns()
            if unary(message, timeout=10) != message:
                raise RuntimeError(f"port {port}: the answer is not the request")
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


def tables(runs: Mapping[str, list[dict[str, float]]], args: argparse.Namespace) -> str:
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
        f"Sidecar pairs: {CONFIG_SOURCE}. Through a TCP pair gRPC rides one TCP connection "
        f"(an upstreams local port); the HTTP/2 pair routes each call at both sidecars "
        f"(a GRPC port), with its request log to the control plane.\n"
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
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0
    facts = machine_facts()
    runs: dict[str, list[dict[str, float]]] = {}
    with terminate_on_sigterm(), tempfile.TemporaryDirectory(prefix="bench-grpc-") as temp:
        work = Path(temp)
        (work / "mesh").mkdir()
        (work / "mesh" / "mesh.yaml").write_text(MESH)
        children: list[subprocess.Popen[bytes]] = []
        pairs: list[SidecarPair] = []
        try:
            control_plane, xds_port = start_control_plane(work / "mesh")
            children.append(control_plane)
            server, server_ports = start_server(work)
            children.append(server)
            for pid in (control_plane.pid, server.pid, os.getpid()):
                pin_to_cpu(pid, LOAD_CPU)
            targets: dict[str, tuple[int, list[int]]] = {"direct": (server_ports["grpc"], [])}
            for name, label, tls in PAIRS:
                pair = SidecarPair(name, server_ports, work, xds_port, tls=tls)
                pairs.append(pair)
                for pid in pair.pids:
                    pin_to_cpu(pid, ENVOY_CPU)
                pair.wait_ready(functools.partial(answers, pair.ports["grpc"]))
                targets[label] = (pair.ports["grpc"], pair.pids)
            # As a GRPC port gets it: HTTP/2 routes at both sidecars, mTLS between them.
            pair = SidecarPair("pair-http2", server_ports, work, xds_port, tls=True, http2=True)
            pairs.append(pair)
            for pid in pair.pids:
                pin_to_cpu(pid, ENVOY_CPU)
            pair.wait_ready(functools.partial(answers, pair.ports["grpc"]))
            targets["HTTP/2 sidecar pair (mTLS)"] = (pair.ports["grpc"], pair.pids)
            runs = {target: [] for target in targets}
            for repetition in range(args.repetitions):
                for target, (port, pids) in targets.items():
                    print(f"repetition {repetition + 1}: {target}", flush=True)
                    runs[target].append(calls(port, args.calls, args.payload, pids, server.pid))
        finally:
            for pair in pairs:
                pair.stop()
            for child in children:
                child.terminate()
                child.wait(10)
    table = tables(runs, args)
    print(table)
    path = write_results("grpc_unary", facts, {"runs": runs, "config": CONFIG_SOURCE}, table)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
