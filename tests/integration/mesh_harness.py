"""Run `pilotfish up` for real (as a subprocess, the way users do) and talk to it over loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.waiting import wait_until

from pilotfish.agent.ports import free_port

APPS = Path(__file__).parent / "apps"
ECHO_COMMAND = f"[{sys.executable}, {APPS / 'echo.py'}]"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Tests look at redirects themselves rather than follow them."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


# Tests must not follow a proxy from the environment: every request goes straight to loopback.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, object]
    headers: Mapping[str, str]


def http_get(
    url: str,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    *,
    method: str = "GET",
) -> Reply:
    request = urllib.request.Request(url, headers=dict(headers or {}), method=method)
    try:
        with _direct.open(request, timeout=timeout) as response:
            raw = response.read()
            status, reply_headers = response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw, status, reply_headers = exc.read(), exc.code, dict(exc.headers)
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {"text": raw.decode(errors="replace")}
    return Reply(status, body if isinstance(body, dict) else {"value": body}, reply_headers)


def write_yaml(path: Path, text: str) -> None:
    """Replace a file atomically, as editors that save safely do."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(textwrap.dedent(text))
    temporary.replace(path)


def echo_workload(
    name: str,
    service: str,
    port: int,
    *,
    version: str = "v1",
    replicas: int = 1,
    env: Mapping[str, str] | None = None,
    protocol: str | None = None,
) -> str:
    """A Workload of the echo app; without ``protocol`` its port is detected (AUTO)."""
    labels = f"{{app: {service}, version: {version}}}"
    protocol_yaml = f"\n  protocol: {protocol}" if protocol is not None else ""
    env_items = {"VERSION": version, **(env or {})}
    env_yaml = ", ".join(f"{k}: {json.dumps(v)}" for k, v in env_items.items())
    return f"""
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {{name: {name}}}
spec:
  service: {service}
  port: {port}{protocol_yaml}
  replicas: {replicas}
  labels: {labels}
  command: {ECHO_COMMAND}
  env: {{{env_yaml}}}
---
"""


def gateway(port: int, name: str = "gw") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
"""


def spawn_up(
    directory: Path,
    admin_port: int,
    log: IO[bytes],
    extra_args: Sequence[str] = (),
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """``pilotfish up DIR`` in a session of its own, its output (both streams) to ``log``."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pilotfish.cli.main",
            "up",
            str(directory),
            "--admin-port",
            str(admin_port),
            *extra_args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **popen,
    )


class RunningMesh:
    """A `pilotfish up DIR` child process and the addresses it serves."""

    def __init__(
        self, directory: Path, gateway_port: int, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.directory = directory
        self.gateway_url = f"http://127.0.0.1:{gateway_port}"
        self.admin_port = free_port()
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.log_path = directory.parent / f"{directory.name}-pilotfish.log"
        self._log = self.log_path.open("wb")
        self.process = spawn_up(directory, self.admin_port, self._log, extra_args)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def get(
        self, path: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0
    ) -> Reply:
        return http_get(self.gateway_url + path, headers, timeout)

    def admin(self, path: str) -> dict[str, object]:
        return http_get(self.admin_url + path).body

    def wait_serving(self, path: str = "/", timeout: float = 60.0) -> None:
        def serving() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"pilotfish up exited early:\n{self.log()}")
            return self.get(path, timeout=2).status == 200

        try:
            wait_until(serving, timeout, f"{self.gateway_url}{path} to answer 200")
        except AssertionError as timed_out:
            # The log as it is when the wait ran out (not as it was when the wait began) says why.
            raise AssertionError(f"{timed_out}\npilotfish up's log:\n{self.log()}") from None

    def wait_endpoints(self, hostname: str, count: int, timeout: float = 30.0) -> None:
        def enough() -> bool:
            services = self.admin("/api/services").get("services", [])
            assert isinstance(services, list)
            return any(s["hostname"] == hostname and len(s["endpoints"]) >= count for s in services)

        wait_until(enough, timeout, f"{count} endpoints of {hostname}")

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Every connected proxy has ACKed the newest config of every type."""

        seen: list[object] = []

        def synced() -> bool:
            proxies = self.admin("/api/proxies").get("proxies", [])
            assert isinstance(proxies, list)
            seen[:] = proxies
            return bool(proxies) and all(p.get("status") == "SYNCED" for p in proxies)

        try:
            wait_until(synced, timeout, "all proxies SYNCED")
        except AssertionError as timed_out:
            # Which proxy is behind, and on what, is what a failure here needs to say.
            raise AssertionError(f"{timed_out}; the proxies last seen: {seen}") from None

    def descendants(self) -> set[int]:
        return descendant_pids(self.process.pid)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self.process.returncode


def descendant_pids(root: int) -> set[int]:
    """Every live process below ``root``, read from /proc (no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextlib.contextmanager
def running_mesh(
    directory: Path, gateway_port: int, **kw: tuple[str, ...]
) -> Iterator[RunningMesh]:
    mesh = RunningMesh(directory, gateway_port, **kw)
    try:
        yield mesh
    finally:
        mesh.stop()
