"""What Envoy's Zipkin tracer posts as protobuf reads back as the spans it made."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tests.waiting import wait_until

from pilotfish.agent.ports import free_port
from pilotfish.telemetry.zipkin_proto import spans_from_protobuf

pytestmark = pytest.mark.integration

ENVOY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "envoy"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class _Collector(BaseHTTPRequestHandler):
    bodies: list[tuple[str, bytes]]

    def do_POST(self) -> None:
        body = self._chunked() if "Content-Length" not in self.headers else self._whole()
        self.bodies.append((self.headers.get("Content-Type", ""), body))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _whole(self) -> bytes:
        return self.rfile.read(int(self.headers["Content-Length"]))

    def _chunked(self) -> bytes:
        body = b""
        while size := int(self.rfile.readline().split(b";")[0], 16):
            body += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()
        return body

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[int, list[tuple[str, bytes]]]]:
    bodies: list[tuple[str, bytes]] = []
    handler = type("Collector", (_Collector,), {"bodies": bodies})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], bodies
    finally:
        server.shutdown()
        server.server_close()


def _bootstrap(listen_port: int, collector_port: int) -> dict[str, Any]:
    types = "type.googleapis.com/envoy"
    manager = {
        "@type": f"{types}.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "traced",
        "tracing": {
            "random_sampling": {"value": 100},
            "provider": {
                "name": "envoy.tracers.zipkin",
                "typed_config": {
                    "@type": f"{types}.config.trace.v3.ZipkinConfig",
                    "collector_cluster": "collector",
                    "collector_endpoint": "/api/v2/spans",
                    "collector_endpoint_version": "HTTP_PROTO",
                    "trace_id_128bit": True,
                    "shared_span_context": False,
                    "trace_context_option": "USE_B3_WITH_W3C_PROPAGATION",
                },
            },
        },
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                        }
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": f"{types}.extensions.filters.http.router.v3.Router"},
            }
        ],
    }

    def address(port: int) -> dict[str, Any]:
        return {"socket_address": {"address": "127.0.0.1", "port_value": port}}

    return {
        "node": {"id": "traced", "cluster": "frontend.default"},
        "admin": {"address": address(0)},
        "layered_runtime": {
            "layers": [{"name": "flush", "static_layer": {"tracing.zipkin.min_flush_spans": 1}}]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "traced",
                    "address": address(listen_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "collector",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "collector",
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": address(collector_port)}}]}
                        ],
                    },
                }
            ],
        },
    }


def test_a_span_envoy_posts_as_protobuf_reads_back_with_its_trace_and_service(
    tmp_path: Path, collector: tuple[int, list[tuple[str, bytes]]]
) -> None:
    collector_port, bodies = collector
    listen_port = free_port()
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(_bootstrap(listen_port, collector_port)))
    envoy = subprocess.Popen(
        [str(ENVOY), "-c", str(config), "--disable-hot-restart", "-l", "warning",
         "--base-id", str(free_port())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def answered() -> bool:
            request = urllib.request.Request(
                f"http://127.0.0.1:{listen_port}/cart",
                headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
            )
            try:
                with NO_PROXY.open(request, timeout=2) as reply:
                    return bool(reply.status == 200)
            except OSError:
                return False

        wait_until(answered, 30, "the traced Envoy to answer")
        wait_until(lambda: bool(bodies), 15, "Envoy to post its spans")
    finally:
        envoy.terminate()
        envoy.wait(10)
    content_type, body = bodies[0]
    assert content_type == "application/x-protobuf"
    spans = spans_from_protobuf(body)
    ours = [span for span in spans if span["traceId"] == TRACE_ID]
    assert ours, spans
    span = ours[0]
    assert span["kind"] == "SERVER"
    # The caller's span is the server span's parent (shared_span_context off, as the mesh
    # runs it): Envoy's span ids read back in the byte order of the traceparent they came in.
    assert span["parentId"] == PARENT_ID
    assert isinstance(span["localEndpoint"], dict)
    assert span["localEndpoint"]["serviceName"] == "frontend.default"
    assert isinstance(span["duration"], int) and span["duration"] > 0
    assert isinstance(span["tags"], dict) and span["tags"]["http.url"].endswith("/cart")
