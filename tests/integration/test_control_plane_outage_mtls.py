"""The control plane (and with it the CA) is down for longer than a certificate rotation
period: sidecars started with `pilotfish agent` keep serving mutual-TLS traffic on the
certificates they hold, retry their renewals, and renew once it is back. No request fails."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from tests.integration.mesh_harness import free_port, http_get, wait_until, write_yaml
from tests.integration.test_control_plane_restart import control_plane, echo_app, process

# workloadTTL 1m: the CA backdates 20 s for clock skew, so each certificate is renewed about
# 20 s after it was signed and expires 60 s after. An outage of 30 s spans a renewal, and
# ends before any certificate held at its start expires.
OUTAGE_SECONDS = 30


def config(server_inbound: int) -> str:
    return f"""
apiVersion: pilotfish.io/v1alpha1
kind: MeshConfig
metadata: {{name: mesh}}
spec:
  certificates: {{workloadTTL: 1m}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec:
  mtls: {{mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend}}
spec:
  hosts: [backend]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: backend}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: backend-1}}
spec:
  address: 127.0.0.1
  ports: {{http: {server_inbound}}}
  labels: {{app: backend, security.istio.io/tlsMode: istio}}
  serviceAccount: backend
"""


def ca_token(directory: Path, account: str, into: Path) -> Path:
    """The user's way: `pilotfish ca token` prints the credential of one identity."""
    token = subprocess.run(
        [
            sys.executable,
            "-m",
            "pilotfish.cli.main",
            "ca",
            "token",
            str(directory),
            "--service-account",
            account,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    into.write_text(token)
    into.chmod(0o600)
    return into


def agent_argv(xds_port: int, node: str, account: str, token: Path, work: Path) -> list[str]:
    return [
        sys.executable, "-m", "pilotfish.cli.main", "agent",
        "--xds", f"127.0.0.1:{xds_port}", "--node-id", node, "--service-account", account,
        "--ca-token-file", str(token), "--work-dir", str(work), "--admin-port", str(free_port()),
    ]  # fmt: skip


def signed_nodes(admin_port: int) -> list[str]:
    body = http_get(f"http://127.0.0.1:{admin_port}/api/ca").body
    records = body.get("recently_signed", [])
    assert isinstance(records, list)
    return [str(record["node_id"]) for record in records]


def test_mtls_traffic_rides_out_a_ca_outage_longer_than_a_rotation(tmp_path: Path) -> None:
    directory, logs = tmp_path / "config", tmp_path / "logs"
    directory.mkdir()
    logs.mkdir()
    app_port, server_inbound, outbound_port = free_port(), free_port(), free_port()
    xds_port, admin_port = free_port(), free_port()
    write_yaml(directory / "mesh.yaml", config(server_inbound))
    via_sidecar = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{outbound_port}"})
    )

    def call() -> tuple[int, str]:
        try:
            with via_sidecar.open("http://backend:8080/", timeout=5) as response:
                return response.status, json.load(response)["headers"].get(
                    "x-forwarded-client-cert", ""
                )
        except OSError as exc:
            return 0, str(exc)

    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        deadline = time.monotonic() + 150
        while not stop.is_set() and time.monotonic() < deadline and len(answers) < 50_000:
            answers.append(call())
            time.sleep(0.01)

    first = control_plane(directory, xds_port, admin_port, logs / "cp1.log")
    first_process = first.__enter__()
    try:
        wait_until(
            lambda: http_get(f"http://127.0.0.1:{admin_port}/healthz").status == 200,
            30,
            "control plane",
        )
        server_token = ca_token(directory, "backend", tmp_path / "backend.token")
        client_token = ca_token(directory, "client", tmp_path / "client.token")
        server = process(
            [
                *agent_argv(xds_port, "backend-1", "backend", server_token, tmp_path / "server"),
                *("--service", "backend", "--inbound-port", str(server_inbound)),
                *("--app-port", str(app_port)),
            ],
            logs / "server-agent.log",
        )
        client = process(
            [
                *agent_argv(xds_port, "client-1", "client", client_token, tmp_path / "client"),
                *("--service", "client", "--outbound-port", str(outbound_port)),
                *("--inbound-port", str(free_port()), "--app-port", str(free_port())),
            ],
            logs / "client-agent.log",
        )
        with echo_app(app_port, "v1", logs / "app.log"), server, client:
            wait_until(lambda: call()[0] == 200, 30, "mTLS traffic through both sidecars")
            # Over mTLS: the server's sidecar tells the app who called, from the peer's cert.
            assert "URI=spiffe://cluster.local/ns/default/sa/client" in call()[1]
            worker = threading.Thread(target=traffic, daemon=True)
            worker.start()
            try:
                wait_until(lambda: len(answers) > 50, 30, "traffic to flow")
                first_process.kill()  # the CA goes with it, without a goodbye
                first_process.wait(10)
                down_at = len(answers)
                time.sleep(OUTAGE_SECONDS)
                assert len(answers) > down_at + 100, "traffic stalled without a control plane"
                with control_plane(directory, xds_port, admin_port, logs / "cp2.log"):
                    # The restarted control plane has the same root (kept in DIR/.pilotfish)
                    # and signs both agents' renewals.
                    wait_until(
                        lambda: {"backend-1", "client-1"} <= set(signed_nodes(admin_port)),
                        40,
                        "both agents to renew with the restarted CA",
                        interval=1.0,
                    )
                    renewed_at = len(answers)
                    wait_until(lambda: len(answers) > renewed_at + 50, 30, "more traffic")
            finally:
                stop.set()
                worker.join(30)
    finally:
        first.__exit__(None, None, None)
    failures = [answer for answer in answers if answer[0] != 200]
    assert failures == [], (failures[:5], (logs / "client-agent.log").read_text()[-3000:])
    # The renewal due during the outage was tried, failed, and was retried.
    assert "could not get a certificate" in (logs / "client-agent.log").read_text()
