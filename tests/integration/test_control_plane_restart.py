"""The control plane dies under traffic: Envoy keeps serving its last config, reconnects to the
restarted control plane, and takes new config from it. No request fails meanwhile."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.integration.mesh_harness import APPS, free_port, http_get, wait_until, write_yaml


def registry(backend_port: int) -> str:
    return f"""
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
  ports: {{http: {backend_port}}}
  labels: {{app: backend}}
"""


@contextlib.contextmanager
def process(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        child = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


def echo_app(
    port: int, version: str, log: Path
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    env = {**os.environ, "PORT": str(port), "VERSION": version}
    return process([sys.executable, str(APPS / "echo.py")], log, env)


def control_plane(
    directory: Path, xds_port: int, admin_port: int, log: Path
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    return process(
        [
            sys.executable,
            "-m",
            "pilotfish.cli.main",
            "control-plane",
            str(directory),
            "--xds-port",
            str(xds_port),
            "--admin-port",
            str(admin_port),
        ],
        log,
    )


def test_envoy_rides_out_a_control_plane_restart(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    v1_port, v2_port = free_port(), free_port()
    xds_port, admin_port, outbound_port = free_port(), free_port(), free_port()
    write_yaml(config / "registry.yaml", registry(v1_port))
    via_sidecar = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{outbound_port}"})
    )

    def call() -> tuple[int, str]:
        try:
            with via_sidecar.open("http://backend:8080/", timeout=5) as response:
                return response.status, json.load(response)["version"]
        except OSError as exc:
            return 0, str(exc)

    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        deadline = time.monotonic() + 90
        while not stop.is_set() and time.monotonic() < deadline and len(answers) < 50_000:
            answers.append(call())

    with (
        echo_app(v1_port, "v1", logs / "v1.log"),
        echo_app(v2_port, "v2", logs / "v2.log"),
    ):
        first = control_plane(config, xds_port, admin_port, logs / "cp1.log")
        first_process = first.__enter__()
        try:
            wait_until(
                lambda: http_get(f"http://127.0.0.1:{admin_port}/healthz").status == 200,
                30,
                "control plane",
            )
            agent = process(
                [
                    sys.executable,
                    "-m",
                    "pilotfish.cli.main",
                    "agent",
                    "--xds",
                    f"127.0.0.1:{xds_port}",
                    "--node-id",
                    "client-0",
                    "--service",
                    "client",
                    "--outbound-port",
                    str(outbound_port),
                    "--inbound-port",
                    str(free_port()),
                    "--app-port",
                    str(free_port()),
                    "--admin-port",
                    str(free_port()),
                    "--work-dir",
                    str(tmp_path / "agent"),
                ],
                logs / "agent.log",
            )
            with agent:
                wait_until(lambda: call()[0] == 200, 30, "traffic through the sidecar")
                worker = threading.Thread(target=traffic, daemon=True)
                worker.start()
                try:
                    wait_until(lambda: len(answers) > 100, 30, "traffic to flow")
                    first_process.kill()  # SIGKILL: no goodbye to the proxies
                    first_process.wait(10)
                    killed_at = len(answers)
                    wait_until(
                        lambda: len(answers) > killed_at + 100,
                        30,
                        "traffic without a control plane",
                    )
                    with control_plane(config, xds_port, admin_port, logs / "cp2.log"):

                        def reconnected() -> bool:
                            proxies = http_get(
                                f"http://127.0.0.1:{admin_port}/api/proxies"
                            ).body.get("proxies")
                            return isinstance(proxies, list) and any(
                                p.get("node_id") == "client-0" and p.get("status") == "SYNCED"
                                for p in proxies
                            )

                        wait_until(reconnected, 30, "the sidecar to reconnect and sync")
                        # The new control plane really drives the proxy: move the service to v2.
                        write_yaml(config / "registry.yaml", registry(v2_port))
                        wait_until(
                            lambda: answers[-1][1] == "v2", 15, "the new endpoint to take over"
                        )
                        moved_at = len(answers)
                        wait_until(lambda: len(answers) > moved_at + 100, 30, "more traffic")
                finally:
                    stop.set()
                    worker.join(30)
        finally:
            first.__exit__(None, None, None)
    failures = [answer for answer in answers if answer[0] != 200]
    assert failures == [], (failures[:5], (logs / "agent.log").read_text()[-3000:])
    assert {version for _, version in answers[-50:]} == {"v2"}
