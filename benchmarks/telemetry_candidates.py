"""Which way should stock Envoy make Istio's metrics? Envoy CPU per request of each candidate.

Issue 7 names three: Envoy's stats access logger (``envoy.access_loggers.stats``: counters and a
histogram tagged by access-log operators, aggregated inside Envoy), access logs streamed over
gRPC (ALS) to the control plane, which aggregates them, and Envoy's own stats relabelled (no
per-request cost in Envoy, but they carry no caller or response-code labels per destination, so
they cannot make ``istio_requests_total`` at all). This measures the first two, side by side in
one run with the same pair without any access logger, on static Envoy pairs (the floor of
``static_pair.py``): client Envoy -> server Envoy -> nginx, each Envoy with one logger (the mesh
has one per side too). The ALS sink is a separate process (a grpcio server that counts entries),
so only Envoy's own CPU is measured here; ``telemetry_ingest.py`` measures the control plane's.

    .venv/bin/python benchmarks/telemetry_candidates.py [--seconds 10] [--repetitions 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench_report import cpu_seconds, die_with_parent
from data_plane import LOAD_CPU, ensure_tools, on_cpu, parse_wrk
from static_pair import StaticEnvoy, client_bootstrap, server_bootstrap

from pilotfish.agent.ports import free_port, wait_for_port
from pilotfish.model.telemetry import ALS_BUFFER_BYTES

_TYPES = "type.googleapis.com/envoy.extensions"
# als: Envoy's default 16 KiB buffer (a flush every ~40 entries under load); als-bare: the
# same without the additional headers; als-big: the mesh's ALS_BUFFER_BYTES (a flush per
# second under load, whatever the rate).
# trace: the Zipkin tracer on every request, spans posted to nginx; all: als-big, trace and a
# file access log (to /dev/null) together, as the mesh runs with accessLogFile set.
# trace-batched: the same with the mesh's ZIPKIN_BATCHING runtime (Envoy's default posts
# every 5 spans).
# trace-proto: spans posted as Zipkin's protobuf (HTTP_PROTO) instead of JSON, as the mesh
# does; all uses it too. trace-otel: Envoy's OpenTelemetry tracer over gRPC instead.
# trace-1pct: trace-proto with Istio's default sampling, 1% of requests.
VARIANTS = (
    "none", "als", "als-bare", "als-big", "stats", "trace", "trace-batched", "trace-proto",
    "trace-otel", "trace-1pct", "all",
)  # fmt: skip
ZIPKIN_BATCHING = {"tracing.zipkin.min_flush_spans": 100, "tracing.zipkin.flush_interval_ms": 1000}
# The labels Istio's metrics carry that an Envoy alone can know; the stats logger makes one
# counter series per distinct combination, as istio.stats does.
_STAT_TAGS = [
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("request_protocol", "%PROTOCOL%"),
    ("destination_cluster", "%UPSTREAM_CLUSTER%"),
    ("source_principal", "%DOWNSTREAM_PEER_URI_SAN%"),
    ("source_workload", "%REQ(X-PILOTFISH-PEER)%"),
]

NGINX_CONF = """\
worker_processes 1;
pid {work}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/body;
  proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi;
  uwsgi_temp_path {work}/uwsgi;
  scgi_temp_path {work}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type text/plain; return 200 "hello from nginx\\n"; }}
  }}
  server {{
    listen 127.0.0.1:{zipkin_port};
    client_max_body_size 64m;
    location /api/v2/spans {{ return 202; }}
  }}
}}
"""

ALS_SINK = """\
import sys, time
from concurrent import futures
import grpc
from envoy.service.accesslog.v3 import als_pb2_grpc
count = 0
class Sink(als_pb2_grpc.AccessLogServiceServicer):
    def StreamAccessLogs(self, request_iterator, context):
        global count
        for message in request_iterator:
            count += len(message.http_logs.log_entry)
        from envoy.service.accesslog.v3 import als_pb2
        return als_pb2.StreamAccessLogsResponse()
server = grpc.server(futures.ThreadPoolExecutor(4))
als_pb2_grpc.add_AccessLogServiceServicer_to_server(Sink(), server)
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
while True:
    time.sleep(1)
    print(count, flush=True)
"""


def _manager(bootstrap: dict[str, Any]) -> dict[str, Any]:
    listener = bootstrap["static_resources"]["listeners"][0]
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def _als_logger(log_name: str, bare: bool = False, big_buffer: int = 0) -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": f"{_TYPES}.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": log_name,
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": "als"}},
                "buffer_flush_interval": "1s",
                **({"buffer_size_bytes": big_buffer} if big_buffer else {}),
            },
            **(
                {}
                if bare
                else {
                    "additional_request_headers_to_log": [
                        "traceparent",
                        "x-b3-traceid",
                        "content-type",
                    ],
                    "additional_response_trailers_to_log": ["grpc-status"],
                }
            ),
        },
    }


def _stats_logger() -> dict[str, Any]:
    tags = [{"name": name, "value_format": value} for name, value in _STAT_TAGS]
    return {
        "name": "envoy.access_loggers.stats",
        "typed_config": {
            "@type": f"{_TYPES}.access_loggers.stats.v3.Config",
            "stat_prefix": "istio",
            "counters": [{"stat": {"name": "requests_total", "tags": tags}, "value_fixed": 1}],
            "histograms": [
                {
                    "stat": {"name": "request_duration_milliseconds", "tags": tags},
                    "unit": "Milliseconds",
                    "value_format": "%DURATION%",
                },
                {
                    "stat": {"name": "response_bytes", "tags": tags},
                    "unit": "Bytes",
                    "value_format": "%BYTES_SENT%",
                },
            ],
        },
    }


def _als_cluster(port: int) -> dict[str, Any]:
    return {
        "name": "als",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{_TYPES}.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": "als",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def _tracing(encoding: str = "HTTP_JSON", sampling: float = 100) -> dict[str, Any]:
    return {
        "random_sampling": {"value": sampling},
        "provider": {
            "name": "envoy.tracers.zipkin",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                "collector_cluster": "zipkin",
                "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": encoding,
                "trace_id_128bit": True,
                "trace_context_option": "USE_B3_WITH_W3C_PROPAGATION",
            },
        },
    }


def _file_logger() -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": f"{_TYPES}.access_loggers.file.v3.FileAccessLog",
            "path": "/dev/null",
            "log_format": {
                "text_format_source": {
                    "inline_string": (
                        '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% '
                        '%PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% '
                        "%CONNECTION_TERMINATION_DETAILS% "
                        '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% '
                        '%DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" '
                        '"%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" '
                        '"%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% '
                        "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
                        "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
                    )
                }
            },
        },
    }


def _static_cluster(name: str, port: int, http2: bool) -> dict[str, Any]:
    cluster = _als_cluster(port)
    cluster["name"] = name
    cluster["load_assignment"]["cluster_name"] = name
    if not http2:
        del cluster["typed_extension_protocol_options"]
    return cluster


def with_logger(
    bootstrap: dict[str, Any], variant: str, role: str, als_port: int, zipkin_port: int
) -> dict[str, Any]:
    if variant == "trace-otel":
        _manager(bootstrap)["tracing"] = {
            "random_sampling": {"value": 100},
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "grpc_service": {"envoy_grpc": {"cluster_name": "als"}},
                    "service_name": role,
                },
            },
        }
        bootstrap["static_resources"]["clusters"].append(_als_cluster(als_port))
    if variant in ("trace", "trace-batched", "trace-proto", "trace-1pct", "all"):
        encoding = "HTTP_JSON" if variant in ("trace", "trace-batched") else "HTTP_PROTO"
        sampling = 1 if variant == "trace-1pct" else 100
        _manager(bootstrap)["tracing"] = _tracing(encoding, sampling)
        if variant == "trace-batched":
            bootstrap["layered_runtime"] = {
                "layers": [{"name": "zipkin", "static_layer": ZIPKIN_BATCHING}]
            }
        bootstrap["static_resources"]["clusters"].append(
            _static_cluster("zipkin", zipkin_port, http2=False)
        )
    if variant == "all":
        _manager(bootstrap)["access_log"] = [
            _als_logger(f"pilotfish.{role}", big_buffer=ALS_BUFFER_BYTES),
            _file_logger(),
        ]
        bootstrap["static_resources"]["clusters"].append(_als_cluster(als_port))
    elif variant.startswith("als"):
        logger = _als_logger(
            f"pilotfish.{role}",
            bare="bare" in variant,
            big_buffer=ALS_BUFFER_BYTES * ("big" in variant),
        )
        _manager(bootstrap)["access_log"] = [logger]
        bootstrap["static_resources"]["clusters"].append(_als_cluster(als_port))
    elif variant == "stats":
        _manager(bootstrap)["access_log"] = [_stats_logger()]
    return bootstrap


def measure(port: int, pids: list[int], seconds: int) -> tuple[float, float, float]:
    """(Envoy CPU µs per request, p50 µs, p99 µs) under wrk -c16."""
    before = sum(cpu_seconds(pid) for pid in pids)
    argv = on_cpu(
        LOAD_CPU,
        ["wrk", "-t1", "-c16", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"],
    )
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    spent = sum(cpu_seconds(pid) for pid in pids) - before
    requests, _elapsed, p50, p99, errors = parse_wrk(output)
    if errors:
        raise RuntimeError(f"{errors} errors:\n{output}")
    return spent * 1e6 / requests, p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()
    ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="pilotfish-telemetry-candidates-"))
    backend_port, zipkin_port = free_port(), free_port()
    (work / "nginx").mkdir()
    (work / "nginx.conf").write_text(
        NGINX_CONF.format(work=work / "nginx", port=backend_port, zipkin_port=zipkin_port)
    )
    processes: list[subprocess.Popen[bytes]] = []
    envoys: list[StaticEnvoy] = []
    try:
        processes.append(
            subprocess.Popen(
                ["nginx", "-c", str(work / "nginx.conf"), "-g", "daemon off;"],
                preexec_fn=die_with_parent,
            )
        )
        als_port = free_port()
        sink = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(ALS_SINK), str(als_port)],
            stdout=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        processes.append(sink)
        wait_for_port_sync(backend_port)
        wait_for_port_sync(als_port)
        pairs: dict[str, tuple[int, list[int]]] = {}
        for variant in ["none", *(v for v in args.variants if v != "none")]:
            directory = work / variant
            directory.mkdir()
            port, server_port = free_port(), free_port()
            server = StaticEnvoy(
                f"{variant}-server",
                with_logger(
                    server_bootstrap(server_port, backend_port, None),
                    variant,
                    "inbound",
                    als_port,
                    backend_port,
                ),
                directory,
            )
            client = StaticEnvoy(
                f"{variant}-client",
                with_logger(
                    client_bootstrap(port, server_port, None),
                    variant,
                    "outbound",
                    als_port,
                    backend_port,
                ),
                directory,
            )
            envoys += [server, client]
            pairs[variant] = (port, [server.pid, client.pid])
        for port, _ in pairs.values():
            wait_serving(port)
        rows: dict[str, list[tuple[float, float, float]]] = {v: [] for v in pairs}
        for _ in range(args.repetitions):
            for variant, (port, pids) in pairs.items():
                try:
                    rows[variant].append(measure(port, pids, args.seconds))
                except RuntimeError as exc:
                    raise RuntimeError(f"{variant}: {exc}") from None
        base = statistics.median(r[0] for r in rows["none"])
        print(
            f"Envoy CPU per request, client + server Envoy, wrk -c16, {args.seconds}s x "
            f"{args.repetitions}, medians"
        )
        print(f"{'variant':<8} {'cpu us/req':>10} {'x none':>7} {'p50 us':>8} {'p99 us':>8}")
        result: dict[str, Any] = {}
        for variant, measured in rows.items():
            cpu = statistics.median(r[0] for r in measured)
            p50 = statistics.median(r[1] for r in measured)
            p99 = statistics.median(r[2] for r in measured)
            print(f"{variant:<8} {cpu:>10.1f} {cpu / base:>7.2f} {p50:>8.0f} {p99:>8.0f}")
            result[variant] = {"cpu_us_per_request": cpu, "p50_us": p50, "p99_us": p99}
        print(json.dumps(result))
    finally:
        for envoy in envoys:
            envoy.stop()
        for process in processes:
            process.terminate()
            process.wait(10)


def wait_for_port_sync(port: int) -> None:
    import asyncio

    asyncio.run(wait_for_port("127.0.0.1", port, 20))


def wait_serving(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        try:
            with opener.open(f"http://127.0.0.1:{port}/", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the pair on {port} does not serve")


if __name__ == "__main__":
    main()
