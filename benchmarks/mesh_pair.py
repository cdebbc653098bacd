"""The sidecar pair as `pilotfish up` makes it: the mesh's own translation, agents and Envoys.

A generated folder: one Workload per backend (``protocol: TCP`` unless told otherwise, its
command given), a client Workload whose ``upstreams`` are the TCP backends on local ports
chosen here (the benchmark connects to them, as the client app would; the client app writes
its ``HTTP_PROXY`` down, for clients that go through the outbound listener instead), and a
mesh-wide PeerAuthentication: ``STRICT``
(mutual TLS between the sidecars, certificates from the mesh's CA) or ``DISABLE`` (plaintext).
The Envoys are found below the ``up`` process by their work directories (named after the
proxy); everything else below it (the control plane is ``up`` itself, the agents, the apps)
is the load side.
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bench_report import UpProcess, command_line, descendant_pids

from pilotfish.agent.ports import free_port

CONFIG_SOURCE = "`pilotfish up` (the mesh's own translation, agents, CA and Envoys)"
# (directory name, label in the tables, mTLS between the sidecars)
MESH_PAIRS = (
    ("mesh-plaintext", "mesh pair (plaintext)", False),
    ("mesh-mtls", "mesh pair (mTLS)", True),
)
IDLE_APP = (
    "import os, pathlib, socket, sys, time; "
    "pathlib.Path(sys.argv[1]).write_text(os.environ['HTTP_PROXY']); "
    "s = socket.create_server(('127.0.0.1', int(os.environ['PORT']))); time.sleep(1e9)"
)


def mesh_yaml(
    backends: Mapping[str, Sequence[str]],
    local_ports: Mapping[str, int],
    tls: bool,
    protocols: Mapping[str, str],
    proxy_file: Path,
) -> str:
    mode = "STRICT" if tls else "DISABLE"
    parts = [
        textwrap.dedent(
            f"""\
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {{name: default, namespace: istio-system}}
            spec:
              mtls: {{mode: {mode}}}
            """
        )
    ]
    upstreams = []
    for index, (name, command) in enumerate(backends.items()):
        port = 7000 + index
        argv = ", ".join(f'"{part}"' for part in command)
        parts.append(
            textwrap.dedent(
                f"""\
                apiVersion: pilotfish.io/v1alpha1
                kind: Workload
                metadata: {{name: {name}}}
                spec:
                  service: {name}
                  port: {port}
                  protocol: {protocols.get(name, "TCP")}
                  serviceAccount: {name}
                  labels: {{app: {name}}}
                  command: [{argv}]
                """
            )
        )
        if name in local_ports:
            upstreams.append(
                f"  - {{service: {name}, port: {port}, localPort: {local_ports[name]}}}"
            )
    parts.append(
        "apiVersion: pilotfish.io/v1alpha1\nkind: Workload\nmetadata: {name: client}\n"
        "spec:\n  service: client\n  port: 8080\n  protocol: TCP\n  serviceAccount: client\n"
        f"  labels: {{app: client}}\n"
        f'  command: ["{sys.executable}", "-c", "{IDLE_APP}", "{proxy_file}"]\n'
        "  upstreams:\n" + "\n".join(upstreams) + "\n"
    )
    return "---\n".join(parts)


class MeshPair(UpProcess):
    """Send to ``ports[name]`` (the client sidecar's upstream port) to reach backend ``name``."""

    def __init__(
        self,
        name: str,
        backends: Mapping[str, Sequence[str]],
        work: Path,
        *,
        tls: bool,
        protocols: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.directory = work / name
        self.directory.mkdir(parents=True)
        protocols = protocols or {}
        self.ports = {b: free_port() for b in backends if protocols.get(b, "TCP") == "TCP"}
        self.services = {backend: 7000 + index for index, backend in enumerate(backends)}
        """Each backend's service port (``service:port`` through the outbound listener)."""
        self._proxy_file = work / f"{name}-client.proxy"
        (self.directory / "mesh.yaml").write_text(
            mesh_yaml(backends, self.ports, tls, protocols, self._proxy_file)
        )
        super().__init__(self.directory, work / f"{name}-pilotfish.log", free_port())

    @property
    def http_proxy(self) -> str:
        """The client sidecar's outbound listener, as its app's ``HTTP_PROXY``."""
        return self._proxy_file.read_text().strip()

    @property
    def pids(self) -> list[int]:
        """The Envoys below ``up`` (sidecars and the gateway)."""
        return [pid for pid, argv in self._processes() if Path(argv[0]).name.startswith("envoy")]

    @property
    def load_pids(self) -> list[int]:
        """Everything else: ``up`` (the control plane), the agents, the apps."""
        return [
            pid for pid, argv in self._processes() if not Path(argv[0]).name.startswith("envoy")
        ]

    def app_pid(self, last_argument: str) -> int:
        """The app whose command line ends with ``last_argument``."""
        for pid, argv in self._processes():
            if argv[-1] == last_argument and not Path(argv[0]).name.startswith("envoy"):
                return pid
        raise RuntimeError(f"no app of {self.name} ends its command with {last_argument!r}")

    def _processes(self) -> list[tuple[int, list[str]]]:
        found = []
        for pid in sorted(descendant_pids(self.process.pid) | {self.process.pid}):
            argv = command_line(pid)
            if argv:
                found.append((pid, argv))
        return found

    def wait_ready(self, serves: Callable[[], bool], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pilotfish up exited early:\n{self.log()}")
            self.remember_processes()
            if serves():
                self.remember_processes()
                return
            time.sleep(0.25)
        raise RuntimeError(
            f"the {self.name} mesh did not serve within {timeout:.0f}s:\n{self.log()}"
        )
