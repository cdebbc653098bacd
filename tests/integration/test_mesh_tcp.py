"""TCP and TLS through `pilotfish up`, with real servers and clients and STRICT mTLS between
every sidecar: PostgreSQL queried by ``psql`` and Redis by its protocol, from a Workload
through its ``upstreams`` ports; a weighted ``tcp`` route between two versions; TLS passed
through the gateway by SNI to a server with its own certificate; HTTP and raw TCP on one
unnamed (AUTO) port, and through its upstream port (HTTP detected there too, for its routes);
a Node.js ``http`` client (which ignores HTTP_PROXY) through an upstream.
"""

from __future__ import annotations

import collections
import json
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from tests.certificates import CertificateAuthority
from tests.integration.mesh_harness import (
    APPS,
    ECHO_COMMAND,
    RunningMesh,
    running_mesh,
    write_yaml,
)
from tests.waiting import wait_until

from pilotfish.agent.ports import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path("/usr/lib/postgresql/15/bin/postgres").exists() or not shutil.which("psql"),
        reason="needs Debian postgresql-15 (postgres, initdb) and postgresql-client (psql)",
    ),
    pytest.mark.skipif(not Path("/usr/bin/redis-server").exists(), reason="needs redis-server"),
    pytest.mark.skipif(not Path("/usr/bin/node").exists(), reason="needs Debian nodejs"),
]

PYTHON = sys.executable
SECURE_HOST = "secure.example.com"


def workload(
    name: str,
    service: str,
    port: int,
    command: str,
    *,
    protocol: str | None = None,
    version: str = "v1",
    env: str = "",
    extra: str = "",
) -> str:
    protocol_line = f"  protocol: {protocol}\n" if protocol else ""
    return (
        "apiVersion: pilotfish.io/v1alpha1\nkind: Workload\n"
        f"metadata: {{name: {name}}}\n"
        f"spec:\n  service: {service}\n  port: {port}\n{protocol_line}"
        f"  labels: {{app: {service}, version: {version}}}\n"
        f"  env: {{VERSION: {version}{env}}}\n"
        f"  command: {command}\n{extra}---\n"
    )


def mesh_yaml(folder: Path, gateway_port: int, tls_port: int, tcp_port: int) -> str:
    authority = CertificateAuthority("tls-backend")
    (folder / "ca.pem").write_bytes(authority.cert_pem)
    cert, key = authority.issue(dns=SECURE_HOST).write(folder, "secure")
    redis = (
        '[/bin/sh, -c, "exec /usr/bin/redis-server --port $PORT --bind 127.0.0.1 '
        "--save '' --appendonly no\"]"
    )
    client_upstreams = (
        "  upstreams:\n"
        "  - {service: db, port: 5432}\n"
        "  - {service: cache, port: 6379}\n"
        "  - {service: lines, port: 7000}\n"
        "  - {service: dual, port: 8080}\n"
        "  - {service: teapot, port: 8080}\n"
    )
    return (
        f"""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec:
  mtls: {{mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gateway_port}, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: {tls_port}, name: tls, protocol: TLS}}
    hosts: [{SECURE_HOST}]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: {tcp_port}, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /client/}}}}]
    rewrite: {{uri: /}}
    route: [{{destination: {{host: client}}}}]
  - match: [{{uri: {{prefix: /node/}}}}]
    rewrite: {{uri: /}}
    route: [{{destination: {{host: nodeapp}}}}]
  - match: [{{uri: {{prefix: /dual}}, headers: {{x-version: {{exact: v2}}}}}}]
    route: [{{destination: {{host: dual, subset: v2}}}}]
  - match: [{{uri: {{prefix: /dual}}}}]
    route: [{{destination: {{host: dual, subset: v1}}}}]
  tcp:
  - match: [{{port: {tcp_port}}}]
    route: [{{destination: {{host: lines, subset: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure}}
spec:
  hosts: [{SECURE_HOST}]
  gateways: [gw]
  tls:
  - match: [{{sniHosts: [{SECURE_HOST}], port: {tls_port}}}]
    route: [{{destination: {{host: secure, port: {{number: 8443}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: lines}}
spec:
  hosts: [lines]
  tcp:
  - match: [{{port: 7000, sourceLabels: {{app: nobody}}}}]
    route: [{{destination: {{host: lines, subset: v2}}}}]
  - route:
    - {{destination: {{host: lines, subset: v1}}, weight: 80}}
    - {{destination: {{host: lines, subset: v2}}, weight: 20}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: teapot}}
spec:
  hosts: [teapot]
  http:
  - fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: teapot}}}}]
---
"""
        + "".join(
            f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host}}}
spec:
  host: {host}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
"""
            for host in ("lines", "dual")
        )
        + workload("db", "db", 5432, f"[{PYTHON}, {APPS / 'postgres_app.py'}]", protocol="TCP")
        + workload("cache", "cache", 6379, redis, protocol="TCP")
        + "".join(
            workload(
                f"lines-{v}",
                "lines",
                7000,
                f"[{PYTHON}, {APPS / 'dual_server.py'}]",
                protocol="TCP",
                version=v,
            )
            for v in ("v1", "v2")
        )
        # No protocol: Istio detects HTTP or TCP on such a port, and so do we.
        + "".join(
            workload(f"dual-{v}", "dual", 8080, f"[{PYTHON}, {APPS / 'dual_server.py'}]", version=v)
            for v in ("v1", "v2")
        )
        + workload("teapot", "teapot", 8080, f"[{PYTHON}, {APPS / 'dual_server.py'}]")
        + workload(
            "secure",
            "secure",
            8443,
            f"[{PYTHON}, {APPS / 'tls_server.py'}]",
            protocol="TLS",
            env=f", TLS_CERT: {cert}, TLS_KEY: {key}",
        )
        + workload(
            "client",
            "client",
            8080,
            f"[{PYTHON}, {APPS / 'tcp_client.py'}]",
            protocol="HTTP",
            extra=client_upstreams,
        )
        + workload(
            "nodeapp",
            "nodeapp",
            8080,
            f"[/usr/bin/node, {APPS / 'node_client.js'}]",
            protocol="HTTP",
            extra="  upstreams:\n  - {service: web, port: 8080}\n",
        )
        + workload("web", "web", 8080, ECHO_COMMAND, protocol="HTTP")
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    directory = tmp_path_factory.mktemp("tcp")
    gateway_port, tls_port, tcp_port = free_port(), free_port(), free_port()
    write_yaml(directory / "mesh.yaml", mesh_yaml(directory, gateway_port, tls_port, tcp_port))
    with running_mesh(directory, gateway_port) as running:
        (directory / "tls-port").write_text(str(tls_port))
        (directory / "tcp-port").write_text(str(tcp_port))
        running.wait_serving("/client/")
        for host, count in (
            ("db", 1),
            ("cache", 1),
            ("lines", 2),
            ("dual", 2),
            ("teapot", 1),
            ("secure", 1),
        ):
            running.wait_endpoints(f"{host}.default.svc.cluster.local", count)
        running.wait_synced(timeout=60)
        yield running


def test_psql_reaches_postgres_through_the_upstream_port_over_strict_mtls(
    mesh: RunningMesh,
) -> None:
    def query(sql: str) -> dict[str, object]:
        return mesh.get("/client/psql?sql=" + quote(sql), timeout=20).body

    def answered() -> dict[str, object] | None:
        reply = query("select 40 + 2")
        return reply if reply.get("code") == 0 else None

    reply = wait_until(answered, 30, "psql through the upstream port")
    assert reply["out"] == "42", reply
    created = query("create table t (n int); insert into t values (7), (8); select sum(n) from t")
    assert created["code"] == 0 and str(created["out"]).endswith("15"), created
    # The database's own sidecar takes mTLS only: psql straight to it in plain text fails.
    direct = subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(inbound_port(mesh, "db")),
            "-U",
            "postgres",
            "-tAc",
            "select 1",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        env={"PGCONNECT_TIMEOUT": "5", "PGSSLMODE": "disable", "PATH": "/usr/bin:/bin"},
    )
    assert direct.returncode != 0
    # 0x15 opens a TLS alert record: the sidecar answered the plaintext with a failed handshake.
    assert "received \x15" in direct.stderr, direct.stderr


def test_redis_through_the_upstream_port(mesh: RunningMesh) -> None:
    reply = mesh.get("/client/redis?cmd=PING&cmd=SET+mesh+pilotfish&cmd=GET+mesh", timeout=20)
    assert reply.status == 200, reply.body
    assert reply.body["replies"] == ["+PONG", "+OK", "pilotfish"]


def test_a_weighted_tcp_route_splits_connections_between_versions(mesh: RunningMesh) -> None:
    reply = mesh.get("/client/lines?env=PILOTFISH_UPSTREAM_LINES_7000&count=100&text=hi", None, 60)
    assert reply.status == 200, reply.body
    lines = reply.body["lines"]
    assert isinstance(lines, list) and len(lines) == 100
    versions = collections.Counter(str(line).split()[1] for line in lines)
    assert set(versions) == {"v1", "v2"}, versions
    # 80/20: v2's count is binomial(100, 0.2); outside 5..40 has odds below 1e-5, and an
    # even split (or the route for "nobody" applied) lands far outside.
    assert 5 <= versions["v2"] <= 40, versions


def test_tls_passes_through_the_gateway_by_sni_to_the_servers_own_certificate(
    mesh: RunningMesh,
) -> None:
    context = ssl.create_default_context(cafile=str(mesh.directory / "ca.pem"))
    port = int((mesh.directory / "tls-port").read_text())

    def exchange() -> tuple[str, object]:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=SECURE_HOST) as conn,
        ):
            conn.sendall(b"hello\n")
            return conn.makefile("rb").readline().decode(), conn.getpeercert()

    # wait_until takes an OSError (ssl.SSLError is one) as "not yet".
    line, certificate = wait_until(exchange, 30, "a TLS exchange through the gateway")
    assert line == "tls v1 hello\n"
    # The backend's own certificate (for its name, from its own CA): never terminated.
    assert isinstance(certificate, dict)
    assert ("DNS", SECURE_HOST) in certificate["subjectAltName"]
    # Another SNI name has no chain: the gateway closes the connection.
    with (
        pytest.raises(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="other.example.com"),
    ):
        pass


def test_a_gateway_tcp_server_takes_its_tcp_route(mesh: RunningMesh) -> None:
    port = int((mesh.directory / "tcp-port").read_text())

    def exchange() -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"hi\n")
            return conn.makefile("rb").readline().decode()

    replies = [wait_until(exchange, 30, "a line through the gateway's TCP port") for _ in range(5)]
    # All to v2, as the route says (without it, half would land on v1).
    assert all(reply.startswith("tcp v2 lines-v2-0 hi") for reply in replies), replies


def test_an_unnamed_port_answers_http_with_its_routes_and_raw_tcp(mesh: RunningMesh) -> None:
    v1 = mesh.get("/dual/a")
    v2 = mesh.get("/dual/b", headers={"x-version": "v2"})
    assert (v1.status, v1.body["protocol"], v1.body["version"]) == (200, "http", "v1")
    assert (v2.status, v2.body["version"], v2.body["path"]) == (200, "v2", "/dual/b")
    # The server's sidecar took it as HTTP (its connection manager sets the caller's
    # identity, the gateway's, in x-forwarded-client-cert), not as opaque bytes.
    headers = v2.body["headers"]
    assert isinstance(headers, dict)
    assert "URI=spiffe://cluster.local/ns/default/sa/" in headers["x-forwarded-client-cert"]
    raw = mesh.get("/client/lines?env=PILOTFISH_UPSTREAM_DUAL_8080&count=10&text=ping", None, 30)
    assert raw.status == 200, raw.body
    lines = raw.body["lines"]
    assert isinstance(lines, list) and lines
    assert all(str(line).startswith("tcp ") and str(line).endswith(" ping") for line in lines)


def test_an_unnamed_ports_upstream_detects_http_for_its_routes(mesh: RunningMesh) -> None:
    request = quote("GET /tea HTTP/1.1\r\nHost: teapot\r\n\r\n")
    reply = mesh.get(f"/client/lines?env=PILOTFISH_UPSTREAM_TEAPOT_8080&count=3&text={request}")
    assert reply.status == 200, reply.body
    # The fault route answered (a TCP proxy would have reached the app, which says 200).
    assert [str(line).split()[:2] for line in reply.body["lines"]] == [["HTTP/1.1", "418"]] * 3
    # Raw TCP through another unnamed port's upstream is still carried as it is.
    raw = mesh.get("/client/lines?env=PILOTFISH_UPSTREAM_DUAL_8080&count=3&text=ping", None, 30)
    assert raw.status == 200, raw.body
    lines = raw.body["lines"]
    assert isinstance(lines, list) and len(lines) == 3
    assert all(str(line).startswith("tcp ") and str(line).endswith(" ping") for line in lines)


def test_a_node_http_client_ignoring_http_proxy_reaches_a_service_by_its_upstream(
    mesh: RunningMesh,
) -> None:
    def relayed() -> dict[str, object] | None:
        reply = mesh.get("/node/relay?path=/hello")
        return reply.body if reply.status == 200 and reply.body.get("status") == 200 else None

    answer = json.loads(str(wait_until(relayed, 30, "the node app's relay")["body"]))
    assert answer["path"] == "/hello"
    # Through both sidecars: web's took the call over mTLS from the node app's identity.
    assert "URI=spiffe://cluster.local/ns/default/sa/default" in str(
        answer["headers"]["x-forwarded-client-cert"]
    )


def inbound_port(mesh: RunningMesh, service: str) -> int:
    services = mesh.admin("/api/services")["services"]
    assert isinstance(services, list)
    (found,) = [s for s in services if s["hostname"] == f"{service}.default.svc.cluster.local"]
    (endpoint,) = found["endpoints"]
    return int(next(iter(endpoint["ports"].values())))


def test_an_authorization_policy_refuses_tcp_connections_by_port(mesh: RunningMesh) -> None:
    policy = mesh.directory / "deny-cache.yaml"
    write_yaml(
        policy,
        """
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: no-cache}
        spec:
          selector: {matchLabels: {app: cache}}
          action: DENY
          rules: [{to: [{operation: {ports: ["6379"]}}]}]
        """,
    )

    def ping() -> object:
        reply = mesh.get("/client/redis?cmd=PING", timeout=20)
        return reply.body.get("replies", reply.body)

    try:
        # Closed before Redis ever sees it: no reply (or a reset) instead of +PONG.
        wait_until(lambda: ping() != ["+PONG"], 30, "the cache's sidecar to refuse the connection")
    finally:
        policy.unlink()
    wait_until(lambda: ping() == ["+PONG"], 30, "the cache to answer again without the policy")
