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
from tests.integration.mesh_harness import echo_workload, write_yaml
from tests.waiting import eventually

from pilotfish.runner.local_mesh import LocalMesh, LocalMeshSettings

# Far longer than any wait below: whatever ends those waits, it is not this timeout.
LISTEN_WAIT = 600.0


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
        assert not mesh.replica_registry.endpoints().get("web.default.svc.cluster.local")
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
