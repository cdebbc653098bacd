"""Transparent interception in `pilotfish up`: clients that ignore HTTP_PROXY are meshed.

Each replica runs in a network namespace of its own (made and removed by `up`), where iptables
takes its TCP connections to its sidecar. Needs root, iproute2, iptables and util-linux's
setpriv; the Node.js client needs /usr/bin/node.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.mesh_harness import (
    APPS,
    ECHO_COMMAND,
    RunningMesh,
    free_port,
    gateway,
    pid_alive,
    write_yaml,
)
from tests.waiting import wait_until

NODE = Path("/usr/bin/node")
REDIS = Path("/usr/bin/redis-server")
REDIS_CLI = Path("/usr/bin/redis-cli")

pytestmark = [
    pytest.mark.skipif(
        not sys.platform.startswith("linux") or os.geteuid() != 0,
        reason="transparent interception needs root on Linux (network namespaces, iptables)",
    ),
    pytest.mark.skipif(
        any(shutil.which(tool) is None for tool in ("ip", "iptables-save", "setpriv")),
        reason="transparent interception needs ip (iproute2), iptables and setpriv (util-linux)",
    ),
    pytest.mark.skipif(
        not (REDIS.exists() and REDIS_CLI.exists()), reason="needs Debian redis-server"
    ),
]

TRANSPARENT = """
apiVersion: pilotfish.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec:
  interception: transparent
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
"""


def workloads(node_client: bool = True) -> str:
    node = f"""
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {{name: frontend}}
spec:
  service: frontend
  port: 8080
  labels: {{app: frontend}}
  command: [{NODE}, {APPS / "node_caller.js"}]
---
"""
    python = f"""
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {{name: pyclient}}
spec:
  service: pyclient
  port: 8080
  labels: {{app: pyclient}}
  command: {ECHO_COMMAND}
  upstreams: [{{service: cache, port: 6379}}]
---
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {{name: cache}}
spec:
  service: cache
  port: 6379
  protocol: TCP
  command: [/bin/sh, -c, "exec {REDIS} --port $PORT --bind 127.0.0.1 --save '' --appendonly no"]
---
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {{name: backend}}
spec:
  service: backend
  port: 8080
  replicas: 2
  labels: {{app: backend}}
  command: {ECHO_COMMAND}
---
"""
    return (node if node_client else "") + python


ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{headers: {x-client: {exact: python}}}]
    route: [{destination: {host: pyclient}}]
  - route: [{destination: {host: FRONT}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend]
  http:
  - match: [{headers: {x-fault: {exact: abort}}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: backend}}]
  - route: [{destination: {host: backend}}]
    headers:
      request:
        set: {x-routed-by: backend-virtual-service}
---
"""


def our_namespaces(pid: int) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    return [name for name in names if name.startswith(f"pf{pid}-")]


def our_links(pid: int) -> list[str]:
    shown = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return re.findall(rf"\d+: (pf{pid}h)[@:]", shown.stdout)


def root_rules() -> str:
    """The root namespace's iptables, without comments and packet counters."""
    saved = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    lines = [line for line in saved.splitlines() if not line.startswith("#")]
    return "\n".join(re.sub(r"\[\d+:\d+\]", "", line) for line in lines)


def leftovers(pid: int) -> list[str]:
    hosts = [str(p) for p in Path("/etc/netns").glob(f"pf{pid}-*")]
    return our_namespaces(pid) + our_links(pid) + hosts


def start(directory: Path, node_client: bool = True) -> RunningMesh:
    directory.mkdir(exist_ok=True)
    gateway_port = free_port()
    routes = ROUTES.replace("FRONT", "frontend" if node_client else "backend")
    text = TRANSPARENT + gateway(gateway_port) + workloads(node_client) + routes
    write_yaml(directory / "mesh.yaml", text)
    return RunningMesh(directory, gateway_port)


def wait_ready(mesh: RunningMesh) -> None:
    mesh.wait_serving("/")
    mesh.wait_endpoints("backend.default.svc.cluster.local", 2)
    mesh.wait_endpoints("pyclient.default.svc.cluster.local", 1)
    mesh.wait_endpoints("cache.default.svc.cluster.local", 1)
    mesh.wait_synced()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    if not NODE.exists():
        pytest.skip("the Node.js client needs /usr/bin/node (Debian package nodejs)")
    running = start(tmp_path_factory.mktemp("interception"))
    try:
        wait_ready(running)
        yield running
    finally:
        running.stop()


def backend_answer(reply_body: dict[str, object]) -> dict[str, object]:
    assert reply_body.get("status") == 200, reply_body
    body = reply_body["body"]
    assert isinstance(body, str)
    answer = json.loads(body)
    assert isinstance(answer, dict)
    return answer


def test_a_node_http_client_reaches_the_backend_through_both_sidecars(mesh: RunningMesh) -> None:
    reply = mesh.get("/call?url=http://backend:8080/from-node")
    assert reply.status == 200, reply.body
    answer = backend_answer(reply.body)
    assert answer["replica"] in ("backend-0", "backend-1")
    headers = answer["headers"]
    assert isinstance(headers, dict)
    # The backend's sidecar verified the caller's certificate (mTLS from the caller's
    # sidecar: Node itself speaks plain HTTP to an address it looked up in /etc/hosts).
    assert "URI=spiffe://cluster.local/ns/default/sa/default" in headers["x-forwarded-client-cert"]
    # The caller's sidecar routed it by the backend's VirtualService.
    assert headers["x-routed-by"] == "backend-virtual-service"


def test_the_callers_sidecar_balances_over_every_replicas_namespace(mesh: RunningMesh) -> None:
    seen = set()
    for _ in range(20):
        reply = mesh.get("/call?url=http://backend:8080/which")
        seen.add(backend_answer(reply.body)["replica"])
        if len(seen) == 2:
            break
    assert seen == {"backend-0", "backend-1"}


def test_the_callers_sidecar_applies_the_virtual_service_fault_to_node(mesh: RunningMesh) -> None:
    reply = mesh.get("/call?url=http://backend:8080/x", headers={"x-fault": "abort"})
    assert reply.status == 200, reply.body
    assert reply.body["status"] == 418, reply.body


def test_a_python_client_without_a_proxy_is_meshed_too(mesh: RunningMesh) -> None:
    reply = mesh.get(
        "/call?url=http://backend.default.svc.cluster.local:8080/from-python",
        headers={"x-client": "python"},
    )
    assert reply.status == 200, reply.body
    assert reply.body["via"] == "pyclient-0"
    answer = reply.body["answer"]
    assert isinstance(answer, dict)
    headers = answer["headers"]
    assert "URI=spiffe://cluster.local/ns/default/sa/default" in headers["x-forwarded-client-cert"]
    assert headers["x-routed-by"] == "backend-virtual-service"


def test_a_replica_calling_its_own_service_enters_through_its_own_sidecar(
    mesh: RunningMesh,
) -> None:
    # Its sidecar's connection to its own address is sent back to its inbound listener, which
    # ends the mTLS; without that the app would get the TLS handshake.
    reply = mesh.get("/call?url=http://pyclient:8080/itself", headers={"x-client": "python"})
    assert reply.status == 200, reply.body
    answer = reply.body["answer"]
    assert isinstance(answer, dict)
    assert answer["replica"] == "pyclient-0" and answer["path"] == "/itself"
    headers = answer["headers"]
    assert "URI=spiffe://cluster.local/ns/default/sa/default" in headers["x-forwarded-client-cert"]


def namespace_of(up: int, replica: str) -> tuple[str, dict[str, str]]:
    """The namespace a replica's app runs in, and that app's environment."""
    for namespace in our_namespaces(up):
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
        for pid in pids.stdout.split():
            with contextlib.suppress(OSError):
                raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                env = dict(item.decode().partition("=")[::2] for item in raw if b"=" in item)
                if env.get("PILOTFISH_REPLICA") == replica:
                    return namespace, env
    raise AssertionError(f"no namespace runs {replica}")


def test_a_tcp_client_reaches_redis_over_strict_mtls_by_name_and_by_upstream(
    mesh: RunningMesh,
) -> None:
    namespace, env = namespace_of(mesh.process.pid, "pyclient-0")
    # Under interception the upstream's variable names the service's own address.
    address, _, port = env["PILOTFISH_UPSTREAM_CACHE_6379"].partition(":")
    assert address.startswith("240.240.") and port == "6379"
    for host in ("cache", address):
        argv = ["ip", "netns", "exec", namespace, str(REDIS_CLI), "-h", host, "-p", "6379"]
        done = subprocess.run([*argv, "PING"], capture_output=True, text=True, timeout=20)
        assert done.stdout.strip() == "PONG", done
    # STRICT: the server's sidecar refuses anything that is not its mesh's mTLS, so the PONG
    # came through both sidecars; a caller outside the mesh (the host) is turned away.
    services = mesh.admin("/api/services")["services"]
    assert isinstance(services, list)
    (cache,) = [s for s in services if s["hostname"] == "cache.default.svc.cluster.local"]
    (endpoint,) = cache["endpoints"]
    replica = endpoint["address"]
    assert endpoint["ports"] == {"6379": 6379}  # its own address and port: iptables redirects
    direct = subprocess.run(
        [str(REDIS_CLI), "-h", replica, "-p", "6379", "PING"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert "PONG" not in direct.stdout


def test_each_replica_has_its_namespace_and_the_services_names(mesh: RunningMesh) -> None:
    namespaces = our_namespaces(mesh.process.pid)
    assert len(namespaces) == 6  # the hub and five replicas
    hosts = Path(f"/etc/netns/{sorted(namespaces)[0]}/hosts").read_text()
    assert re.search(
        r"^240\.240\.\d+\.\d+\tbackend\.default\.svc\.cluster\.local backend"
        r" backend\.default backend\.default\.svc$",
        hosts,
        re.M,
    )


EXTERNAL = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-api}
spec:
  hosts: [api.example.com]
  addresses: [192.0.2.77]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
"""


def test_the_hosts_files_follow_the_services(mesh: RunningMesh) -> None:
    hosts = Path(f"/etc/netns/{sorted(our_namespaces(mesh.process.pid))[0]}/hosts")
    extra = mesh.directory / "external.yaml"
    write_yaml(extra, EXTERNAL)
    try:
        wait_until(lambda: "192.0.2.77\tapi.example.com\n" in hosts.read_text(), 20, "the entry")
    finally:
        extra.unlink()
    wait_until(lambda: "api.example.com" not in hosts.read_text(), 20, "the entry to go")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_everything_made_is_removed_when_up_ends(tmp_path: Path, how: signal.Signals) -> None:
    rules_before = root_rules()
    running = start(tmp_path / "mesh", node_client=False)
    pid = running.process.pid
    try:
        wait_ready(running)
        assert our_namespaces(pid) and our_links(pid)
        descendants = running.descendants()
        running.process.send_signal(how)
        running.process.wait(30)
        wait_until(lambda: not leftovers(pid), 30, f"the namespaces of {pid} to be removed")
        assert root_rules() == rules_before
        wait_until(lambda: not any(pid_alive(p) for p in descendants), 15, "every child to exit")
    finally:
        running.stop()


def test_the_next_up_sweeps_what_a_killed_up_and_its_reaper_left(tmp_path: Path) -> None:
    first = start(tmp_path / "first", node_client=False)
    pid = first.process.pid
    try:
        wait_ready(first)
        reapers = [p for p in first.descendants() if b"netns_reaper" in _cmdline(p)]
        assert reapers, "up runs a reaper"
        for victim in (*reapers, pid):
            os.kill(victim, signal.SIGKILL)
        first.process.wait(30)
        assert our_namespaces(pid)  # nobody was left to clean up
    finally:
        first.stop()
    second = start(tmp_path / "second", node_client=False)
    try:
        wait_ready(second)
        assert not leftovers(pid)
    finally:
        second.stop()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
