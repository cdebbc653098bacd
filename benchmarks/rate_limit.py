"""Global rate limit decisions per second of the built-in service, in memory and with Redis.

The real servicer (``RateLimitService`` on a grpc.aio server, as the control plane serves it
on its xDS port) runs in a subprocess pinned to CPU 0, with one global rule (a Distinct
header) whose limit is never reached, so every call is a full decision: plan, count, decide,
answer. ``h2load`` (nghttp2-client), pinned to CPU 1, sends the same serialized
``ShouldRateLimit`` call as gRPC over h2c from several connections with several streams
each, as the mesh's Envoys do over their one xDS connection each. With Redis, a
``redis-server`` (``--save ''``) runs on CPU 1 too, next to the load. The two stores run
interleaved, ``--repetitions`` times each, each run with a fresh service process; medians are
reported, and the service's own count of decisions and of store errors checks that every
call was decided (h2load sees an HTTP 200 for a gRPC error too).

Then, unless ``--skip-envoys``, the latency a global rule adds per request in `pilotfish up`:
a gateway in front of two one-replica services, ``plain`` (no policy) and ``limited`` (a
RateLimitPolicy with one global rule never reached, counted in the control plane's memory),
the mesh pinned to CPU 0 and h2load to CPU 1, at a fixed rate (``--rps`` per connection,
each request's latency from h2load's ``--log-file``), the two targets interleaved. Each
request to ``limited`` costs its sidecar one ShouldRateLimit call to the control plane.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import grpc
from bench_report import (
    REPO,
    cpu_seconds,
    descendant_pids,
    die_with_parent,
    format_table,
    machine_facts,
    median,
    percentile,
    pin_to_cpu,
    terminate_on_sigterm,
    write_results,
)
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2

sys.path.insert(0, str(REPO / "tests"))
from tests.integration.mesh_harness import (
    RunningMesh,
    echo_workload,
    gateway,
    http_get,
    write_yaml,
)

from pilotfish.agent.ports import free_port
from pilotfish.controller.rate_limit_service import (
    RATE_LIMIT_SERVICE,
    RateLimitService,
    rate_limit_method_handlers,
)
from pilotfish.model.rate_limits import RateLimitSettings
from pilotfish.model.resources import MeshConfig, MeshSettings
from rate_limit_policies import global_policy, mesh_with, rule
from redis_server import RedisServer

METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
RULE = "default/bench/global/0"
NEVER_REACHED = 10**9
# "floor": a ShouldRateLimit handler that answers OK at once on the same grpc.aio server,
# what any decision made in Python on it costs at least.
STORES = ("floor", "memory", "redis")


def request_body() -> bytes:
    """One ShouldRateLimit call as gRPC frames it: no compression, length, message."""
    entries = [("pilotfish_rule", RULE), ("header:x-user", "alice")]
    descriptor = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )
    message = rls_pb2.RateLimitRequest(domain="pilotfish", descriptors=[descriptor])
    payload: bytes = message.SerializeToString()
    return struct.pack(">BI", 0, len(payload)) + payload


def bench_config(redis_address: str | None, timeout: float) -> MeshConfig:
    config = mesh_with(
        global_policy("bench", rule(NEVER_REACHED, "Hour", distinct_header="x-user"))
    )
    if redis_address is None:
        return config
    settings = RateLimitSettings(redis_address=redis_address, timeout=timeout)
    return replace(config, mesh=MeshSettings(rate_limit=settings))


# --- the service's process -------------------------------------------------------------------


class Floor:
    """Answers OK without looking: what grpc.aio and protobuf cost alone."""

    def __init__(self) -> None:
        self.calls = 0

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: object
    ) -> rls_pb2.RateLimitResponse:
        self.calls += 1
        return rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        method = grpc.unary_unary_rpc_method_handler(
            self.ShouldRateLimit,
            request_deserializer=rls_pb2.RateLimitRequest.FromString,
            response_serializer=rls_pb2.RateLimitResponse.SerializeToString,
        )
        return [
            grpc.method_handlers_generic_handler(RATE_LIMIT_SERVICE, {"ShouldRateLimit": method})
        ]


async def serve(
    store: str, redis_address: str, timeout: float, port_file: Path, stats_file: Path
) -> None:
    config = bench_config(redis_address if store == "redis" else None, timeout)
    service = RateLimitService(lambda: config)
    server = grpc.aio.server()
    floor = Floor()
    if store == "floor":
        server.add_generic_rpc_handlers(floor.handlers())
    else:
        server.add_generic_rpc_handlers(rate_limit_method_handlers(service))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    port_file.write_text(str(port))
    await stop.wait()
    await server.stop(0)
    await service.close()
    decisions = sum(service.decisions.values()) + floor.calls
    stats_file.write_text(json.dumps({"decisions": decisions, "errors": service.store_errors}))


def start_service(
    folder: Path, store: str, redis_address: str, timeout: float
) -> tuple[subprocess.Popen[bytes], int, Path]:
    port_file, stats_file = folder / "port", folder / "stats.json"
    for stale in (port_file, stats_file):
        stale.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--serve", str(folder), "--store", store]
    command += ["--timeout", str(timeout), "--redis", redis_address]
    child = subprocess.Popen(command, preexec_fn=die_with_parent)
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text():
        if child.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the rate limit service did not start")
        time.sleep(0.05)
    pin_to_cpu(child.pid, 0)
    return child, int(port_file.read_text()), stats_file


def stop_service(child: subprocess.Popen[bytes], stats_file: Path) -> dict[str, int]:
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=30)
    stats: dict[str, int] = json.loads(stats_file.read_text())
    return stats


# --- the load ----------------------------------------------------------------------------------


def h2load(port: int, body: Path, args: argparse.Namespace) -> dict[str, float]:
    command = [
        "taskset", "-c", "1", "h2load",
        "-c", str(args.connections), "-m", str(args.streams),
        "--warm-up-time", "1", "-D", str(args.seconds),
        "-d", str(body),
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://127.0.0.1:{port}{METHOD}",
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    rate = re.search(r"finished in [0-9.]+m?s, ([0-9.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if rate is None or done is None or mean is None:
        raise RuntimeError(f"unexpected h2load output:\n{out}")
    return {
        "per_second": float(rate[1]),
        "done": float(done[1]),
        "succeeded": float(done[2]),
        "mean_ms": _milliseconds(mean[1]),
    }


def _milliseconds(text: str) -> float:
    for suffix, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    raise RuntimeError(f"not a duration: {text}")


# --- the latency a global rule adds, through real Envoys ----------------------------------------

LATENCY_MESH = f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /limited}}}}]
    route: [{{destination: {{host: limited}}}}]
  - route: [{{destination: {{host: plain}}}}]
---
apiVersion: pilotfish.io/v1alpha1
kind: RateLimitPolicy
metadata: {{name: limited}}
spec:
  targetRef: {{kind: Service, name: limited}}
  global:
    rules:
    - limit: {{requests: {NEVER_REACHED}, unit: Day}}
"""
TARGETS = ("plain", "limited")


def start_latency_mesh(folder: Path) -> tuple[RunningMesh, int]:
    directory = folder / "mesh"
    directory.mkdir()
    port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(port)
        + echo_workload("plain", "plain", 9000)
        + echo_workload("limited", "limited", 9001)
        + LATENCY_MESH,
    )
    mesh = RunningMesh(directory, port)
    deadline = time.monotonic() + 120
    while not serves_both(mesh):
        if mesh.process.poll() is not None or time.monotonic() > deadline:
            mesh.stop()
            raise RuntimeError(f"the mesh did not serve both targets:\n{mesh.log()[-3000:]}")
        time.sleep(0.5)
    for pid in {mesh.process.pid, *descendant_pids(mesh.process.pid)}:
        pin_to_cpu(pid, 0)
    return mesh, port


def serves_both(mesh: RunningMesh) -> bool:
    try:
        return all(http_get(f"{mesh.gateway_url}/{t}", timeout=5).status == 200 for t in TARGETS)
    except OSError:  # the gateway is not listening yet
        return False


def fixed_rate(url: str, log: Path, args: argparse.Namespace) -> dict[str, float]:
    log.unlink(missing_ok=True)
    command = [
        "taskset", "-c", "1", "h2load",
        "-c", str(args.latency_connections), "--rps", str(args.rps),
        "-D", str(args.latency_seconds), "--log-file", str(log), url,
    ]  # fmt: skip
    subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    latencies = [int(row[2]) / 1000 for row in rows if row[1] == "200"]
    return {
        "requests": float(len(rows)),
        "failed": float(len(rows) - len(latencies)),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
    }


def envoy_latency(folder: Path, args: argparse.Namespace) -> tuple[str, object]:
    mesh, port = start_latency_mesh(folder)
    runs: dict[str, list[dict[str, float]]] = {target: [] for target in TARGETS}
    try:
        for repetition in range(args.repetitions):
            for target in TARGETS:
                found = fixed_rate(f"http://127.0.0.1:{port}/{target}", folder / "h2.log", args)
                runs[target].append(found)
                print(
                    f"run {repetition + 1} {target}: p50 {found['p50_ms']:.2f} ms, "
                    f"p99 {found['p99_ms']:.2f} ms, {found['failed']:.0f} failed",
                    flush=True,
                )
    finally:
        mesh.stop()
    p50 = {t: median([r["p50_ms"] for r in runs[t]]) for t in TARGETS}
    p99 = {t: median([r["p99_ms"] for r in runs[t]]) for t in TARGETS}
    rows = [
        (
            target,
            f"{p50[target]:.2f}",
            f"{p50[target] / p50['plain']:.2f}x",
            f"{p99[target]:.2f}",
            f"{p99[target] / p99['plain']:.2f}x",
            f"{sum(r['failed'] for r in runs[target]):.0f}",
        )
        for target in TARGETS
    ]
    rate = args.latency_connections * args.rps
    table = (
        f"\nThrough the mesh (gateway -> sidecar -> echo app), {rate} req/s fixed rate, "
        f"{args.latency_seconds} s per run, medians of {args.repetitions}; mesh on CPU 0, "
        f"h2load on CPU 1; added by the rule: p50 +{p50['limited'] - p50['plain']:.2f} ms, "
        f"p99 +{p99['limited'] - p99['plain']:.2f} ms\n"
        + format_table(("target", "p50 ms", "vs plain", "p99 ms", "vs plain", "failed"), rows)
    )
    return table, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds per run")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=8, help="concurrent calls per connection")
    parser.add_argument("--timeout", type=float, default=0.02, help="the Redis deadline (s)")
    parser.add_argument("--skip-envoys", action="store_true", help="decisions/s only")
    parser.add_argument("--latency-seconds", type=int, default=5)
    parser.add_argument("--latency-connections", type=int, default=4)
    parser.add_argument("--rps", type=int, default=50, help="requests/s per connection")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--store", choices=STORES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        files = (args.serve / "port", args.serve / "stats.json")
        asyncio.run(serve(args.store, args.redis, args.timeout, *files))
        return
    facts = machine_facts()
    runs: dict[str, list[dict[str, float]]] = {store: [] for store in STORES}
    with terminate_on_sigterm(), tempfile.TemporaryDirectory(prefix="bench-rl-") as temp:
        folder = Path(temp)
        body = folder / "request.bin"
        body.write_bytes(request_body())
        redis_server = RedisServer(folder)
        redis_server.start()
        try:
            assert redis_server.pid is not None
            pin_to_cpu(redis_server.pid, 1)
            for repetition in range(args.repetitions):
                for store in STORES:
                    child, port, stats_file = start_service(
                        folder, store, redis_server.address, args.timeout
                    )
                    try:
                        cpu_before = cpu_seconds(child.pid)
                        load = h2load(port, body, args)
                        cpu = cpu_seconds(child.pid) - cpu_before
                    finally:
                        stats = stop_service(child, stats_file)
                    load.update(
                        decisions=stats["decisions"],
                        errors=stats["errors"],
                        cpu_us=cpu / max(1, stats["decisions"] + stats["errors"]) * 1e6,
                    )
                    runs[store].append(load)
                    print(
                        f"run {repetition + 1} {store}: {load['per_second']:.0f} decisions/s, "
                        f"mean {load['mean_ms']:.2f} ms, {load['cpu_us']:.0f} us of service CPU "
                        f"per call, {stats['errors']} store errors",
                        flush=True,
                    )
        finally:
            redis_server.stop()
        latency_table, latency_runs = ("", None)
        if not args.skip_envoys:
            latency_table, latency_runs = envoy_latency(folder, args)
    floor = median([r["per_second"] for r in runs["floor"]])
    rows = []
    for store in STORES:
        rate = median([r["per_second"] for r in runs[store]])
        rows.append(
            (
                store,
                f"{rate:.0f}",
                f"{rate / floor:.2f}x",
                f"{median([r['mean_ms'] for r in runs[store]]):.2f}",
                f"{median([r['cpu_us'] for r in runs[store]]):.0f}",
                f"{1e6 / median([r['cpu_us'] for r in runs[store]]):.0f}",
                f"{sum(r['errors'] for r in runs[store]):.0f}",
            )
        )
    concurrency = args.connections * args.streams
    table = (
        f"ShouldRateLimit, {args.connections} connections x {args.streams} streams "
        f"({concurrency} calls in flight), {args.seconds} s per run, medians of "
        f"{args.repetitions}; service on CPU 0, h2load and Redis on CPU 1\n"
        + format_table(
            (
                "store",
                "decisions/s",
                "vs floor",
                "mean ms/call",
                "service CPU us/call",
                "calls per CPU-s",
                "store errors",
            ),
            rows,
        )
        + latency_table
    )
    print(table)
    data = {"args": vars(args) | {"serve": None}, "runs": runs, "latency": latency_runs}
    path = write_results("rate_limit", facts, data, table)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
