"""A real Envoy 1.40 with its Zipkin tracer posts its spans to our admin API: the store takes
them as Envoy writes them (128-bit ids, B3 shared spans, its tags), and `pilotfish trace` draws
the trace. Two listeners of one Envoy stand in for a caller's outbound and a callee's inbound."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_translate_envoy_validate import ENVOY
from tests.waiting import wait_until

from pilotfish.admin.server import start_admin_server
from pilotfish.agent.ports import free_port
from pilotfish.cli.main import main
from pilotfish.controller.control_plane import ControlPlane
from pilotfish.model.telemetry import TELEMETRY_CLUSTER, ZIPKIN_SPANS_PATH

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextlib.contextmanager
def admin_api(directory: Path) -> Iterator[int]:
    """The admin API of a control plane (not started: only its trace store is needed)."""
    loop = asyncio.new_event_loop()
    control_plane = ControlPlane(directory)
    runner, port = loop.run_until_complete(start_admin_server(control_plane))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.run_until_complete(runner.cleanup())
        loop.run_until_complete(control_plane.trace_export.stop())
        loop.close()


def static_cluster(name: str, port: int) -> dict[str, object]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {
                            "address": "127.0.0.1", "port_value": port}}}}
                    ]
                }
            ],
        },
    }  # fmt: skip


def listener(
    name: str, port: int, direction: str, route: dict[str, object], encoding: str
) -> dict[str, object]:
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": name,
        "generate_request_id": True,
        "tracing": {
            "provider": {
                "name": "envoy.tracers.zipkin",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                    "collector_cluster": TELEMETRY_CLUSTER,
                    "collector_endpoint": ZIPKIN_SPANS_PATH,
                    "collector_endpoint_version": encoding,
                    "trace_id_128bit": True,
                },
            }
        },
        "route_config": {
            "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route]}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "name": name,
        "traffic_direction": direction,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": manager}]}
        ],
    }  # fmt: skip


@contextlib.contextmanager
def tracing_envoy(directory: Path, admin_port: int, encoding: str) -> Iterator[int]:
    outbound, inbound = free_port(), free_port()
    bootstrap = {
        "node": {"id": "probe-0", "cluster": "probe"},
        "static_resources": {
            "clusters": [
                static_cluster(TELEMETRY_CLUSTER, admin_port),
                static_cluster("inbound", inbound),
            ],
            "listeners": [
                listener("outbound", outbound, "OUTBOUND",
                         {"match": {"prefix": "/"}, "route": {"cluster": "inbound"}}, encoding),
                listener("inbound", inbound, "INBOUND",
                         {"match": {"prefix": "/"},
                          "direct_response": {"status": 503, "body": {"inline_string": "no"}}},
                         encoding),
            ],
        },
        # Send every span at once rather than 5 at a time or every 5 s.
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {
            "tracing.zipkin.min_flush_spans": 1}}]},
    }  # fmt: skip
    config = directory / "envoy.json"
    config.write_text(json.dumps(bootstrap))
    log = (directory / "envoy.log").open("wb")
    process = subprocess.Popen(
        [str(ENVOY), "-c", str(config), "--disable-hot-restart", "--concurrency", "1",
         "--log-level", "warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield outbound
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def get(url: str) -> tuple[int, object]:
    try:
        with NO_PROXY.open(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, None


@pytest.mark.parametrize("encoding", ["HTTP_JSON", "HTTP_PROTO"])
def test_envoys_zipkin_spans_are_stored_and_drawn(tmp_path: Path, encoding: str) -> None:
    with admin_api(tmp_path) as admin_port, tracing_envoy(tmp_path, admin_port, encoding) as port:
        admin = f"http://127.0.0.1:{admin_port}"

        def answered() -> bool:
            return get(f"http://127.0.0.1:{port}/hello")[0] == 503

        wait_until(answered, 30, f"Envoy on {port}\n{(tmp_path / 'envoy.log').read_text()}")

        def two_spans() -> list[list[dict[str, object]]] | None:
            _, traces = get(f"{admin}/api/v2/traces?serviceName=probe")
            assert isinstance(traces, list)
            return [t for t in traces if len(t) >= 2] or None

        traces = wait_until(two_spans, 20, "Envoy's spans in the store")
        spans = traces[0]
        trace_id = str(spans[0]["traceId"])
        assert len(trace_id) == 32
        # the server shares the client's span id (B3), whatever the byte order on the wire
        assert spans[0]["id"] == spans[1]["id"]
        assert trace_id.endswith(str(spans[0]["id"]))
        assert sorted(str(s["kind"]) for s in spans) == ["CLIENT", "SERVER"]
        assert {s["tags"]["http.status_code"] for s in spans} == {"503"}  # type: ignore[index]
        status, by_id = get(f"{admin}/api/v2/trace/{trace_id}")
        assert status == 200
        assert isinstance(by_id, list) and len(by_id) == len(spans)
        stats = get(f"{admin}/api/traces/stats")[1]
        assert isinstance(stats, dict) and stats["counts"]["spans_refused"] == 0

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["trace", str(tmp_path), trace_id, "--admin", admin])
        assert code == 0
        lines = out.getvalue().splitlines()
        assert lines[0].startswith(f"trace {trace_id}: ")
        assert lines[1].startswith("probe: ")
        assert lines[2].startswith("  probe: ")
        assert "503 ERROR" in lines[2]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["trace", str(tmp_path), "--admin", admin]) == 0
        assert trace_id in out.getvalue()
