"""TCP through the mesh's sidecar pair vs direct: throughput and connection setup time.

The backends (a sink that reads until the client's EOF, then answers with the count of bytes
it read, and an echo) run in a subprocess of this script for *direct*, and as the mesh's
Workloads for the pairs. The pairs (``--pairs mesh``, the default: ``mesh_pair``, two
`pilotfish up` meshes, one with PeerAuthentication DISABLE, one STRICT; the client connects to
its sidecar's ``upstreams`` ports; ``--pairs static``: ``sidecar_pair``'s hand-written
bootstraps around the mesh's TCP proxies) report every connection to their control plane.
The Envoys are pinned to CPU 0; this process (the client), the backends and the control planes
(with the agents) to CPU 1. The targets run interleaved, ``--repetitions`` times; medians are
reported, with the ratio to direct measured in the same run.

- *throughput*: one connection sends ``--megabytes`` (MB = 10^6 bytes) in 256 KiB writes,
  half-closes, and waits for the sink's count (checked); MB/s over connect-to-count, and the
  two Envoys' CPU per MB (utime + stime from /proc).
- *connection setup*: ``--connections`` connections one after the other, each timed from
  ``connect()`` until one byte came back through the echo (so it covers both sidecars'
  upstream connects and the TLS handshake); p50/p99 per repetition.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

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

CHUNK = 256 * 1024
MESH = "apiVersion: pilotfish.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {}\n"
ENVOY_CPU, LOAD_CPU = 0, 1


# --- the backends (the subprocess) --------------------------------------------------------


def _sink(conn: socket.socket) -> None:
    with conn:
        buffer = bytearray(CHUNK)
        total = 0
        while read := conn.recv_into(buffer):
            total += read
        conn.sendall(struct.pack(">Q", total))


def _echo(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(65536):
            conn.sendall(data)


def _accept_forever(listener: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def serve(ports_file: Path) -> None:
    listeners = {name: socket.create_server(("127.0.0.1", 0), backlog=512) for name in BACKENDS}
    handlers = {"sink": _sink, "echo": _echo}
    for name, listener in listeners.items():
        threading.Thread(
            target=_accept_forever, args=(listener, handlers[name]), daemon=True
        ).start()
    ports = {name: listener.getsockname()[1] for name, listener in listeners.items()}
    ports_file.write_text(json.dumps(ports))
    threading.Event().wait()


BACKENDS = ("sink", "echo")


def serve_workload(name: str) -> None:
    """One backend as a mesh Workload runs it: on ``$PORT``."""
    listener = socket.create_server(("127.0.0.1", int(os.environ["PORT"])), backlog=512)
    _accept_forever(listener, {"sink": _sink, "echo": _echo}[name])


def start_backends(folder: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    ports_file = folder / "backends.json"
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(ports_file)], preexec_fn=die_with_parent
    )
    deadline = time.monotonic() + 30
    while not ports_file.exists() or not ports_file.read_text():
        if child.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the backends did not start")
        time.sleep(0.05)
    return child, json.loads(ports_file.read_text())


# --- the measurements ---------------------------------------------------------------------


def echoes(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(b"x")
            return conn.recv(1) == b"x"
    except OSError:
        return False


def sinks(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(b"x")
            conn.shutdown(socket.SHUT_WR)
            return conn.recv(8) == struct.pack(">Q", 1)
    except OSError:
        return False


def serves(ports: Mapping[str, int]) -> bool:
    """Both backends answer through ``ports``."""
    return echoes(ports["echo"]) and sinks(ports["sink"])


def envoy_cpu(pids: Sequence[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def throughput(port: int, megabytes: int, pids: Sequence[int]) -> dict[str, float]:
    size = megabytes * 1_000_000
    chunk = b"\0" * CHUNK
    cpu_before = envoy_cpu(pids)
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        left = size
        while left > 0:
            conn.sendall(chunk if left >= CHUNK else chunk[:left])
            left -= CHUNK
        conn.shutdown(socket.SHUT_WR)
        answer = b""
        while len(answer) < 8:
            data = conn.recv(8 - len(answer))
            if not data:
                raise RuntimeError(f"port {port}: the connection closed before the sink's count")
            answer += data
    seconds = time.perf_counter() - started
    cpu = envoy_cpu(pids) - cpu_before
    (counted,) = struct.unpack(">Q", answer)
    if counted != size:
        raise RuntimeError(f"port {port}: the sink read {counted} of {size} bytes")
    return {
        "seconds": seconds,
        "mb_per_s": megabytes / seconds,
        "envoy_cpu_ms_per_mb": cpu * 1e3 / megabytes,
    }


def connection_setup(port: int, count: int, pids: Sequence[int]) -> dict[str, float]:
    samples = []
    cpu_before = envoy_cpu(pids)
    for _ in range(count):
        started = time.perf_counter_ns()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(b"x")
            if conn.recv(1) != b"x":
                raise RuntimeError(f"port {port}: no echo")
            samples.append((time.perf_counter_ns() - started) / 1e3)
    cpu = envoy_cpu(pids) - cpu_before
    return {
        "p50_us": percentile(samples, 0.50),
        "p99_us": percentile(samples, 0.99),
        "envoy_cpu_us_per_connection": cpu * 1e6 / count,
    }


def opened_by_reporter(admin_ports: Sequence[int]) -> dict[str, float]:
    """``istio_tcp_connections_opened_total`` by reporter, from the control planes' /metrics:
    that the pairs' connections were counted at all."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = ""
    for admin in admin_ports:
        with opener.open(f"http://127.0.0.1:{admin}/metrics", timeout=30) as response:
            text += response.read().decode()
    opened: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("istio_tcp_connections_opened_total{"):
            reporter = line.split('reporter="', 1)[1].split('"', 1)[0]
            opened[reporter] = opened.get(reporter, 0.0) + float(line.rsplit(" ", 1)[1])
    return opened


# --- the report ---------------------------------------------------------------------------


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}" if baseline else "n/a"


def tables(
    runs: Mapping[str, list[dict[str, dict[str, float]]]], args: argparse.Namespace, config: str
) -> str:
    def med(target: str, part: str, key: str) -> float:
        return median([run[part][key] for run in runs[target]])

    direct_mb = med("direct", "throughput", "mb_per_s")
    moved = [
        (
            target,
            med(target, "throughput", "mb_per_s"),
            ratio(med(target, "throughput", "mb_per_s"), direct_mb),
            med(target, "throughput", "envoy_cpu_ms_per_mb") if target != "direct" else "-",
        )
        for target in runs
    ]
    first = format_table(("target", "MB/s", "MB/s / direct", "Envoy CPU ms/MB"), moved)
    direct_p50 = med("direct", "setup", "p50_us")
    direct_p99 = med("direct", "setup", "p99_us")
    rows = [
        (
            target,
            med(target, "setup", "p50_us"),
            med(target, "setup", "p99_us"),
            ratio(med(target, "setup", "p50_us"), direct_p50),
            ratio(med(target, "setup", "p99_us"), direct_p99),
            med(target, "setup", "envoy_cpu_us_per_connection") if target != "direct" else "-",
        )
        for target in runs
    ]
    second = format_table(
        ("target", "p50 us", "p99 us", "p50 / direct", "p99 / direct", "Envoy CPU us/conn"), rows
    )
    return (
        f"Sidecar pairs: {config}.\n"
        f"Envoys on CPU {ENVOY_CPU}; client, backends and control plane on CPU {LOAD_CPU}; "
        f"medians of {args.repetitions} interleaved repetitions.\n\n"
        f"Throughput: {args.megabytes} MB over one connection to a sink\n{first}\n\n"
        f"Connection setup: connect() to one echoed byte, {args.connections} connections "
        f"one after another\n{second}\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument(
        "--pairs",
        choices=("mesh", "static", "both"),
        default="mesh",
        help="pilotfish up's sidecars, hand-written bootstraps around the mesh's filters, or both",
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-workload", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0
    if args.serve_workload is not None:
        serve_workload(args.serve_workload)
        return 0
    facts = machine_facts()
    runs: dict[str, list[dict[str, dict[str, float]]]] = {}
    config = {
        "mesh": MESH_SOURCE,
        "static": CONFIG_SOURCE,
        "both": f"{MESH_SOURCE}; and (static pairs) {CONFIG_SOURCE}",
    }[args.pairs]
    with terminate_on_sigterm(), tempfile.TemporaryDirectory(prefix="bench-tcp-") as temp:
        work = Path(temp)
        children: list[subprocess.Popen[bytes]] = []
        pairs: list[SidecarPair | MeshPair] = []
        try:
            backends, backend_ports = start_backends(work)
            children.append(backends)
            load = [backends.pid, os.getpid()]
            targets: dict[str, tuple[Mapping[str, int], list[int]]] = {
                "direct": (backend_ports, [])
            }
            admin_ports: list[int] = []
            labels: list[str] = []
            if args.pairs in ("static", "both"):
                (work / "mesh").mkdir()
                (work / "mesh" / "mesh.yaml").write_text(MESH)
                control_plane, xds_port = start_control_plane(work / "mesh")
                children.append(control_plane)
                load.append(control_plane.pid)
                admin_ports.append(json.loads((work / "mesh" / "ports.json").read_text())["admin"])
                for name, label, tls in PAIRS:
                    pairs.append(SidecarPair(name, backend_ports, work, xds_port, tls=tls))
                    labels.append(label)
            if args.pairs in ("mesh", "both"):
                commands = {
                    backend: [sys.executable, __file__, "--serve-workload", backend]
                    for backend in BACKENDS
                }
                for name, label, tls in MESH_PAIRS:
                    mesh = MeshPair(name, commands, work, tls=tls)
                    pairs.append(mesh)
                    admin_ports.append(mesh.admin_port)
                    labels.append(label)
            for pair, label in zip(pairs, labels, strict=True):
                pair.wait_ready(functools.partial(serves, pair.ports))
                for pid in pair.pids:
                    pin_to_cpu(pid, ENVOY_CPU)
                if isinstance(pair, MeshPair):
                    load.extend(pair.load_pids)
                targets[label] = (pair.ports, pair.pids)
            for pid in load:
                pin_to_cpu(pid, LOAD_CPU)
            runs = {target: [] for target in targets}
            for repetition in range(args.repetitions):
                for target, (ports, pids) in targets.items():
                    print(f"repetition {repetition + 1}: {target}", flush=True)
                    runs[target].append(
                        {
                            "throughput": throughput(ports["sink"], args.megabytes, pids),
                            "setup": connection_setup(ports["echo"], args.connections, pids),
                        }
                    )
            time.sleep(2)  # the Envoys' last access-log flush (once a second)
            opened = opened_by_reporter(admin_ports)
        finally:
            for pair in pairs:
                pair.stop()
            for child in children:
                child.terminate()
                child.wait(10)
    table = tables(runs, args, config)
    measured = (len(runs) - 1) * args.repetitions * (args.connections + 1)
    table += (
        f"\nThe control plane(s) counted the pairs' connections in istio_tcp_connections_"
        f"opened_total: {opened.get('source', 0):.0f} (source), "
        f"{opened.get('destination', 0):.0f} (destination), for {measured} measured ones and "
        f"the readiness probes.\n"
    )
    print(table)
    path = write_results("tcp_throughput", facts, {"runs": runs, "config": config}, table)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
