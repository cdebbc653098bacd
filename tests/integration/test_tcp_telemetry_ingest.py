"""TCP connections through two real Envoys become Istio's ``istio_tcp_*`` metrics at both
reporters, with exact counts of connections and bytes; a long connection's bytes are counted
before it closes (the periodic report).

The two Envoys run a hand-built static config of this test's own (a caller's upstream port, a
callee's inbound TCP chain, mutual TLS between them with SPIFFE certificates), whose TCP
proxies are the mesh's own: ``tcp_proxy_filter`` with ``tcp_telemetry``'s loggers. Each also
announces its node on a real ADS stream, which is how the control plane knows proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from test_telemetry_ingest import announced, static_cluster
from test_translate_envoy_validate import ENVOY
from tests.certificates import CertificateAuthority
from tests.waiting import eventually

from pilotfish.agent.ports import free_port
from pilotfish.controller.control_plane import ControlPlane
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.telemetry import TelemetrySettings
from pilotfish.telemetry.access_log_format import format_text_line
from pilotfish.translate.tcp_proxy import WeightedCluster, tcp_proxy_filter
from pilotfish.translate.telemetry import ISTIO_TEXT_FORMAT, HttpRole, tcp_telemetry

MESH = """apiVersion: pilotfish.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {}
"""
DB_HOST = "db.default.svc.cluster.local"
DB_CLUSTER = f"outbound|5432||{DB_HOST}"
CLIENT_SPIFFE = "spiffe://cluster.local/ns/default/sa/client"
DB_SPIFFE = "spiffe://cluster.local/ns/default/sa/db"
SIZES = (1000, 2345, 1, 70_000, 512)  # bytes each short connection sends (and gets back)
LONG = 30_000  # the long connection's bytes before it closes
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A TCP echo on a free loopback port: every byte a client sends comes back."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)


def exchange(conn: socket.socket, size: int) -> None:
    conn.sendall(b"x" * size)
    got = 0
    while got < size:
        data = conn.recv(65536)
        assert data, f"the connection closed after {got} of {size} echoed bytes"
        got += len(data)


def tls_context(files: Mapping[str, Path], server: bool, verify_san: str | None) -> dict[str, Any]:
    validation: dict[str, Any] = {"trusted_ca": {"filename": str(files["root"])}}
    if verify_san is not None:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": verify_san}}
        ]
    common = {
        "tls_certificates": [
            {
                "certificate_chain": {"filename": str(files["cert"])},
                "private_key": {"filename": str(files["key"])},
            }
        ],
        "validation_context": validation,
    }
    if server:
        return {
            "@type": f"{TLS}.DownstreamTlsContext",
            "common_tls_context": common,
            "require_client_certificate": True,
        }
    return {"@type": f"{TLS}.UpstreamTlsContext", "common_tls_context": common}


def tcp_listener(
    node: ProxyNode, role: HttpRole, port: int, cluster: str, tls: dict[str, Any] | None
) -> dict[str, Any]:
    proxy = tcp_proxy_filter(
        role, [WeightedCluster(cluster)], tcp_telemetry(node, TelemetrySettings(), role)
    )
    chain: dict[str, Any] = {"filters": [json_format.MessageToDict(proxy)]}
    if tls is not None:
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
    return {
        "name": role,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [chain],
    }


def bootstrap(
    node: ProxyNode, listener: dict[str, Any], clusters: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "node": {"id": node.id, "cluster": node.service, "metadata": node.to_metadata()},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


@contextlib.contextmanager
def running_envoy(config: Mapping[str, Any], folder: Path) -> Iterator[Path]:
    """The Envoy's admin address file (written once it is up)."""
    folder.mkdir()
    path = folder / "envoy.json"
    path.write_text(json.dumps(config))
    admin = folder / "admin"
    log = (folder / "envoy.log").open("wb")
    process = subprocess.Popen(
        [
            *(str(ENVOY), "-c", str(path), "--disable-hot-restart", "--concurrency", "1"),
            *("--admin-address-path", str(admin)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield admin
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def envoy_ready(admin: Path) -> bool:
    if not admin.exists() or not admin.read_text().strip():
        return False
    host, _, port = admin.read_text().strip().rpartition(":")
    with socket.create_connection((host, int(port)), timeout=2) as conn:
        conn.sendall(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        return b" 200 " in conn.recv(1024).split(b"\r\n", 1)[0]


def tcp_value(plane: ControlPlane, name: str, **labels: str) -> float:
    family = next(f for f in plane.istio_tcp_metrics.families() if f.name == name)
    return sum(
        s.value  # type: ignore[union-attr]
        for s in family.samples
        if all(dict(s.labels).get(k) == v for k, v in labels.items())
    )


def counts(plane: ControlPlane, reporter: str) -> tuple[float, float, float, float]:
    labels = {"reporter": reporter}
    return (
        tcp_value(plane, "istio_tcp_connections_opened_total", **labels),
        tcp_value(plane, "istio_tcp_connections_closed_total", **labels),
        tcp_value(plane, "istio_tcp_received_bytes_total", **labels),
        tcp_value(plane, "istio_tcp_sent_bytes_total", **labels),
    )


async def test_tcp_connections_through_real_envoys_become_exact_istio_tcp_metrics(
    tmp_path: Path,
) -> None:
    (tmp_path / "mesh").mkdir()
    (tmp_path / "mesh" / "mesh.yaml").write_text(MESH)
    ca = CertificateAuthority("tcp telemetry test CA")
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "root.pem").write_bytes(ca.cert_pem)

    def files(name: str, uri: str) -> dict[str, Path]:
        cert, key = ca.issue(uri=uri).write(certs, name)
        return {"cert": cert, "key": key, "root": certs / "root.pem"}

    plane = ControlPlane(tmp_path / "mesh")
    await plane.start()
    target = f"127.0.0.1:{plane.xds_port}"
    try:
        with echo_server() as app_port:
            client = ProxyNode(
                id="client-0",
                service="client",
                labels={"app": "client", "version": "v1"},
                outbound_port=free_port(),
                inbound_port=free_port(),
                app_port=free_port(),
                service_account="client",
                workload="client",
            )
            db = ProxyNode(
                id="db-0",
                service="db",
                labels={"app": "db", "version": "v15"},
                outbound_port=free_port(),
                inbound_port=free_port(),
                app_port=app_port,
                app_protocol="TCP",
                service_account="db",
                workload="db-primary",
            )
            assert client.outbound_port and db.inbound_port
            upstream_port = free_port()  # the client app's local port for the db service
            inbound_cluster = f"inbound|{app_port}||"
            xds = static_cluster("xds-grpc", plane.xds_port, http2=True)
            to_db = static_cluster(DB_CLUSTER, db.inbound_port)
            to_db["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": tls_context(files("client", CLIENT_SPIFFE), False, DB_SPIFFE),
            }
            client_config = bootstrap(
                client,
                tcp_listener(client, "outbound", upstream_port, DB_CLUSTER, None),
                [to_db, xds],
            )
            db_config = bootstrap(
                db,
                tcp_listener(
                    db,
                    "inbound",
                    db.inbound_port,
                    inbound_cluster,
                    tls_context(files("db", DB_SPIFFE), True, None),
                ),
                [static_cluster(inbound_cluster, app_port), xds],
            )
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(announced(target, client))
                await stack.enter_async_context(announced(target, db))
                admins = [
                    stack.enter_context(running_envoy(client_config, tmp_path / "client")),
                    stack.enter_context(running_envoy(db_config, tmp_path / "db")),
                ]
                for admin in admins:
                    await eventually(lambda a=admin: envoy_ready(a), f"Envoy {admin} ready")

                def short_connections() -> None:
                    for size in SIZES:
                        with socket.create_connection(("127.0.0.1", upstream_port)) as conn:
                            exchange(conn, size)

                await asyncio.to_thread(short_connections)
                total = sum(SIZES)
                closed = (len(SIZES), len(SIZES), total, total)
                await eventually(
                    lambda: (
                        counts(plane, "source") == closed and counts(plane, "destination") == closed
                    ),
                    "both reporters' istio_tcp_* of the short connections",
                    timeout=20,
                )

                # A long connection: its bytes count while it stays open.
                long_conn = socket.create_connection(("127.0.0.1", upstream_port))
                with long_conn:
                    await asyncio.to_thread(exchange, long_conn, LONG)
                    still_open = (len(SIZES) + 1, len(SIZES), total + LONG, total + LONG)
                    await eventually(
                        lambda: (
                            counts(plane, "source") == still_open
                            and counts(plane, "destination") == still_open
                        ),
                        "the open connection's periodic report",
                        timeout=20,
                    )
                ended = (len(SIZES) + 1, len(SIZES) + 1, total + LONG, total + LONG)
                await eventually(
                    lambda: (
                        counts(plane, "source") == ended and counts(plane, "destination") == ended
                    ),
                    "the long connection's end",
                    timeout=20,
                )
    finally:
        await plane.stop(0.1)

    # One series per reporter, with Istio's labels for both ends.
    families = {f.name: f for f in plane.istio_tcp_metrics.families()}
    samples = [dict(s.labels) for s in families["istio_tcp_connections_opened_total"].samples]
    by_reporter = {labels["reporter"]: labels for labels in samples}
    assert len(samples) == 2 and set(by_reporter) == {"source", "destination"}
    source, destination = by_reporter["source"], by_reporter["destination"]
    for labels in (source, destination):
        assert labels["source_workload"] == "client"
        assert labels["source_app"] == "client" and labels["source_version"] == "v1"
        assert labels["destination_workload"] == "db-primary"
        assert labels["destination_version"] == "v15"
        assert labels["destination_service"] == DB_HOST
        assert labels["destination_service_name"] == "db"
        assert labels["request_protocol"] == "tcp"
        assert labels["response_flags"] == "-"
        assert "response_code" not in labels
    # Only the callee sees the caller's verified certificate.
    assert destination["source_principal"] == CLIENT_SPIFFE
    assert destination["destination_principal"] == DB_SPIFFE
    assert destination["connection_security_policy"] == "mutual_tls"
    assert source["connection_security_policy"] == "unknown"
    assert plane.access_logs.connections.open_connections == 0
    assert plane.access_logs.entries_rejected == 0

    # Each proxy's access log has one line per connection, when it ended.
    for proxy in ("client-0", "db-0"):
        ended = plane.proxy_logs.recent(proxy)
        assert sorted(r.received_bytes for r in ended) == sorted((*SIZES, LONG))  # type: ignore[union-attr]
        line = format_text_line(ended[-1], ISTIO_TEXT_FORMAT)
        assert f'"- - -" 0 - - - "-" {LONG} {LONG} ' in line
