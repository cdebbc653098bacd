"""The endpoints reader against a real Envoy: a static cluster with Istio-style outlier
detection, one upstream that always answers 503 and one that answers 200, the event log in
the bootstrap the agent writes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tests.waiting import eventually, wait_until

from pilotfish.admin.endpoints_api import endpoints_seen_by
from pilotfish.agent.bootstrap import build_bootstrap
from pilotfish.agent.envoy_process import find_envoy_binary
from pilotfish.agent.ports import free_port
from pilotfish.model.proxy import ProxyNode

HOSTNAME = "backend.default.svc.cluster.local"
CLUSTER = f"outbound|8080||{HOSTNAME}"
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Fail(_Answer):
    status = 503


@dataclass(frozen=True)
class StaticEnvoy:
    node: ProxyNode
    listener_port: int
    good: str
    bad: str


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _static_resources(listener_port: int, ports: list[int]) -> dict[str, Any]:
    hcm = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    router = "envoy.extensions.filters.http.router.v3.Router"
    return {
        "listeners": [
            {
                "name": "outbound",
                "address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": listener_port}
                },
                "filter_chains": [
                    {
                        "filters": [
                            {
                                "name": "hcm",
                                "typed_config": {
                                    "@type": f"type.googleapis.com/{hcm}",
                                    "stat_prefix": "outbound",
                                    "http_filters": [
                                        {
                                            "name": "router",
                                            "typed_config": {
                                                "@type": f"type.googleapis.com/{router}"
                                            },
                                        }
                                    ],
                                    "route_config": {
                                        "virtual_hosts": [
                                            {
                                                "name": "all",
                                                "domains": ["*"],
                                                "routes": [
                                                    {
                                                        "match": {"prefix": "/"},
                                                        "route": {"cluster": CLUSTER},
                                                    }
                                                ],
                                            }
                                        ]
                                    },
                                },
                            }
                        ]
                    }
                ],
            }
        ],
        "clusters": [
            {
                "name": CLUSTER,
                "type": "STATIC",
                "connect_timeout": "1s",
                # As Istio maps consecutive5xxErrors: 2: gateway errors are detected (a 503
                # is one) but not enforced, success-rate ejection is off.
                "outlier_detection": {
                    "consecutive_5xx": 2,
                    "enforcing_consecutive_5xx": 100,
                    "enforcing_consecutive_gateway_failure": 0,
                    "enforcing_success_rate": 0,
                    "interval": "0.5s",
                    "base_ejection_time": "60s",
                    "max_ejection_percent": 100,
                },
                "load_assignment": {
                    "cluster_name": CLUSTER,
                    "endpoints": [
                        {
                            "locality": {"region": "eu", "zone": "eu-1"},
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": "127.0.0.1",
                                                "port_value": port,
                                            }
                                        }
                                    }
                                }
                                for port in ports
                            ],
                        }
                    ],
                },
            }
        ],
    }


@pytest.fixture(scope="module")
def envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticEnvoy]:
    work = tmp_path_factory.mktemp("endpoints")
    good, bad = _serve(_Answer), _serve(_Fail)
    admin_port, listener_port = free_port(), free_port()
    node = ProxyNode(id="caller-0", outlier_log=str(work / "outlier-events.log"))
    # The agent's own bootstrap (node metadata, event log), with static resources instead of
    # xDS: nothing here needs a control plane.
    bootstrap = build_bootstrap(node, xds_address=("127.0.0.1", free_port()), admin_port=admin_port)
    del bootstrap["dynamic_resources"]
    bootstrap["static_resources"] = _static_resources(
        listener_port, [good.server_address[1], bad.server_address[1]]
    )
    path = work / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    log = (work / "envoy.log").open("wb")
    process = subprocess.Popen(
        [str(find_envoy_binary()), "-c", str(path), "--disable-hot-restart", "-l", "warning"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: _status(f"http://127.0.0.1:{admin_port}/ready") == 200, 20, "Envoy ready"
        )
        told = dataclasses.replace(node, admin_address=f"127.0.0.1:{admin_port}")
        yield StaticEnvoy(
            told,
            listener_port,
            good=f"127.0.0.1:{good.server_address[1]}",
            bad=f"127.0.0.1:{bad.server_address[1]}",
        )
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
        for server in (good, bad):
            server.shutdown()
            server.server_close()


def _status(url: str) -> int:
    try:
        with _direct.open(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _by_address(entry: dict[str, object]) -> dict[str, dict[str, Any]]:
    clusters = entry["clusters"]
    assert isinstance(clusters, list) and [c["name"] for c in clusters] == [CLUSTER]
    return {e["address"]: e for e in clusters[0]["endpoints"]}


@pytest.fixture(scope="module")
def ejected(envoy: StaticEnvoy) -> StaticEnvoy:
    """The failing upstream has been ejected (bounded: 20 requests at most), and the next
    requests all reach the other one."""
    for _ in range(20):
        _status(f"http://127.0.0.1:{envoy.listener_port}/")
        # Each 503 is both a 5xx and a gateway error; only the 5xx detector enforces.
        with _direct.open(
            f"http://{envoy.node.admin_address}/stats?filter=ejections_enforced_consecutive_5xx"
        ) as response:
            if not response.read().decode().strip().endswith(": 0"):
                statuses = [_status(f"http://127.0.0.1:{envoy.listener_port}/") for _ in range(3)]
                assert statuses == [200] * 3
                return envoy
    raise AssertionError("the failing upstream was never ejected")


async def test_the_failing_replica_is_ejected_with_since_and_why(ejected: StaticEnvoy) -> None:
    names = {ejected.bad: "backend-1", ejected.good: "backend-0"}

    async def logged() -> dict[str, Any] | None:
        (entry,) = await endpoints_seen_by([ejected.node], HOSTNAME, names)
        bad = _by_address(entry)[ejected.bad]
        # Envoy writes its event log about once a second.
        return entry if bad["ejection"]["since"] is not None else None

    entry = await eventually(logged, "the ejection in the event log", timeout=10, interval=0.2)
    assert entry["error"] is None and entry["outlier_log_error"] is None
    hosts = _by_address(entry)
    bad, good = hosts[ejected.bad], hosts[ejected.good]
    assert bad["health"] == "EJECTED"
    assert bad["endpoint"] == "backend-1"
    assert bad["problems"] == ["ejected by outlier detection"]
    # The gateway-error detector saw the same 503s first but does not enforce: the reason
    # is the one that ejected it.
    assert bad["ejection"]["reason"] == "CONSECUTIVE_5XX"
    assert bad["ejection"]["ejections"] == 1
    assert bad["ejection"]["since"].startswith("20")
    assert bad["rq_error"] >= 2 and bad["rq_active"] == 0
    assert bad["locality"] == "eu/eu-1"
    assert good["health"] == "HEALTHY" and "ejection" not in good
    assert good["rq_total"] >= 3 and good["rq_error"] == 0


async def test_what_cannot_be_seen_is_said(ejected: StaticEnvoy, tmp_path: Path) -> None:
    nodes = [
        # Another node id behind the same admin: not this proxy's view.
        dataclasses.replace(ejected.node, id="impostor-0"),
        ProxyNode(id="gone-0", admin_address=f"127.0.0.1:{free_port()}"),
        ProxyNode(id="elsewhere-0", admin_address="10.1.2.3:15000"),
        ProxyNode(id="old-agent-0"),
        dataclasses.replace(ejected.node, outlier_log=str(tmp_path / "not-here.log")),
    ]
    entries = {e["proxy"]: e for e in await endpoints_seen_by(nodes, HOSTNAME, {})}
    assert "is node 'caller-0', not this proxy" in str(entries["impostor-0"]["error"])
    assert "did not answer" in str(entries["gone-0"]["error"])
    assert "not a loopback address" in str(entries["elsewhere-0"]["error"])
    assert "ADMIN_ADDRESS" in str(entries["old-agent-0"]["error"])
    unreadable = entries["caller-0"]
    assert unreadable["error"] is None
    assert "not-here.log: No such file" in str(unreadable["outlier_log_error"])
    bad = _by_address(unreadable)[ejected.bad]
    assert bad["health"] == "EJECTED"  # still seen, only when and why are unknown
    assert bad["ejection"] == {
        "since": None,
        "reason": None,
        "ejections": None,
        "unknown": "its outlier event log is unreadable",
    }


async def test_a_proxy_without_the_service_is_left_out_unless_asked_for(
    envoy: StaticEnvoy,
) -> None:
    other = "other.default.svc.cluster.local"
    assert await endpoints_seen_by([envoy.node], other, {}) == []
    (entry,) = await endpoints_seen_by([envoy.node], other, {}, every=True)
    assert entry["proxy"] == "caller-0" and entry["clusters"] == [] and entry["error"] is None
