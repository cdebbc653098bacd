"""`pilotfish up` leaves nothing behind, however it is stopped."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from tests.integration.mesh_harness import (
    ECHO_COMMAND,
    RunningMesh,
    echo_workload,
    gateway,
    pid_alive,
    write_yaml,
)
from tests.waiting import wait_until

from pilotfish.agent.ports import free_port


def start_small_mesh(directory: Path) -> RunningMesh:
    directory.mkdir()
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(gateway_port)
        + echo_workload("web", "web", 8080, replicas=2)
        + """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: web}}]}]
""",
    )
    mesh = RunningMesh(directory, gateway_port)
    try:
        mesh.wait_serving("/")
    except BaseException:
        mesh.stop()
        raise
    return mesh


def started_processes(mesh: RunningMesh) -> set[int]:
    # 2 apps + 2 sidecars + 1 gateway, at least (an app may run children of its own).
    def all_started() -> set[int] | None:
        found = mesh.descendants()
        return found if len(found) >= 5 else None

    return wait_until(all_started, 30, "every process to start")


def test_sigterm_stops_every_process_it_started(tmp_path: Path) -> None:
    mesh = start_small_mesh(tmp_path / "mesh")
    try:
        children = started_processes(mesh)
    finally:
        code = mesh.stop()
    assert code == 0, mesh.log()
    assert [pid for pid in children if pid_alive(pid)] == []
    assert not (mesh.directory / ".pilotfish" / "admin.url").exists()


def test_processes_die_even_when_the_runner_is_killed(tmp_path: Path) -> None:
    mesh = start_small_mesh(tmp_path / "mesh")
    try:
        children = started_processes(mesh)
        os.kill(mesh.process.pid, signal.SIGKILL)
        mesh.process.wait(10)
        wait_until(lambda: not [pid for pid in children if pid_alive(pid)], 10, "orphans to die")
    finally:
        mesh.stop()


def test_replicas_follow_live_edits_of_the_workload(tmp_path: Path) -> None:
    mesh = start_small_mesh(tmp_path / "mesh")
    try:
        mesh.wait_endpoints("web.default.svc.cluster.local", 2)
        text = (mesh.directory / "mesh.yaml").read_text()
        write_yaml(mesh.directory / "mesh.yaml", text.replace("replicas: 2", "replicas: 3"))
        mesh.wait_endpoints("web.default.svc.cluster.local", 3)

        def all_three_answer() -> set[str] | None:
            answers = {str(mesh.get("/").body.get("replica")) for _ in range(30)}
            return answers if answers >= {"web-0", "web-1", "web-2"} else None

        seen = wait_until(all_three_answer, 30, "the new replica to get traffic")
        assert seen == {"web-0", "web-1", "web-2"}

        write_yaml(mesh.directory / "mesh.yaml", text.replace("replicas: 2", "replicas: 1"))

        def scaled_down() -> bool:
            services = mesh.admin("/api/services")["services"]
            web = next(s for s in services if s["hostname"] == "web.default.svc.cluster.local")  # type: ignore[union-attr]
            return [e["name"] for e in web["endpoints"]] == ["web-0"]

        wait_until(scaled_down, 30, "two replicas to be removed")
        assert {str(mesh.get("/").body.get("replica")) for _ in range(10)} == {"web-0"}
    finally:
        assert mesh.stop() == 0


def replica_app_pid(mesh: RunningMesh, replica: str) -> int | None:
    """The pid of a replica's app process, found by the PILOTFISH_REPLICA in its environment."""
    for pid in mesh.descendants():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"echo.py" in cmdline and f"PILOTFISH_REPLICA={replica}".encode() in environ:
            return pid
    return None


def test_a_crashed_app_is_taken_out_restarted_and_put_back(tmp_path: Path) -> None:
    mesh = start_small_mesh(tmp_path / "mesh")
    try:
        mesh.wait_endpoints("web.default.svc.cluster.local", 2)
        victim = wait_until(lambda: replica_app_pid(mesh, "web-1"), 10, "web-1's pid")
        os.kill(victim, signal.SIGKILL)
        # Every request still succeeds: the endpoint is withdrawn, and Istio's default retry
        # (connect-failure) covers the moment before the withdrawal reaches the gateway.
        statuses = [mesh.get("/").status for _ in range(50)]
        assert statuses == [200] * 50
        restarted = wait_until(
            lambda: (pid := replica_app_pid(mesh, "web-1")) != victim and pid, 20, "a restart"
        )
        assert pid_alive(restarted)

        def both_answer() -> bool:
            return {str(mesh.get("/").body.get("replica")) for _ in range(20)} == {"web-0", "web-1"}

        wait_until(both_answer, 20, "web-1 to serve again")
        assert f"web-1 (pid {victim}) exited unexpectedly with signal SIGKILL" in mesh.log()
    finally:
        assert mesh.stop() == 0


def test_sigterm_while_still_starting_stops_cleanly(tmp_path: Path) -> None:
    """The signal may come before every replica is up: what started is stopped, exit is 0."""
    directory = tmp_path / "mesh"
    directory.mkdir()
    gateway_port = free_port()
    write_yaml(
        directory / "mesh.yaml",
        gateway(gateway_port) + echo_workload("web", "web", 8080, replicas=3),
    )
    mesh = RunningMesh(directory, gateway_port)
    try:
        # The control plane is serving; replicas and sidecars are (at best) being started.
        wait_until(lambda: "xDS server listening" in mesh.log(), 30, "the control plane")
        children = mesh.descendants()
    finally:
        code = mesh.stop()
    assert code == 0, mesh.log()
    assert [pid for pid in children if pid_alive(pid)] == []


def test_a_fixed_command_replaces_a_crash_looping_app(tmp_path: Path) -> None:
    """The most common first edit: the app exits at once, the user fixes its command."""
    directory = tmp_path / "mesh"
    directory.mkdir()
    gateway_port = free_port()
    edge = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: web}}]}]
"""
    working = gateway(gateway_port) + echo_workload("web", "web", 8080) + edge
    crashing = working.replace(ECHO_COMMAND, f'[{sys.executable}, -c, "import nosuchmodule"]')
    assert crashing != working
    write_yaml(directory / "mesh.yaml", crashing)
    mesh = RunningMesh(directory, gateway_port)
    try:
        # Fixed while `up` is still starting the replica, as a user who sees the traceback does.
        crashed = "No module named 'nosuchmodule'"
        wait_until(lambda: crashed in mesh.log(), 30, "the app's traceback")
        write_yaml(directory / "mesh.yaml", working)
        mesh.wait_serving("/", timeout=45)
        assert mesh.get("/").body.get("replica") == "web-0"
        assert replica_app_pid(mesh, "web-0") is not None
    finally:
        assert mesh.stop() == 0
