"""The control plane's CPU per 1,000 request records/s of ingested telemetry.

``pilotfish control-plane`` runs in a subprocess pinned to CPU 0; this process, on CPU 1,
announces its proxies on real ADS streams (so the node directory knows them, as it knows
real sidecars) and streams real serialized ``StreamAccessLogsMessage`` batches to the real
gRPC access-log service on the xDS port, at a fixed rate: every stream sends one batch a
second, as Envoy does with its one-second flush (``ALS_FLUSH_SECONDS``). Half the streams
report as a caller's outbound, half as a callee's inbound (peer metadata, mTLS SANs), with a
spread of services, codes and flags. The control plane's CPU (utime + stime of its process,
every thread) over the run, less what it burns idle over as long, divided by the records
sent, is CPU-seconds per 1,000 records, which is also the share of one core that 1,000
records/s take. It covers the whole path: gRPC, protobuf parsing, decoding, every sink the
control plane has (Istio's metrics today, and whatever views are added to it).

For a breakdown, the same batches are also parsed, decoded and counted here, in a loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from bench_report import (
    REPO,
    cpu_seconds,
    format_table,
    machine_facts,
    median,
    pin_to_cpu,
    start_control_plane,
    terminate_on_sigterm,
    write_results,
)
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2

sys.path.insert(0, str(REPO / "tests"))
from als_entries import first_message, http_entry, later_message
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.telemetry import ALS_LOG_INBOUND, ALS_LOG_OUTBOUND
from pilotfish.snapshot import type_urls
from pilotfish.telemetry.als_decode import decode_entry
from pilotfish.telemetry.istio_metrics import IstioMetrics
from pilotfish.telemetry.nodes import NodeDirectory
from pilotfish.telemetry.records import Reporter
from xds_clients import SotwClient

METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
SERVICES = 10
CODES = (200, 200, 200, 200, 200, 200, 200, 201, 404, 503)


def proxies(pairs: int) -> list[tuple[ProxyNode, ProxyNode]]:
    """(caller, callee) pairs; callee i serves service i % SERVICES."""
    found = []
    for index in range(pairs):
        service = f"svc{index % SERVICES}"
        caller = ProxyNode(
            id=f"client-{index}",
            service=f"client{index % SERVICES}",
            labels={"app": f"client{index % SERVICES}", "version": "v1"},
            outbound_port=20000 + index,
            inbound_port=30000 + index,
            app_port=40000 + index,
            workload=f"client{index % SERVICES}",
        )
        callee = ProxyNode(
            id=f"{service}-{index}",
            service=service,
            labels={"app": service, "version": f"v{index % 3}"},
            outbound_port=21000 + index,
            inbound_port=31000 + index,
            app_port=41000 + index,
            workload=f"{service}-v{index % 3}",
        )
        found.append((caller, callee))
    return found


def entries(
    caller: ProxyNode, callee: ProxyNode, reporter: Reporter, count: int
) -> list[accesslog_pb2.HTTPAccessLogEntry]:
    assert callee.service is not None and callee.inbound_port is not None
    host = f"{callee.service}.default.svc.cluster.local"
    made = []
    for n in range(count):
        code = CODES[n % len(CODES)]
        flags = ["upstream_connection_failure"] if code == 503 else []
        headers = {"traceparent": f"00-{n:032x}-{n:016x}-01", "content-type": "application/json"}
        if reporter == "source":
            made.append(
                http_entry(
                    code=code,
                    cluster=f"outbound|8080||{host}",
                    upstream=("127.0.0.1", callee.inbound_port),
                    flags=flags,
                    request_headers=headers,
                    duration_ms=1 + n % 50,
                    path=f"/items/{n}",
                )
            )
        else:
            made.append(
                http_entry(
                    code=code,
                    cluster=f"inbound|{callee.app_port}||",
                    upstream=("127.0.0.1", callee.app_port or 0),
                    peer_id=caller.id,
                    peer_uri="spiffe://cluster.local/ns/default/sa/default",
                    local_uri="spiffe://cluster.local/ns/default/sa/default",
                    flags=flags,
                    request_headers=headers,
                    duration_ms=1 + n % 50,
                    path=f"/items/{n}",
                )
            )
    return made


def batches(
    pairs: list[tuple[ProxyNode, ProxyNode]], per_batch: int
) -> list[tuple[bytes, bytes, ProxyNode, Reporter]]:
    """Per stream: its first message (with the identifier) and its later one, serialized."""
    found: list[tuple[bytes, bytes, ProxyNode, Reporter]] = []
    for caller, callee in pairs:
        for node, log_name, reporter in (
            (caller, ALS_LOG_OUTBOUND, "source"),
            (callee, ALS_LOG_INBOUND, "destination"),
        ):
            made = entries(caller, callee, reporter, per_batch)  # type: ignore[arg-type]
            found.append(
                (
                    first_message(node, log_name, made).SerializeToString(),
                    later_message(made).SerializeToString(),
                    node,
                    reporter,  # type: ignore[arg-type]
                )
            )
    return found


async def announce(target: str, nodes: list[ProxyNode]) -> contextlib.AsyncExitStack:
    stack = contextlib.AsyncExitStack()
    for node in nodes:
        client = await stack.enter_async_context(SotwClient(target, node))
        client.request(type_urls.CLUSTER)
        await client.receive()
    return stack


async def stream_at_rate(
    channel: grpc.aio.Channel, first: bytes, later: bytes, seconds: int, offset: float
) -> None:
    call = channel.stream_unary(
        METHOD,
        request_serializer=None,
        response_deserializer=als_pb2.StreamAccessLogsResponse.FromString,
    )

    async def messages() -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        start = loop.time() + offset
        for second in range(seconds):
            await asyncio.sleep(max(0.0, start + second - loop.time()))
            yield first if second == 0 else later

    await call(messages())


async def run_load(
    target: str, streams: list[tuple[bytes, bytes, ProxyNode, Reporter]], seconds: int
) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.gather(
            *(
                stream_at_rate(channel, first, later, seconds, index / len(streams))
                for index, (first, later, _, _) in enumerate(streams)
            )
        )


def in_process_breakdown(
    pairs: list[tuple[ProxyNode, ProxyNode]],
    streams: list[tuple[bytes, bytes, ProxyNode, Reporter]],
    rounds: int,
) -> dict[str, float]:
    """CPU-seconds per 1,000 records of each step alone, in this process."""
    nodes = NodeDirectory()
    for caller, callee in pairs:
        nodes.connected(caller)
        nodes.connected(callee)
    records_per_round = sum(
        len(als_pb2.StreamAccessLogsMessage.FromString(later).http_logs.log_entry)
        for _, later, _, _ in streams
    )
    start = time.process_time()
    parsed = []
    for _ in range(rounds):
        parsed = [
            (als_pb2.StreamAccessLogsMessage.FromString(later), node, reporter)
            for _, later, node, reporter in streams
        ]
    parse = time.process_time() - start
    start = time.process_time()
    records = []
    for _ in range(rounds):
        records = [
            [decode_entry(e, reporter, node, nodes) for e in message.http_logs.log_entry]
            for message, node, reporter in parsed
        ]
    decode = time.process_time() - start
    metrics = IstioMetrics()
    start = time.process_time()
    for _ in range(rounds):
        for batch in records:
            metrics.add(batch)
    count = time.process_time() - start
    total = records_per_round * rounds / 1000
    return {"parse": parse / total, "decode": decode / total, "istio metrics": count / total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="1000,5000", help="records/s, comma-separated")
    parser.add_argument(
        "--pairs", type=int, default=10, help="caller/callee pairs (2 streams each)"
    )
    parser.add_argument("--seconds", type=int, default=10, help="per run")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5 s runs, 1 repetition")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repetitions = 5, 1
    rates = [int(r) for r in args.rates.split(",")]
    facts = machine_facts()
    print("\n".join(f"# {k}: {v}" for k, v in facts.items()), flush=True)
    pairs = proxies(args.pairs)
    streams_count = 2 * args.pairs
    results: dict[int, list[float]] = {rate: [] for rate in rates}
    with terminate_on_sigterm(), tempfile.TemporaryDirectory(prefix="pilotfish-bench-als-") as tmp:
        folder = Path(tmp)
        (folder / "mesh.yaml").write_text(
            "apiVersion: pilotfish.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\n"
            "spec: {}\n"
        )
        child, port = start_control_plane(folder)
        target = f"127.0.0.1:{port}"
        try:
            pinned = pin_to_cpu(child.pid, 0)
            if pinned:
                os.sched_setaffinity(0, {1})

            async def idle_cpu_per_second() -> float:
                before = cpu_seconds(child.pid)
                await asyncio.sleep(2)
                return (cpu_seconds(child.pid) - before) / 2

            async def session() -> None:
                stack = await announce(target, [n for pair in pairs for n in pair])
                async with stack:
                    for repetition in range(args.repetitions):
                        for rate in rates:
                            per_batch = max(1, rate // streams_count)
                            streams = batches(pairs, per_batch)
                            records = per_batch * streams_count * args.seconds
                            idle = await idle_cpu_per_second()
                            before = cpu_seconds(child.pid)
                            started = time.monotonic()
                            await run_load(target, streams, args.seconds)
                            # The last batches are read by now: the calls returned.
                            used = cpu_seconds(child.pid) - before
                            used -= idle * (time.monotonic() - started)
                            results[rate].append(1000 * used / records)
                            print(
                                f"repetition {repetition + 1}, {rate} records/s: "
                                f"{1000 * used / records:.4f} CPU-s per 1,000 records",
                                flush=True,
                            )

            asyncio.run(session())
        finally:
            child.terminate()
            child.wait(15)
    breakdown = in_process_breakdown(pairs, batches(pairs, max(1, rates[0] // streams_count)), 20)
    rows = [
        (
            f"{rate} records/s",
            f"{median(values):.4f}",
            f"{100 * median(values):.1f}%",
            " ".join(f"{v:.4f}" for v in values),
        )
        for rate, values in results.items()
    ]
    table = format_table(
        ("load (gRPC, whole control plane)", "CPU-s per 1,000 records", "core at 1k rec/s", "runs"),
        rows,
    )
    table += "\n\nin this process, per 1,000 records: " + ", ".join(
        f"{step} {seconds:.4f} CPU-s" for step, seconds in breakdown.items()
    )
    table += (
        f"\n{streams_count} streams, one batch per stream and second; "
        f"control plane pinned to CPU 0: {pinned}"
    )
    print(table)
    data = {"runs": results, "breakdown_cpu_s_per_1000": breakdown, "streams": streams_count}
    print(f"results: {write_results('telemetry_ingest', facts, data, table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
