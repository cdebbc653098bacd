"""A real Envoy fed by our ADS server (SotW and Delta): traffic flows, a bad cluster is NACKed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from sds_envoys import envoy_command
from tests.waiting import eventually

from pilotfish.agent.ports import free_port
from pilotfish.model.proxy import ProxyNode
from pilotfish.snapshot import check_consistency, make_snapshot, type_urls
from pilotfish.xds import SyncStatus
from pilotfish.xds.server import start_xds_server
from pilotfish.xds.source import InMemorySnapshotSource
from pilotfish.xds.status_board import ProxyStatusBoard
from xds_clients import (
    SimpleResources,
    eds_cluster,
    http_listener,
    http_resources,
    load_assignment,
    route_to,
)

pytestmark = pytest.mark.integration

NODE = ProxyNode(id="envoy-under-test", service="frontend")
BACKEND_BODY = b"hello from the backend"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answering(body: bytes) -> type[BaseHTTPRequestHandler]:
    class Answer(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Answer


@contextlib.contextmanager
def _serving(body: bytes) -> Iterator[int]:
    """An HTTP server on a free loopback port answering every GET with ``body``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _answering(body))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def backend_port() -> Iterator[int]:
    with _serving(BACKEND_BODY) as port:
        yield port


@pytest.fixture
def other_backend_port() -> Iterator[int]:
    with _serving(b"the other backend") as port:
        yield port


def bootstrap(api_type: str, xds_port: int) -> dict[str, object]:
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": NODE.id, "cluster": "test", "metadata": NODE.to_metadata()},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "cds_config": ads_source,
            "lds_config": ads_source,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }


@dataclass
class Plane:
    source: InMemorySnapshotSource
    board: ProxyStatusBoard
    port: int


@pytest.fixture
async def plane() -> AsyncIterator[Plane]:
    source = InMemorySnapshotSource()
    board = ProxyStatusBoard()
    server, port = await start_xds_server(source, [board])
    try:
        yield Plane(source, board, port)
    finally:
        await server.stop(None)


async def start_envoy(
    config: dict[str, object], folder: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """Envoy with ``config`` (its log in ``folder``), and its admin URL once it has one."""
    config_path = folder / "envoy.json"
    config_path.write_text(json.dumps(config))
    admin_path = folder / "admin-address"
    command = envoy_command(config_path, admin_path, folder / "envoy.log", "info")
    envoy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await eventually(lambda: admin_path.exists() and admin_path.read_text() != "", "admin")
    except BaseException:
        envoy.kill()
        envoy.wait(timeout=10)
        raise
    return envoy, "http://" + admin_path.read_text().strip()


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with NO_PROXY.open(url, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""
    except OSError:
        return 0, b""


async def fetch_until_ok(url: str) -> bytes:
    for _ in range(300):
        status, body = await asyncio.to_thread(http_get, url)
        if status == 200:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered 200")


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
async def test_envoy_serves_traffic_then_nacks_a_broken_cluster(
    api_type: str, plane: Plane, backend_port: int, tmp_path: Path
) -> None:
    listener_port = free_port()
    resources = http_resources(listener_port=listener_port, backend_port=backend_port)
    good = make_snapshot(resources)
    assert check_consistency(good) == []
    plane.source.set_snapshot(good)

    envoy, admin = await start_envoy(bootstrap(api_type, plane.port), tmp_path)
    try:
        await eventually(lambda: http_get(admin + "/ready")[0] == 200, "Envoy /ready")

        body = await fetch_until_ok(f"http://127.0.0.1:{listener_port}/")
        assert body == BACKEND_BODY

        def all_synced() -> bool:
            status = plane.board.find(NODE.id)
            return status is not None and all(t.status is SyncStatus.SYNCED for t in status.types)

        await eventually(all_synced, "every type SYNCED")
        status = plane.board.find(NODE.id)
        assert status is not None
        assert status.stream_kind == ("delta" if api_type == "DELTA_GRPC" else "sotw")
        assert {t.type_url for t in status.types} >= {
            type_urls.CLUSTER,
            type_urls.ENDPOINT,
            type_urls.LISTENER,
            type_urls.ROUTE,
        }

        # ORIGINAL_DST clusters pick their own hosts; a round-robin policy contradicts that.
        broken = cluster_pb2.Cluster(
            name="broken",
            type=cluster_pb2.Cluster.ORIGINAL_DST,
            lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        )
        broken.connect_timeout.FromMilliseconds(1000)
        plane.source.set_snapshot(
            make_snapshot(replace(resources, clusters=(*resources.clusters, broken)))
        )

        def cds_nacked() -> bool:
            status = plane.board.find(NODE.id)
            cds = status.type_status(type_urls.CLUSTER) if status else None
            return cds is not None and cds.status is SyncStatus.NACKED

        await eventually(cds_nacked, "CDS NACKED")
        status = plane.board.find(NODE.id)
        assert status is not None
        cds = status.type_status(type_urls.CLUSTER)
        assert cds is not None and cds.nack_message is not None
        assert "broken" in cds.nack_message
        shown = json.dumps(plane.board.to_json())
        assert "NACKED" in shown and "broken" in shown
        # The good config keeps serving.
        assert await asyncio.to_thread(http_get, f"http://127.0.0.1:{listener_port}/") == (
            200,
            BACKEND_BODY,
        )
    finally:
        envoy.kill()
        envoy.wait(timeout=10)


def envoy_stat(admin: str, name: str) -> int:
    _, body = http_get(f"{admin}/stats?filter=^{name}$")
    for line in body.decode().splitlines():
        stat, _, value = line.partition(": ")
        if stat == name:
            return int(value)
    raise AssertionError(f"Envoy has no stat {name}: {body!r}")


async def test_sotw_endpoints_of_one_cluster_change_and_the_other_keeps_its_own(
    plane: Plane, backend_port: int, other_backend_port: int, tmp_path: Path
) -> None:
    """Over SotW, an endpoint change sends the changed cluster's load assignment alone; Envoy
    updates that cluster and leaves the other one's endpoints as they were."""
    one_port, two_port = free_port(), free_port()
    both = SimpleResources(
        clusters=(eds_cluster("one"), eds_cluster("two")),
        load_assignments=(
            load_assignment("one", backend_port),
            load_assignment("two", backend_port),
        ),
        listeners=(http_listener("one", one_port, "one"), http_listener("two", two_port, "two")),
        routes=(route_to("one", "one"), route_to("two", "two")),
    )
    plane.source.set_snapshot(make_snapshot(both))
    envoy, admin = await start_envoy(bootstrap("GRPC", plane.port), tmp_path)
    try:
        one_url, two_url = f"http://127.0.0.1:{one_port}/", f"http://127.0.0.1:{two_port}/"
        assert await fetch_until_ok(one_url) == BACKEND_BODY
        assert await fetch_until_ok(two_url) == BACKEND_BODY
        updates_of_two = envoy_stat(admin, "cluster.two.update_success")
        updates_of_one = envoy_stat(admin, "cluster.one.update_success")

        moved = replace(
            both,
            load_assignments=(load_assignment("one", other_backend_port), both.load_assignments[1]),
        )
        plane.source.set_snapshot(make_snapshot(moved))

        async def one_moved() -> bool:
            return (await asyncio.to_thread(http_get, one_url)) == (200, b"the other backend")

        for _ in range(100):
            if await one_moved():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("cluster one never reached its new endpoint")
        assert envoy_stat(admin, "cluster.one.update_success") > updates_of_one
        # Cluster two was not in the response, and Envoy kept its endpoint.
        assert envoy_stat(admin, "cluster.two.update_success") == updates_of_two
        assert await asyncio.to_thread(http_get, two_url) == (200, BACKEND_BODY)
        _, clusters = await asyncio.to_thread(http_get, admin + "/clusters")
        assert f"two::127.0.0.1:{backend_port}::" in clusters.decode()
    finally:
        envoy.kill()
        envoy.wait(timeout=10)
