"""Real Envoys stream their access logs to the control plane's access-log service; it makes
Istio's metrics of them, serves them on /metrics, and a real Prometheus scrapes and queries
them.

The two Envoys run a hand-built static config of this test's own (a caller's outbound, a
callee's inbound), each with a gRPC access logger pointed at the xDS port, the peer header
set by the caller and moved into metadata by the callee, as the mesh's sidecars do. Each
also announces its node on a real ADS stream, which is how the control plane knows proxies.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sds_envoys import echo_app
from test_translate_envoy_validate import ENVOY
from tests.waiting import eventually

from pilotfish.admin.server import start_admin_server
from pilotfish.agent.ports import free_port
from pilotfish.controller.control_plane import ControlPlane
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.telemetry import (
    ALS_LOG_INBOUND,
    ALS_LOG_OUTBOUND,
    LOGGED_REQUEST_HEADERS,
    LOGGED_RESPONSE_HEADERS,
    LOGGED_RESPONSE_TRAILERS,
    PEER_HEADER,
    PEER_METADATA_KEY,
    PEER_METADATA_NAMESPACE,
)
from pilotfish.snapshot import type_urls
from xds_clients import SotwClient

PROMETHEUS = Path("/usr/bin/prometheus")
MESH = """apiVersion: pilotfish.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {}
"""
BACKEND_HOST = "backend.default.svc.cluster.local"
BACKEND_CLUSTER = f"outbound|8080||{BACKEND_HOST}"
REQUESTS = 5
FAILED = 3


def http_connection_manager(
    prefix: str, log_name: str, cluster: str, filters: list[dict[str, Any]], peer: str | None
) -> dict[str, Any]:
    virtual_host: dict[str, Any] = {
        "name": prefix,
        "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
    }
    if peer is not None:
        virtual_host["request_headers_to_add"] = [
            {
                "header": {"key": PEER_HEADER, "value": peer},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ]
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": prefix,
        "access_log": [
            {
                "name": "envoy.access_loggers.http_grpc",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3."
                    "HttpGrpcAccessLogConfig",
                    "common_config": {
                        "log_name": log_name,
                        "transport_api_version": "V3",
                        "grpc_service": {"envoy_grpc": {"cluster_name": "xds-grpc"}},
                        "buffer_flush_interval": "0.1s",
                    },
                    "additional_request_headers_to_log": list(LOGGED_REQUEST_HEADERS),
                    "additional_response_headers_to_log": list(LOGGED_RESPONSE_HEADERS),
                    "additional_response_trailers_to_log": list(LOGGED_RESPONSE_TRAILERS),
                },
            }
        ],
        "route_config": {"name": prefix, "virtual_hosts": [virtual_host]},
        "http_filters": [
            *filters,
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }


def static_cluster(name: str, port: int, http2: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
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
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def bootstrap(
    node: ProxyNode, listen_port: int, hcm: dict[str, Any], clusters: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "node": {"id": node.id, "cluster": node.service, "metadata": node.to_metadata()},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "listener",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": listen_port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def caller_config(node: ProxyNode, callee_inbound: int, xds_port: int) -> dict[str, Any]:
    assert node.outbound_port is not None
    hcm = http_connection_manager("outbound", ALS_LOG_OUTBOUND, BACKEND_CLUSTER, [], node.id)
    clusters = [
        static_cluster(BACKEND_CLUSTER, callee_inbound),
        static_cluster("xds-grpc", xds_port, http2=True),
    ]
    return bootstrap(node, node.outbound_port, hcm, clusters)


def callee_config(node: ProxyNode, xds_port: int) -> dict[str, Any]:
    assert node.inbound_port is not None and node.app_port is not None
    peer_to_metadata = {
        "name": "envoy.filters.http.header_to_metadata",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3."
            "Config",
            "request_rules": [
                {
                    "header": PEER_HEADER,
                    "on_header_present": {
                        "metadata_namespace": PEER_METADATA_NAMESPACE,
                        "key": PEER_METADATA_KEY,
                        "type": "STRING",
                    },
                    "remove": True,
                }
            ],
        },
    }
    inbound_cluster = f"inbound|{node.app_port}||"
    hcm = http_connection_manager(
        "inbound", ALS_LOG_INBOUND, inbound_cluster, [peer_to_metadata], None
    )
    clusters = [
        static_cluster(inbound_cluster, node.app_port),
        static_cluster("xds-grpc", xds_port, http2=True),
    ]
    return bootstrap(node, node.inbound_port, hcm, clusters)


@contextlib.contextmanager
def running_envoy(config: Mapping[str, Any], folder: Path) -> Iterator[None]:
    folder.mkdir()
    path = folder / "envoy.json"
    path.write_text(json.dumps(config))
    log = (folder / "envoy.log").open("wb")
    process = subprocess.Popen(
        [str(ENVOY), "-c", str(path), "--disable-hot-restart", "--concurrency", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextlib.asynccontextmanager
async def announced(target: str, node: ProxyNode) -> AsyncIterator[None]:
    """The node's ADS stream, open as a proxy's is."""
    async with SotwClient(target, node) as client:
        client.request(type_urls.CLUSTER)
        await client.receive()
        yield


@contextlib.contextmanager
def prometheus(folder: Path, target: str) -> Iterator[str]:
    folder.mkdir()
    config = folder / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "- job_name: pilotfish\n"
        "  scrape_interval: 1s\n"
        f"  static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
        return response.status, await response.text()


def requests_total(plane: ControlPlane, **labels: str) -> float:
    family = next(f for f in plane.istio_metrics.families() if f.name == "istio_requests_total")
    return sum(
        s.value  # type: ignore[union-attr]
        for s in family.samples
        if all(dict(s.labels).get(k) == v for k, v in labels.items())
    )


async def test_requests_through_real_envoys_become_istio_metrics_prometheus_can_query(
    tmp_path: Path,
) -> None:
    (tmp_path / "mesh").mkdir()
    (tmp_path / "mesh" / "mesh.yaml").write_text(MESH)
    frontend = ProxyNode(
        id="frontend-0",
        service="frontend",
        labels={"app": "frontend", "version": "v1"},
        outbound_port=free_port(),
        inbound_port=free_port(),
        app_port=free_port(),
        workload="frontend",
    )
    plane = ControlPlane(tmp_path / "mesh")
    await plane.start()
    admin, admin_port = await start_admin_server(plane)
    target = f"127.0.0.1:{plane.xds_port}"
    try:
        async with contextlib.AsyncExitStack() as stack, aiohttp.ClientSession() as session:
            app = contextlib.ExitStack()
            stack.callback(app.close)
            backend = ProxyNode(
                id="backend-0",
                service="backend",
                labels={"app": "backend", "version": "v2"},
                outbound_port=free_port(),
                inbound_port=free_port(),
                app_port=app.enter_context(echo_app()),
                workload="backend-v2",
            )
            assert backend.inbound_port is not None
            await stack.enter_async_context(announced(target, frontend))
            await stack.enter_async_context(announced(target, backend))
            stack.enter_context(
                running_envoy(
                    caller_config(frontend, backend.inbound_port, plane.xds_port),
                    tmp_path / "frontend",
                )
            )
            stack.enter_context(
                running_envoy(callee_config(backend, plane.xds_port), tmp_path / "backend")
            )
            url = f"http://127.0.0.1:{frontend.outbound_port}/hello"

            async def answered() -> bool:
                return (await get(session, url))[0] == 200

            await eventually(answered, "the caller's outbound to answer 200")
            for _ in range(REQUESTS):
                status, body = await get(session, url)
                assert status == 200
                assert PEER_HEADER not in json.loads(body)  # the callee removed it
            app.close()  # the app goes away: the callee's inbound cannot connect to it
            # The caller's side relays the callee's 503 (no flag of its own); a 503 UF there is
            # one of the tries above while the callee's Envoy was starting.
            relayed_503 = {"reporter": "source", "response_code": "503", "response_flags": "-"}
            for _ in range(FAILED):
                assert (await get(session, url))[0] == 503
            await eventually(
                lambda: (
                    requests_total(plane, **relayed_503) >= FAILED
                    and requests_total(plane, reporter="destination", response_code="503") >= FAILED
                ),
                "the access logs of the failed requests",
                timeout=15,
            )
            assert plane.access_logs.streams_open == 2
            connected = plane.xds_metrics.families()[0].samples
            assert [(dict(c.labels), c.value) for c in connected] == [  # type: ignore[union-attr]
                ({"kind": "sidecar", "stream": "sotw"}, 2)
            ]

        source = {"reporter": "source", "source_workload": "frontend"}
        destination = {"reporter": "destination", "destination_workload": "backend-v2"}
        assert (
            requests_total(
                plane,
                **source,
                destination_service=BACKEND_HOST,
                destination_workload="backend-v2",
                response_code="200",
                response_flags="-",
            )
            >= REQUESTS
        )
        assert (
            requests_total(
                plane,
                **destination,
                source_workload="frontend",
                source_app="frontend",
                source_version="v1",
                destination_service=BACKEND_HOST,
                destination_service_name="backend",
                destination_service_namespace="default",
                response_code="200",
                connection_security_policy="none",
            )
            >= REQUESTS
        )
        assert (
            requests_total(plane, **destination, response_code="503", response_flags="UF") == FAILED
        )
        assert requests_total(plane, **source, response_code="503", response_flags="-") == FAILED

        # Both ADS streams were open when the requests were made; the Envoys have exited, and
        # the server notices their streams end a moment later.
        await eventually(
            lambda: not plane.xds_metrics.families()[0].samples,
            "the stopped Envoys' ADS streams to be gone",
        )
        status, text = await _get_once(f"http://127.0.0.1:{admin_port}/metrics")
        assert status == 200
        assert 'istio_requests_total{reporter="destination",source_workload="frontend",' in text
        assert 'pilotfish_xds_pushes_total{type="CDS"}' in text
        assert "pilotfish_xds_connected_proxies{" not in text
        assert f"pilotfish_telemetry_records_total {plane.telemetry.records_ingested}\n" in text

        if not PROMETHEUS.exists():
            pytest.skip(
                f"{PROMETHEUS} is missing (Debian package prometheus; .ci/run installs it): "
                "the scrape by a real Prometheus was not tested"
            )
        with prometheus(tmp_path / "prometheus", f"127.0.0.1:{admin_port}") as server:
            promql = 'istio_requests_total{reporter="destination",response_flags="UF"}'
            query = f"{server}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"

            async def scraped() -> list[dict[str, Any]] | None:
                status, body = await _get_once(query)
                if status != 200:
                    return None
                result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
                return result or None

            (series,) = await eventually(scraped, "Prometheus to answer the query", timeout=60)
            assert series["metric"]["source_workload"] == "frontend"
            assert series["metric"]["destination_service"] == BACKEND_HOST
            assert series["metric"]["response_code"] == "503"
            assert float(series["value"][1]) == FAILED
    finally:
        await admin.cleanup()
        await plane.stop(0.1)


async def _get_once(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        return await get(session, url)
