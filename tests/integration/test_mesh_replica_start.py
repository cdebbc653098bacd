"""`pilotfish up` (in process) starting replicas that cannot serve: an app that exits at once,
an upstream whose localPort another program holds."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from pathlib import Path

import pytest
from tests.integration.mesh_harness import ECHO_COMMAND, echo_workload, write_yaml
from tests.waiting import eventually

from pilotfish.runner.local_mesh import LocalMesh, LocalMeshSettings

# Far longer than any wait below: whatever ends those waits, it is not this timeout.
LISTEN_WAIT = 600.0
HOST = "web.default.svc.cluster.local"


async def test_an_app_that_exits_at_once_is_restarted_without_the_listen_wait(
    tmp_path: Path,
) -> None:
    write_yaml(
        tmp_path / "mesh.yaml",
        f"""
        apiVersion: pilotfish.io/v1alpha1
        kind: Workload
        metadata: {{name: web}}
        spec:
          service: web
          port: 8080
          command: [{sys.executable}, -c, "raise SystemExit(3)"]
        """,
    )
    mesh = LocalMesh(tmp_path, LocalMeshSettings(app_start_timeout=LISTEN_WAIT))
    try:
        await asyncio.wait_for(mesh.start(), 60)
        app = mesh.replicas["web-0"].app
        await eventually(lambda: app.restarts >= 2, "web-0 to be restarted twice", timeout=30)
        assert not mesh.replica_registry.endpoints().get(HOST)
    finally:
        await mesh.stop()


async def test_an_upstream_port_held_by_another_program_keeps_its_replica_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        held = stranger.getsockname()[1]
        write_yaml(
            tmp_path / "mesh.yaml",
            echo_workload("db", "db", 8080)
            + echo_workload("client", "client", 8081).replace(
                "---", f"  upstreams: [{{service: db, port: 8080, localPort: {held}}}]\n---"
            ),
        )
        mesh = LocalMesh(tmp_path)
        try:
            with caplog.at_level(logging.ERROR, logger="pilotfish.runner"):
                await asyncio.wait_for(mesh.start(), 60)
            # The rest of the mesh runs.
            await eventually(
                lambda: mesh.replica_registry.endpoints().get("db.default.svc.cluster.local"),
                "db-0 to serve",
                timeout=30,
            )
            assert "client-0" not in mesh.replicas
            errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            assert any(
                "client-0 is not started: Workload default/client's upstream "
                f"db.default.svc.cluster.local:8080 wants localPort {held}, which is taken"
                in e
                and f"pid {os.getpid()}" in e
                for e in errors
            ), errors
        finally:
            await mesh.stop()


async def test_a_fix_made_during_a_rollout_stops_the_rollout_of_the_broken_command(
    tmp_path: Path,
) -> None:
    """A command that never listens holds each replica's replacement for the listen wait;
    fixed while the first replica waits, the others never get the broken command."""
    working = echo_workload("web", "web", 8080, replicas=3)
    silent = working.replace(
        ECHO_COMMAND, f'[{sys.executable}, -c, "import time; time.sleep(600)"]'
    )
    assert silent != working
    write_yaml(tmp_path / "mesh.yaml", working)
    mesh = LocalMesh(tmp_path, LocalMeshSettings(app_start_timeout=10))
    try:
        await asyncio.wait_for(mesh.start(), 60)
        untouched = {name: mesh.replicas[name].app for name in ("web-1", "web-2")}
        write_yaml(tmp_path / "mesh.yaml", silent)

        def waiting_on_the_silent_one() -> bool:
            replica = mesh.replicas.get("web-0")
            return replica is not None and "time.sleep(600)" in " ".join(replica.spec.command)

        await eventually(waiting_on_the_silent_one, "web-0 to run the silent command", timeout=30)
        write_yaml(tmp_path / "mesh.yaml", working)
        await eventually(
            lambda: (
                len(mesh.replica_registry.endpoints().get(HOST, ())) == 3
                and "sleep" not in " ".join(mesh.replicas["web-0"].spec.command)
            ),
            "all three replicas to serve the working command",
            timeout=60,
        )
        assert {name: mesh.replicas[name].app for name in untouched} == untouched
    finally:
        await mesh.stop()
